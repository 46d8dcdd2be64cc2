"""Scenario 1: ``kill -9`` one of 3 workers every few seconds and restart it under the same
name, while thousands of 5-50 ms jobs run."""

from __future__ import annotations

import asyncio
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

JOBS = pick(3000, 5000)
KILL_EVERY = pick(1.0, 2.0)  # seconds
WORKERS = ("w0", "w1", "w2")
#: a hang net for a restart to take a dead incarnation's jobs back (prune_after is 60 s:
#: nothing else can within it); how long it took is the recorded figure
RECOVER_WITHIN = 30.0  # seconds


async def test_sigkill_loop_with_restarts_loses_no_job(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    rng = random.Random(1)
    payloads = [{"ms": rng.randint(5, 50)} for _ in range(JOBS)]
    fleet.defaults = {
        "runner": {
            "concurrency": 4,
            "batch_size": 10,
            "heartbeat_interval": 0.5,
            # Long: a killed worker's jobs come back through its restart (as it registers), not
            # through pruning, and nothing but the restart can bring them within RECOVER_WITHIN.
            "prune_after": 60.0,
            "poll_interval": 0.5,
        }
    }
    for name in WORKERS:
        await fleet.start(name)
    ledger.expect(await pg_backend.enqueue_many("q", payloads))

    loop = asyncio.get_running_loop()
    began = loop.time()
    recoveries: list[asyncio.Task[float]] = []
    restarts: list[float] = []
    kills = 0
    while not await ledger.drained():
        await asyncio.sleep(KILL_EVERY)
        if await ledger.drained():
            break
        name = rng.choice(WORKERS)
        killed_at = loop.time()
        victim = await fleet.kill(name)
        kills += 1
        held = await ledger.held_by(victim.pid)
        await fleet.start(name)
        restarts.append(loop.time() - killed_at)
        recoveries.append(
            asyncio.create_task(recovery_time(ledger, held, since=killed_at, within=RECOVER_WITHIN))
        )
    elapsed = loop.time() - began
    recovered = [await task for task in recoveries]

    verdict = await settle_and_judge(ledger, fleet, within=60)
    record_figures(
        "1 kill -9 loop",
        **verdict.figures(),
        kills=kills,
        restart=describe(restarts),
        recovery=describe(recovered),
        elapsed=f"{elapsed:.1f} s",
        attempts=verdict.attempts_histogram,
    )
    verdict.assert_ok()
    assert kills >= pick(3, 4), f"only {kills} kills happened while {JOBS} jobs ran"
