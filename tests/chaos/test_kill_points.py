"""Scenario 2: ``kill -9`` at random points inside claim and settle: before the statement is
sent, while it is in flight, and 0-50 ms after it returned."""

from __future__ import annotations

import asyncio
import collections
import random

import pytest

from batchworks import PostgresBackend
from tests.support.harness import (
    Fleet,
    describe,
    pick,
    record_figures,
    recovery_time,
    settle_and_judge,
)
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(150, 600))]

JOBS = pick(1000, 5000)
KILLS = pick(12, 60)
POINTS = [f"{op}:{where}" for op in ("claim", "settle") for where in ("before", "during", "after")]
SLOTS = ("k0", "k1")
#: a hang net for a restart to take a dead incarnation's jobs back (prune_after is 60 s:
#: nothing else can within it); how long it took is the recorded figure
RECOVER_WITHIN = 30.0  # seconds


async def test_kills_inside_claim_and_settle_lose_no_job(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    rng = random.Random(2)
    fleet.defaults = {
        "runner": {
            "concurrency": 5,
            "batch_size": 10,
            "heartbeat_interval": 0.5,
            "prune_after": 60.0,  # only a restart can recover jobs within RECOVER_WITHIN
            "poll_interval": 0.5,
        }
    }
    payloads = [{"ms": rng.randint(5, 50)} for _ in range(JOBS)]
    # Each kill right after a claim uses an attempt of a whole batch: leave room for many.
    ledger.expect(await pg_backend.enqueue_many("q", payloads, max_attempts=25))

    loop = asyncio.get_running_loop()
    points: collections.Counter[str] = collections.Counter()
    recoveries: list[asyncio.Task[float]] = []

    async def doomed_incarnations(name: str, count: int) -> None:
        for _ in range(count):
            point = rng.choice(POINTS)
            inject = {"point": point, "nth": rng.randint(1, 4), "seed": rng.randrange(2**32)}
            worker = await fleet.start(name, inject=inject)
            await fleet.died(worker)
            assert worker.proc.returncode == -9, f"{name} with {inject} exited otherwise"
            died_at = loop.time()
            points[point] += 1
            held = await ledger.held_by(worker.pid)
            recoveries.append(
                asyncio.create_task(
                    recovery_time(ledger, held, since=died_at, within=RECOVER_WITHIN)
                )
            )

    per_slot = KILLS // len(SLOTS)
    await asyncio.gather(*(doomed_incarnations(name, per_slot) for name in SLOTS))
    assert not await ledger.drained(), "the queue ran dry before the faults ended: enqueue more"
    # The same names, without faults: each restart recovers its last incarnation's jobs.
    for name in SLOTS:
        await fleet.start(name)
    recovered = [await task for task in recoveries]

    verdict = await settle_and_judge(ledger, fleet, within=90)
    record_figures(
        "2 kill -9 inside claim/settle",
        **verdict.figures(),
        kills=sum(points.values()),
        points=dict(sorted(points.items())),
        recovery=describe(recovered),
        attempts=verdict.attempts_histogram,
    )
    verdict.assert_ok()
    assert sum(points.values()) == per_slot * len(SLOTS)
