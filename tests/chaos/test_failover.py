"""Scenario: failover to a promoted standby, with synchronous replication.

The test starts a primary and a streaming standby of its own (``initdb``, ``pg_basebackup
-R``, ``synchronous_standby_names``) and points everything at a multi-host DSN with
``target_session_attrs=read-write``, as with Patroni or a managed service. A producer enqueues
throughout and keeps every id an enqueue returned; two worker processes run the jobs. Mid-run
the primary's postmaster is SIGKILLed and the standby promoted. Then: every id an enqueue
returned reaches its final state (0 lost), the same worker processes carry on against the new
primary (no restart), and an idle worker is woken by NOTIFY again (its listener reconnected).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from batchworks import PostgresBackend
from tests.conftest import IN_CI
from tests.pgcluster import STANDBY, Cluster, clusters, primary_and_standby
from tests.support.harness import (
    Fleet,
    pick,
    poll,
    record_figures,
    settle_and_judge,
    work_resumed,
)
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(120, 240))]

SCHEMA = "failover"
BEFORE = pick(300, 2000)  # jobs finished before the primary is killed
AFTER = pick(1.5, 5.0)  # seconds the producer goes on after the failover
POLL_INTERVAL = 30.0  # seconds: long, so that only NOTIFY wakes an idle worker quickly


@dataclass
class Producer:
    """Enqueues batches until stopped; keeps the ids each enqueue returned, and the sequence
    numbers of the batches whose enqueue raised (it may or may not have committed)."""

    backend: PostgresBackend
    returned: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    failures: int = 0
    #: loop time of each enqueue that returned
    returned_at: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        rng = random.Random(11)
        loop = asyncio.get_running_loop()
        for seq in itertools.count():
            if self.stop.is_set():
                return
            payloads = [{"ms": rng.randint(2, 20), "seq": seq} for _ in range(10)]
            try:
                ids = await self.backend.enqueue_many("q", payloads)
            except Exception:
                self.failures += 1
                self.uncertain.append(seq)
                await asyncio.sleep(0.05)
                continue
            self.returned.extend(ids)
            self.returned_at.append(loop.time())
            await asyncio.sleep(0.01)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Cluster]]:
    try:
        with clusters() as root:
            yield await asyncio.to_thread(primary_and_standby, root, synchronous=True)
    except RuntimeError as exc:
        if IN_CI:
            raise
        pytest.skip(f"no throwaway clusters: {exc}")


async def _wait_synchronous(primary: Cluster) -> None:
    conn = await asyncpg.connect(primary.dsn)
    try:

        async def synchronous() -> bool:
            state = await conn.fetchval(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", STANDBY
            )
            return bool(state == "sync")

        await poll(synchronous, within=30, what="the standby to replicate synchronously")
    finally:
        await conn.close()


async def test_failover_to_a_promoted_standby_loses_no_acknowledged_job(
    pair: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    primary, standby = pair
    await _wait_synchronous(primary)
    dsn = (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
        "?target_session_attrs=read-write"
    )
    async with contextlib.AsyncExitStack() as stack:
        backend = await stack.enter_async_context(PostgresBackend(dsn, schema=SCHEMA))
        await backend.migrate()
        ledger = await Ledger.create(dsn, SCHEMA)
        stack.push_async_callback(ledger.close)
        fleet = Fleet(dsn, SCHEMA, tmp_path, ledger)
        stack.push_async_callback(fleet.cleanup)
        fleet.defaults = {
            "max_attempts": 10,
            "runner": {
                "concurrency": 5,
                "batch_size": 10,
                "heartbeat_interval": 0.5,
                "prune_after": 15.0,
                "poll_interval": POLL_INTERVAL,
            },
        }
        workers = [await fleet.start(name) for name in ("a", "b")]
        producer = Producer(backend)
        producing = asyncio.create_task(producer.run())
        loop = asyncio.get_running_loop()

        async def finished(n: int) -> bool:
            return await ledger.count("state IN ('succeeded', 'failed')") >= n

        await poll(lambda: finished(BEFORE), within=60, what=f"{BEFORE} jobs done")
        killed_at, killed_wall = loop.time(), time.time()
        await asyncio.to_thread(primary.kill)
        await asyncio.to_thread(standby.promote)
        promoted_at = loop.time()
        # The fault hits every worker until the promotion: a write that committed (and was
        # replicated) as its connection died was never acknowledged, so its job runs again.
        for worker in workers:
            await ledger.fault(worker.pid, "failover", at=time.time())

        await work_resumed(ledger, since=killed_wall, within=60)
        resumed_at = loop.time()
        await poll(
            lambda: any(at > promoted_at for at in producer.returned_at),
            within=60,
            what="an enqueue to return after the failover",
        )
        enqueue_back_at = min(at for at in producer.returned_at if at > promoted_at)
        await asyncio.sleep(AFTER)  # the producer goes on against the new primary
        producer.stop.set()
        await producing

        # Batches whose enqueue raised may have committed all the same: those jobs exist and
        # must run too (an acknowledged one is in producer.returned).
        ledger.expect(producer.returned)
        maybe = await ledger.pool.fetch(
            f"SELECT id FROM \"{SCHEMA}\".jobs WHERE (payload->>'seq')::int = ANY($1)",
            producer.uncertain,
        )
        ledger.expect(row["id"] for row in maybe)
        await poll(ledger.drained, within=60, every=0.1, what="every enqueued job to finish")
        assert all(worker.alive for worker in workers), "a worker exited during the failover"

        # Idle now, polling every 30 s: only a NOTIFY on the new primary wakes them quickly.
        await asyncio.sleep(0.5)
        late = await backend.enqueue_many("q", [{"ms": 1}] * 5)
        ledger.expect(late)
        woke = await poll(ledger.drained, within=POLL_INTERVAL / 2, what="a NOTIFY wake-up")

        assert [w.pid for w in fleet.current.values()] == [w.pid for w in workers]
        verdict = await settle_and_judge(ledger, fleet, within=30)
        lost_returned = sorted(set(producer.returned) & set(verdict.lost))
        record_figures(
            "failover to a promoted standby (synchronous)",
            **verdict.figures(),
            acknowledged=len(producer.returned),
            uncertain_enqueues=len(producer.uncertain),
            uncertain_committed=len(maybe),
            stuck=len(verdict.left_running) + len(verdict.left_queued),
            promote=f"{promoted_at - killed_at:.2f} s",
            work_resumed_after_kill=f"{resumed_at - killed_at:.2f} s",
            enqueue_back_after_kill=f"{enqueue_back_at - killed_at:.2f} s",
            notify_wakeup=f"{woke:.2f} s (poll_interval {POLL_INTERVAL:g} s)",
        )
        verdict.assert_ok()
        assert lost_returned == [], f"acknowledged enqueues lost: {lost_returned[:10]}"
