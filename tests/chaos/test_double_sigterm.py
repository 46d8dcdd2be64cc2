"""Scenario 10: double SIGTERM. The first stops claiming and puts back the jobs that had not
started; the second exits at once, putting back the running ones; every job still finishes
later, on another worker, without having used an attempt."""

from __future__ import annotations

import asyncio
import signal

import pytest

from batchworks import JobState, PostgresBackend
from tests.support.harness import Fleet, poll, record_figures, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

SLOTS = 5
JOBS = 15


async def test_second_sigterm_exits_at_once_and_every_job_finishes_later(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    ids = await pg_backend.enqueue_many("q", [{"ms": 20, "mark": True}] * JOBS)
    ledger.expect(ids)
    runner = {"concurrency": SLOTS, "batch_size": 2 * SLOTS, "shutdown_timeout": 60.0}
    # 1000x slower: its jobs run 20 s, far longer than the test waits.
    slow = await fleet.start("slow", runner=runner, ms_scale=1000)

    async def holds(n: int) -> bool:
        return len(await ledger.held_by(slow.pid)) == n

    async def started(n: int) -> bool:
        return (
            await ledger.pool.fetchval(
                f"SELECT count(*) FROM \"{ledger.schema}\".faults WHERE kind = 'start'"
            )
            == n
        )

    # Every job claimed (a batch, and as much again ahead), and SLOTS of them running.
    await poll(lambda: holds(JOBS), within=10, what="all jobs claimed")
    await poll(lambda: started(SLOTS), within=10, what=f"{SLOTS} jobs running")
    slow.send(signal.SIGTERM)
    # The claimed-ahead jobs go back at once; the running ones keep going.
    released_after = await poll(lambda: holds(SLOTS), within=10, what="unstarted jobs put back")
    await asyncio.sleep(0.5)
    assert slow.alive, "the first SIGTERM must wait for running jobs (shutdown_timeout 60 s)"

    loop = asyncio.get_running_loop()
    second = loop.time()
    slow.send(signal.SIGTERM)
    # A hang net, far below shutdown_timeout (60 s): only the second SIGTERM can end it this soon.
    assert await slow.exit_code(within=30) == 0
    exited_after = loop.time() - second
    for job_id in ids:
        record = await pg_backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts, record.errors) == (JobState.QUEUED, 0, ())

    await fleet.start("fast", runner=runner)
    verdict = await settle_and_judge(ledger, fleet, within=30)
    record_figures(
        "10 double SIGTERM",
        **verdict.figures(),
        unstarted_put_back_after=f"{released_after:.2f} s",
        exit_after_second_sigterm=f"{exited_after:.2f} s",
    )
    verdict.assert_ok(duplicates_allowed=False)
    assert verdict.attempts_histogram == {1: JOBS}, "a released job must not use an attempt"
