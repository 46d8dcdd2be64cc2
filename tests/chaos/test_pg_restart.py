"""Scenario 7: PostgreSQL restarted (``pg_ctl restart -m fast``) during a run, on a throwaway
cluster this test starts itself: no job lost, no worker exits, work resumes well before a poll
would resume it (claims are retried with backoff of at most 2 s), and NOTIFY wakes idle
workers again afterwards."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from batchworks import PostgresBackend
from tests.conftest import IN_CI
from tests.pgserver import throwaway_cluster
from tests.support.harness import (
    Fleet,
    describe,
    pick,
    poll,
    record_figures,
    restart_server,
    settle_and_judge,
)
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(150, 400))]

JOBS = pick(2000, 6000)
RESTARTS = pick(1, 3)
POLL_INTERVAL = 30.0  # seconds: long, so that only NOTIFY wakes an idle worker quickly
# seconds after the server accepts connections again: a hang net for the claim's retry (at most
# 2 s apart), at half the poll interval, so only the retry (not a poll) can meet it
RESUME_WITHIN = POLL_INTERVAL / 2
SCHEMA = "chaos"


@pytest.fixture
def cluster() -> Iterator[str]:
    """A PostgreSQL cluster of this test's own, which it may restart."""
    try:
        with throwaway_cluster() as dsn:
            yield dsn
    except RuntimeError as exc:
        if IN_CI:
            raise
        pytest.skip(f"no throwaway cluster: {exc}")


@pytest.fixture
async def setup(cluster: str, tmp_path: Path) -> AsyncIterator[tuple[PostgresBackend, Fleet]]:
    async with PostgresBackend(cluster, schema=SCHEMA) as backend:
        await backend.migrate()
        ledger = await Ledger.create(cluster, SCHEMA)
        fleet = Fleet(cluster, SCHEMA, tmp_path, ledger)
        try:
            yield backend, fleet
        finally:
            await fleet.cleanup()
            await ledger.close()


async def test_postgres_restart_loses_nothing_and_work_resumes(
    setup: tuple[PostgresBackend, Fleet], cluster: str
) -> None:
    backend, fleet = setup
    ledger = fleet.ledger
    rng = random.Random(7)
    fleet.defaults = {
        "runner": {
            "concurrency": 5,
            "batch_size": 10,
            "heartbeat_interval": 0.5,
            "prune_after": 15.0,
            "poll_interval": POLL_INTERVAL,
        }
    }
    workers = [await fleet.start(name) for name in ("a", "b")]
    ledger.expect(
        await backend.enqueue_many("q", [{"ms": rng.randint(5, 30)} for _ in range(JOBS)])
    )
    loop = asyncio.get_running_loop()
    resumed: list[float] = []
    downtime: list[float] = []
    for round_ in range(RESTARTS):
        target = (round_ + 1) * JOBS // (RESTARTS + 2)
        await poll(lambda t=target: _finished(ledger, t), within=60, what=f"{target} jobs done")
        began = loop.time()
        await restart_server(cluster)
        accepting_at = loop.time()
        downtime.append(accepting_at - began)
        now = await _server_now(cluster)
        for worker in workers:
            await ledger.fault(worker.pid, "pg-restart", at=now)
        assert not await ledger.drained(), "the queue drained before the restart: enqueue more"
        took = await poll(
            lambda at=now: _finished_since(ledger, at),
            within=POLL_INTERVAL + 30,
            what="a job claimed after the restart to finish",
        )
        resumed.append(took)
        assert all(w.alive for w in workers), "a worker exited when PostgreSQL restarted"

    await poll(ledger.drained, within=120, every=0.1, what="the queue to drain")
    # Idle now, waiting up to POLL_INTERVAL: only a NOTIFY wakes them before that.
    await asyncio.sleep(0.5)
    ids = await backend.enqueue_many("q", [{"ms": 1}] * 5)
    ledger.expect(ids)
    # A hang net at half the poll interval: only a NOTIFY can have woken them this soon.
    woke = await poll(ledger.drained, within=POLL_INTERVAL / 2, what="the jobs enqueued at idle")
    assert all(w.alive for w in workers), "a worker exited after PostgreSQL restarted"

    verdict = await settle_and_judge(ledger, fleet, within=30)
    record_figures(
        "7 PostgreSQL restart (-m fast)",
        **verdict.figures(),
        restarts=RESTARTS,
        server_down=describe(downtime),
        work_resumed_after=describe(resumed),
        notify_wakeup=f"{woke:.2f} s (poll_interval {POLL_INTERVAL} s)",
    )
    verdict.assert_ok()
    assert max(resumed) < RESUME_WITHIN, f"work resumed after {describe(resumed)}"


async def _server_now(dsn: str) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        return float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
    finally:
        await conn.close()


async def _finished(ledger: Ledger, n: int) -> bool:
    return await ledger.count("state IN ('succeeded', 'failed')") >= n


async def _finished_since(ledger: Ledger, at: float) -> bool:
    """True once a job claimed after ``at`` (not one merely settled late) has finished."""
    return await ledger.count("started_at > to_timestamp($1) AND finished_at IS NOT NULL", at) > 0
