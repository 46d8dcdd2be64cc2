"""Scenario 13: the database stalls. An operator's ``LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE``
holds every worker's claims, settles and heartbeats, once for less than the lease and once for
twice ``prune_after`` (4x at full scale), with 3 workers busy. No worker may exit or be
pruned, every job must finish, and the workers must say while it lasts that the database is
slow."""

from __future__ import annotations

import asyncio
import json
import random

import asyncpg
import pytest

from batchworks import PostgresBackend
from tests.support.harness import Fleet, pick, poll, record_figures, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(120)]

PRUNE_AFTER = 2.0  # seconds
HEARTBEAT = 0.25  # seconds
WORKERS = ("a", "b", "c")
JOBS = pick(200, 1000)


@pytest.mark.parametrize(
    "lock_for",
    [
        pytest.param(1.0, id="shorter-than-the-lease"),
        pytest.param(pick(2, 4) * PRUNE_AFTER, id="longer-than-prune_after"),
    ],
)
async def test_a_stalled_database_stops_no_worker(
    pg_backend: PostgresBackend, pg_dsn: str, ledger: Ledger, fleet: Fleet, lock_for: float
) -> None:
    fleet.defaults = {
        "runner": {
            "concurrency": 4,
            "batch_size": 4,
            "heartbeat_interval": HEARTBEAT,
            "prune_after": PRUNE_AFTER,
            "poll_interval": 0.5,
        }
    }
    for name in WORKERS:
        await fleet.start(name)
    # One job in five runs 3 s, longer than the lease by the workers' own clocks (1.75 s):
    # some are running when those run out.
    rng = random.Random(13)
    payloads = [{"ms": 3000 if rng.random() < 0.2 else 50} for _ in range(JOBS)]
    ledger.expect(await pg_backend.enqueue_many("q", payloads))
    await poll(lambda: _executed(ledger, 20), within=20, what="the workers to get going")

    locker = await asyncpg.connect(pg_dsn)
    try:
        async with locker.transaction():
            await locker.execute(f'LOCK TABLE "{ledger.schema}".jobs IN ACCESS EXCLUSIVE MODE')
            await asyncio.sleep(lock_for)  # the operator's stall
    finally:
        await locker.close()
    for worker in fleet.current.values():  # the stall hit every worker, until now
        await ledger.fault(worker.pid, "stall")

    await poll(ledger.drained, within=60, every=0.1, what="every job to finish after the stall")
    assert all(worker.alive for worker in fleet.current.values()), "a worker exited"
    stderr = {name: worker.stderr() for name, worker in fleet.current.items()}
    verdict = await settle_and_judge(ledger, fleet, within=30)
    reports = [worker.report or {} for worker in fleet.current.values()]
    lost_errors = await ledger.pool.fetchval(
        f'SELECT count(*) FROM "{ledger.schema}".jobs, jsonb_array_elements(errors) AS e '
        "WHERE e->>'type' = 'WorkerLost'"
    )
    pruned = await ledger.pool.fetchval(
        f"SELECT count(*) FROM \"{ledger.schema}\".workers WHERE state IN ('pruned', 'replaced')"
    )
    said_slow = sorted(name for name, text in stderr.items() if "for the database" in text)
    cancelled = sorted(name for name, text in stderr.items() if "counts its leases" in text)
    record_figures(
        f"13 LOCK TABLE jobs for {lock_for:g} s (prune_after {PRUNE_AFTER:g} s)",
        **verdict.figures(),
        stuck=len(verdict.left_running) + len(verdict.left_queued),
        worker_lost_errors=lost_errors,
        workers_pruned=pruned,
        put_back_and_run_again=sum(report.get("released", 0) for report in reports),
        lost_leases=sum(report.get("lost", 0) for report in reports),
        said_slow=",".join(said_slow),
        cancelled_by_own_clock=",".join(cancelled) or "-",
        attempts=json.dumps(verdict.attempts_histogram),
    )
    verdict.assert_ok(duplicates_allowed=False)
    # No worker judged another (or itself) silent because of the stall.
    assert (pruned, lost_errors) == (0, 0), "a stall pruned live workers"
    assert verdict.attempts_histogram == {1: JOBS}, "a stall must not use up attempts"
    if lock_for >= 2 * HEARTBEAT + 1.0:  # long enough for a slow-call warning (1 s here)
        assert said_slow == sorted(WORKERS), f"not every worker said it was waiting: {said_slow}"


async def _executed(ledger: Ledger, n: int) -> bool:
    count = await ledger.pool.fetchval(f'SELECT count(*) FROM "{ledger.schema}".effects')
    return int(count) >= n
