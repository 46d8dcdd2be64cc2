"""Periodic jobs on PostgreSQL: claimers racing from separate connections (#15)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from batchworks import PostgresBackend, Schedule
from batchworks.backends.base import TickClaim

pytestmark = pytest.mark.postgres

CLAIMERS = 12
T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


async def test_of_many_claimers_on_separate_connections_exactly_one_wins_each_tick(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    schedule = Schedule("race", "0 * * * *", "q", missed="all")
    await pg_backend.put_schedule("race", schedule.definition(), next_tick=T0)
    async with contextlib.AsyncExitStack() as stack:
        claimers = [
            await stack.enter_async_context(
                PostgresBackend(pg_dsn, schema=pg_backend.schema, min_size=1, max_size=1)
            )
            for _ in range(CLAIMERS)
        ]
        for claimer in claimers:  # each opens its connection before the race starts
            await claimer.schedules()
        for round_ in range(3):  # three ticks, each raced for by all of them
            due = T0 + timedelta(hours=round_)
            go = asyncio.Event()

            async def claim(
                claimer: PostgresBackend, due: datetime = due, go: asyncio.Event = go
            ) -> TickClaim:
                await go.wait()
                return await claimer.claim_ticks(
                    "race",
                    revision=1,
                    due=due,
                    next_tick=due + timedelta(hours=1),
                    ticks=[due],
                    skipped=0,
                )

            tasks = [asyncio.create_task(claim(claimer)) for claimer in claimers]
            await asyncio.sleep(0)
            go.set()
            claims = await asyncio.gather(*tasks)
            winners = [claim for claim in claims if claim.won]
            assert len(winners) == 1, f"tick {due}: {len(winners)} claimers won"
            assert len(winners[0].job_ids) == 1
            # Every loser got the winner's state back from the same call: no second read.
            assert {claim.state for claim in claims} == {winners[0].state}
    records = [r for r in await pg_backend.list_jobs(limit=100) if r.schedule == "race"]
    assert sorted(r.scheduled_for for r in records if r.scheduled_for) == [
        T0,
        T0 + timedelta(hours=1),
        T0 + timedelta(hours=2),
    ]


async def test_a_worker_refuses_a_schema_before_migration_6_until_it_is_migrated(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    # A deploy that starts this version's workers before its migrate: they refuse to start,
    # saying what to run, rather than fail at a claim with jobs in hand. Nothing is claimed.
    import asyncpg

    from batchworks import Job, Runner
    from batchworks.errors import SchemaNotMigrated

    job_id = await pg_backend.enqueue("q", "before")
    conn = await asyncpg.connect(pg_dsn)
    try:
        schema = pg_backend.schema
        await conn.execute(
            f'ALTER TABLE "{schema}".jobs DROP COLUMN schedule, DROP COLUMN scheduled_for'
        )
        await conn.execute(f'DROP TABLE "{schema}".schedules')
        await conn.execute(f'DELETE FROM "{schema}".migrations WHERE version = 6')
    finally:
        await conn.close()
    seen: list[object] = []

    async def handler(job: Job) -> None:
        seen.append(job.payload)

    with pytest.raises(
        SchemaNotMigrated, match=r"lacks migrations 0006_schedules, .*'batchworks migrate'"
    ):
        await Runner(pg_backend, {"q": handler}).run_until_empty()
    await pg_backend.migrate()
    record = await pg_backend.get_job(job_id)
    assert seen == [] and record is not None and (record.state, record.attempts) == ("queued", 0)
    await Runner(pg_backend, {"q": handler}).run_until_empty()
    assert seen == ["before"]
    await pg_backend.put_schedule("s", Schedule("s", "0 * * * *", "q").definition(), next_tick=T0)
    await pg_backend.claim_ticks(
        "s", revision=1, due=T0, next_tick=T0 + timedelta(hours=1), ticks=[T0], skipped=0
    )
    ticks: list[object] = []

    async def tick_handler(job: Job) -> None:
        ticks.append(job.scheduled_for)

    await Runner(pg_backend, {"q": tick_handler}).run_until_empty()
    assert ticks == [T0]
