"""Periodic jobs under kill -9 (#15): 3 worker processes carry the same schedule, one tick a
second. w1 or w2 is killed with SIGKILL every few seconds, and w0 kills itself while its
second tick claim is in flight (0-3 ms into the statement), every time it starts; a
supervisor restarts the dead. Every tick of the window must have exactly one job: none
missing, none twice."""

from __future__ import annotations

import asyncio
import math
import random
from datetime import datetime, timedelta

import asyncpg
import pytest

from batchworks import PostgresBackend
from tests.support.harness import Fleet, pick, poll, record_figures

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(120, 240))]

WINDOW = pick(15.0, 60.0)  # seconds of ticks under faults
KILL_EVERY = pick(2.0, 3.0)  # seconds between kills
WORKERS = ("w0", "w1", "w2")
# missed="all": a tick a second has a grace of one second, and a loaded 2-core machine can
# wake every runner more than a second late; "all" then still gives each tick its job.
SCHEDULE = {"name": "tick", "cron": "* * * * * *", "queue": "q", "missed": "all"}


async def test_each_tick_becomes_exactly_one_job_while_workers_are_killed(
    pg_backend: PostgresBackend, pg_dsn: str, fleet: Fleet
) -> None:
    rng = random.Random(15)
    fleet.defaults = {
        "schedules": [SCHEDULE],
        "runner": {"heartbeat_interval": 0.5, "prune_after": 10.0, "poll_interval": 0.5},
    }
    await fleet.start("w0", inject={"point": "ticks:during", "nth": 2, "seed": 15})
    for name in WORKERS[1:]:
        await fleet.start(name)
    conn = await asyncpg.connect(pg_dsn)
    try:
        started: datetime = await conn.fetchval("SELECT now()")
        loop = asyncio.get_running_loop()
        end = loop.time() + WINDOW
        kills = 0
        async with fleet.supervised() as dead:
            while loop.time() < end:
                await asyncio.sleep(KILL_EVERY)
                await fleet.kill(rng.choice(WORKERS[1:]))
                kills += 1
            ended: datetime = await conn.fetchval("SELECT now()")
            await asyncio.sleep(1.5)  # the claims of the last ticks commit
        # A restart the supervisor began as it was stopped gets ready first: a SIGTERM before
        # its signal handlers are in place is no graceful stop.
        await poll(
            lambda: all(w.ready or not w.alive for w in fleet.current.values()),
            within=30,
            what="the restarted workers to be ready",
        )
        codes = await fleet.stop_all()
        # The window: every whole second from the start to a second before the end. With
        # missed="all", even a tick due while every worker happened to be dead gets its job.
        first = datetime.fromtimestamp(math.ceil(started.timestamp()), started.tzinfo)
        last = datetime.fromtimestamp(math.floor(ended.timestamp()) - 1, ended.tzinfo)
        self_kills = sum(1 for worker in dead if worker.name == "w0")
        rows = await conn.fetch(
            f'SELECT scheduled_for, count(*) AS n FROM "{pg_backend.schema}".jobs '
            "WHERE schedule = 'tick' AND scheduled_for BETWEEN $1 AND $2 "
            "GROUP BY scheduled_for ORDER BY scheduled_for",
            first,
            last,
        )
        skipped = await conn.fetchval(
            f"SELECT skipped FROM \"{pg_backend.schema}\".schedules WHERE name = 'tick'"
        )
    finally:
        await conn.close()
    expected = [
        first + timedelta(seconds=n) for n in range(int((last - first).total_seconds()) + 1)
    ]
    found = [row["scheduled_for"] for row in rows]
    twice = [row["scheduled_for"] for row in rows if row["n"] > 1]
    record_figures(
        "schedules: kill -9 with 3 workers, 1 tick/s",
        window=f"{(last - first).total_seconds() + 1:.0f} ticks",
        kills=kills,
        self_kills_in_claim=self_kills,
        jobs=len(found),
        duplicated=len(twice),
        missing=len(set(expected) - set(found)),
        skipped=skipped,
    )
    assert all(code == 0 for code in codes.values()), f"graceful stops must exit 0: {codes}"
    crashes = fleet.crashes()
    assert not crashes, "workers crashed:\n" + "\n".join(crashes)
    assert not twice, f"ticks with two jobs or more: {twice}"
    assert found == expected, f"missing ticks: {sorted(set(expected) - set(found))}"
    assert kills >= pick(5, 15), f"only {kills} kills happened"
    assert self_kills >= pick(3, 10), f"w0 killed itself in a tick claim only {self_kills} times"
