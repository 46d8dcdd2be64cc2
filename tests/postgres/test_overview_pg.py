"""The dashboard's overview on PostgreSQL (``overview(estimate=True)``): exact while the
history is small, the finished states sampled once it is large, the live states exact always
and read through their own indexes, so that a refresh costs what the live jobs cost."""

from __future__ import annotations

import json
from dataclasses import replace

import asyncpg
import pytest

from batchworks import JobState, PostgresBackend
from batchworks.backends.base import QueueOverview
from batchworks.outcome import Outcome, OutcomeKind
from tests.postgres.test_postgres_backend import _scans_of

pytestmark = pytest.mark.postgres

LEASE = 30.0


async def _history(conn: asyncpg.Connection, schema: str, queue: str, state: str, n: int) -> None:
    await conn.execute(
        f'INSERT INTO "{schema}".jobs (queue, payload, state, attempts, finished_at) '
        "SELECT $1, '{}', $2, 1, now() FROM generate_series(1, $3)",
        queue,
        state,
        n,
    )


async def _live_jobs(backend: PostgresBackend) -> None:
    """In queue "a": 3 queued (1 not due), 2 running (1 checkpointed), 1 failed."""
    ids = await backend.enqueue_many("a", list(range(4)))
    worker = await backend.register_worker("w", ["a"])
    claimed = await backend.claim(worker, ["a"], 3, lease=LEASE, max_attempts=1)
    assert len(claimed) == 3
    await backend.save_checkpoint(worker, claimed[0].id, {"at": 1}, lease=LEASE)
    await backend.settle(worker, [Outcome(claimed[2].id, OutcomeKind.FAILED, queue="a")])
    await backend.enqueue_many("a", ["x", "y"])
    await backend.enqueue("a", "later", delay=3600)
    assert len(ids) == 4


def _steady(overview: dict[str, QueueOverview]) -> dict[str, QueueOverview]:
    """The overview without the oldest job's age, which grows as the test runs."""
    return {name: replace(queue, oldest_ready=None) for name, queue in overview.items()}


async def test_a_small_history_is_counted_exactly_either_way(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    await _live_jobs(pg_backend)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _history(conn, pg_backend.schema, "a", "succeeded", 40)
        await _history(conn, pg_backend.schema, "b", "cancelled", 7)
    finally:
        await conn.close()
    exact = await pg_backend.overview()
    estimated = await pg_backend.overview(estimate=True)
    assert _steady(estimated) == _steady(exact)
    assert exact["a"].counts == {
        "queued": 4,  # one left over from the first enqueue, two new, one not due
        "running": 2,
        "succeeded": 40,
        "failed": 1,
        "cancelled": 0,
    }
    assert exact["a"].queued_later == 1 and exact["a"].running_with_checkpoint == 1
    assert exact["a"].oldest_ready is not None
    assert exact["b"].counts[JobState.CANCELLED.value] == 7
    assert all(not queue.estimated for queue in estimated.values())


async def test_a_large_history_is_sampled_and_said_so_while_live_counts_stay_exact(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    await _live_jobs(pg_backend)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _history(conn, pg_backend.schema, "a", "succeeded", 30_000)
        await _history(conn, pg_backend.schema, "b", "succeeded", 10_000)
        await _history(conn, pg_backend.schema, "b", "cancelled", 5_000)
        pages = await conn.fetchval(
            f"SELECT pg_relation_size('\"{pg_backend.schema}\".jobs'::regclass) / 8192"
        )
    finally:
        await conn.close()
    exact = await pg_backend.overview()
    pg_backend.OVERVIEW_SAMPLE_PAGES = pages // 2 - 1  # a large table, for this test
    sampled = await pg_backend.overview(estimate=True)

    assert sampled["a"].estimated == sampled["b"].estimated == {"succeeded", "cancelled"}
    for queue, state in [("a", "succeeded"), ("b", "succeeded"), ("b", "cancelled")]:
        truth, guess = exact[queue].counts[state], sampled[queue].counts[state]
        assert abs(guess - truth) <= 0.25 * truth, f"{queue} {state}: {guess} for {truth}"
    for state in ("queued", "running", "failed"):
        assert sampled["a"].counts[state] == exact["a"].counts[state], state
    assert sampled["a"].queued_later == 1 and sampled["a"].running_with_checkpoint == 1
    # The same pages each time: a refresh does not make the figures jitter.
    assert _steady(await pg_backend.overview(estimate=True)) == _steady(sampled)


@pytest.mark.parametrize("analyzed", [False, True], ids=["no statistics", "analyzed"])
async def test_the_live_counts_read_their_indexes_not_the_history(
    pg_backend: PostgresBackend, pg_dsn: str, analyzed: bool
) -> None:
    await _live_jobs(pg_backend)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _history(conn, pg_backend.schema, "a", "succeeded", 50_000)
        if analyzed:
            await conn.execute(f'ANALYZE "{pg_backend.schema}".jobs')
        statement = pg_backend._q.overview_live
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"))
    finally:
        await conn.close()
    scans = list(_scans_of(plan[0]["Plan"], "jobs"))
    assert len(scans) == 3, scans
    for scan in scans:
        assert scan["Node Type"] != "Seq Scan", f"a live count walks the history: {scan}"
        assert scan["Actual Rows"] <= 10, scan


async def test_a_queue_the_sample_misses_is_there_when_known_and_says_its_counts_are_estimates(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    await pg_backend.configure_queue("configured", concurrency=3)
    await pg_backend.register_worker("w", ["served"])
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _history(conn, pg_backend.schema, "big", "succeeded", 20_000)
        pages = await conn.fetchval(
            f"SELECT pg_relation_size('\"{pg_backend.schema}\".jobs'::regclass) / 8192"
        )
    finally:
        await conn.close()
    pg_backend.OVERVIEW_SAMPLE_PAGES = max(1, pages // 10)
    sampled = await pg_backend.overview(estimate=True)
    for name in ("configured", "served"):
        assert sampled[name].counts == {state.value: 0 for state in JobState}, name
        assert sampled[name].estimated == {"succeeded", "cancelled"}, name
    assert sampled["big"].estimated == {"succeeded", "cancelled"}
