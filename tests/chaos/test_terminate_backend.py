"""Scenario 6: ``pg_terminate_backend`` on a random batchworks connection every second, while
jobs stream in: the invariants hold, the pool and the LISTEN connection come back, and NOTIFY
wakes idle workers again afterwards."""

from __future__ import annotations

import asyncio
import collections
import random

import pytest

from batchworks import PostgresBackend
from tests.support.harness import (
    APP_NAME,
    Fleet,
    describe,
    pick,
    poll,
    record_figures,
    settle_and_judge,
)
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(120, 300))]

TERMINATIONS = pick(8, 30)
POLL_INTERVAL = 30.0  # seconds: long, so that only NOTIFY wakes an idle worker within half of it
WORKERS = ("a", "b", "c")


async def test_terminated_connections_lose_no_job_and_listeners_come_back(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    rng = random.Random(6)
    fleet.defaults = {
        "runner": {
            "concurrency": 5,
            "batch_size": 10,
            "heartbeat_interval": 0.5,
            "prune_after": 10.0,
            "poll_interval": POLL_INTERVAL,
        }
    }
    workers = [await fleet.start(name) for name in WORKERS]
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            payloads = [{"ms": rng.randint(20, 100)} for _ in range(20)]
            ledger.expect(await pg_backend.enqueue_many("q", payloads))
            await asyncio.sleep(0.1)

    producer = asyncio.create_task(produce())
    terminated: collections.Counter[str] = collections.Counter()
    try:
        for _ in range(TERMINATIONS):
            await asyncio.sleep(1.0)
            rows = await ledger.pool.fetch(
                "SELECT pid, application_name, query FROM pg_stat_activity "
                "WHERE application_name = ANY($1)",
                [f"chaos-bw-{w.name}-{w.pid}" for w in workers],  # ours only, not a neighbour's
            )
            assert rows, "no batchworks connection to terminate"
            victim = rng.choice(sorted(rows, key=lambda row: row["pid"]))
            match = APP_NAME.match(victim["application_name"])
            assert match is not None
            await ledger.pool.execute("SELECT pg_terminate_backend($1)", victim["pid"])
            await ledger.fault(int(match["pid"]), "terminate")
            terminated["listener" if victim["query"].startswith("LISTEN") else "pool"] += 1
    finally:
        stop.set()
        await producer
    verdict_drained = await poll(ledger.drained, within=60, every=0.1, what="the queue to drain")

    # Every worker listens again, and an enqueue wakes one at once, not after a poll.
    listening = [
        await poll(lambda w=w: _listens(ledger, w.name, w.pid), within=15, what="LISTEN")
        for w in workers
    ]
    wake_ids = await pg_backend.enqueue_many("q", [{"ms": 1}] * 5)
    ledger.expect(wake_ids)

    # A hang net at half the poll interval: only a NOTIFY can have woken them this soon.
    woke = await poll(ledger.drained, within=POLL_INTERVAL / 2, what="the wake-up jobs")
    assert all(worker.alive for worker in workers), "a worker exited under terminations"

    verdict = await settle_and_judge(ledger, fleet, within=30)
    record_figures(
        "6 pg_terminate_backend every 1 s",
        **verdict.figures(),
        terminated=dict(terminated),
        drained_after_faults=f"{verdict_drained:.2f} s",
        listening_again=describe(listening),
        notify_wakeup=f"{woke:.2f} s (poll_interval {POLL_INTERVAL} s)",
    )
    verdict.assert_ok()


async def _listens(ledger: Ledger, name: str, pid: int) -> bool:
    return bool(
        await ledger.pool.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = $1 "
            "AND query LIKE 'LISTEN %'",
            f"chaos-bw-{name}-{pid}",
        )
    )
