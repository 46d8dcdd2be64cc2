"""The memory backend's own tests. With a fake clock, delayed jobs fall due, leases expire,
silent workers are pruned and finished jobs purged when time moves: the rules they check run
on every backend in ``tests/contract``, but only the memory backend lets a test move time.
An idle ``wait_for_work`` lasts its ``max_wait``, and ``MemoryBackend(max_payload_bytes=...)``
limits checkpoints as it does payloads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from batchworks import Job, JobState, MemoryBackend, PayloadError, Runner
from batchworks.outcome import Outcome, OutcomeKind
from tests.support.calls import (
    LEASE,
    FakeClock,
    claim,
    claim_one,
    state,
    succeeded,
)


class TestMemoryOnlyTime:
    """MemoryBackend with a fake clock: a delayed job falls due when time moves."""

    async def test_delayed_job_is_claimable_once_due(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {}, delay=60)
        worker = await backend.register_worker("w1", ["q"])

        clock.advance(59.9)
        assert await claim(backend, worker) == []
        assert await backend.next_due(["q"]) == pytest.approx(0.1)
        clock.advance(0.1)
        assert [job.id for job in await claim(backend, worker)] == [job_id]

    async def test_run_at_job_is_claimable_once_due(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        run_at = datetime.fromtimestamp(clock.now, UTC) + timedelta(seconds=30)
        job_id = await backend.enqueue("q", {}, run_at=run_at)
        worker = await backend.register_worker("w1", ["q"])

        assert await backend.next_due(["q"]) == pytest.approx(30)
        clock.advance(30)
        assert [job.id for job in await claim(backend, worker)] == [job_id]

    async def test_retried_job_is_due_after_its_delay(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        await backend.settle(worker, [Outcome(job_id, OutcomeKind.RETRIED, 10.0)])

        assert await claim(backend, worker) == []
        clock.advance(10)
        assert (await claim_one(backend, worker)).attempt == 2


class TestMemoryOnlyHeartbeat:
    """MemoryBackend with a fake clock: leases, pruning and purging move with time."""

    async def test_heartbeat_extends_the_lease(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker, lease=10)

        clock.advance(8)
        await backend.heartbeat(worker, [job_id], lease=10)
        clock.advance(8)  # past the first lease, within the extended one

        assert await backend.recover(prune_after=100) == 0
        assert await state(backend, job_id) is JobState.RUNNING

    async def test_expired_lease_is_recovered_though_the_worker_heartbeats(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker, lease=10)

        clock.advance(11)
        beat = await backend.heartbeat(worker, [], lease=10)  # alive, but not for this job
        recovered = await backend.recover(prune_after=100)

        assert beat.alive
        assert recovered == 1
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.QUEUED, 1)
        assert [(e["attempt"], e["type"]) for e in record.errors] == [(1, "WorkerLost")]
        assert "lease" in record.errors[0]["message"]
        assert await backend.settle(worker, [succeeded(job_id)]) == [job_id]

    async def test_recover_prunes_a_silent_worker_and_recovers_its_jobs(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        silent = await backend.register_worker("w1", ["q"])
        await claim_one(backend, silent, lease=1000)

        clock.advance(31)
        recovered = await backend.recover(prune_after=30)

        assert recovered == 1
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.QUEUED, 1)
        assert record.run_at == datetime.fromtimestamp(clock.now, UTC)
        assert [(e["attempt"], e["type"]) for e in record.errors] == [(1, "WorkerLost")]
        assert not (await backend.heartbeat(silent, [job_id], lease=LEASE)).alive
        assert await claim(backend, silent) == []

    async def test_recover_leaves_a_worker_that_heartbeats(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker, lease=30)

        for _ in range(4):
            clock.advance(20)
            await backend.heartbeat(worker, [job_id], lease=30)
            assert await backend.recover(prune_after=30) == 0

        assert await state(backend, job_id) is JobState.RUNNING

    async def test_recovered_job_with_no_attempts_left_fails(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {}, max_attempts=1)
        silent = await backend.register_worker("w1", ["q"])
        await claim_one(backend, silent)

        clock.advance(31)
        await backend.recover(prune_after=30)

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.FAILED, 1)
        assert [e["type"] for e in record.errors] == ["WorkerLost"]

    async def test_purge_deletes_only_jobs_finished_longer_ago(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        old, recent, waiting = await backend.enqueue_many("q", [1, 2, 3])
        cancelled_old = await backend.enqueue("q", 4)
        worker = await backend.register_worker("w1", ["q"])
        await claim(backend, worker, 2)
        await backend.settle(worker, [succeeded(old)])
        await backend.cancel(cancelled_old)
        clock.advance(3600)
        await backend.settle(worker, [Outcome(recent, OutcomeKind.FAILED)])
        clock.advance(60)

        purged = await backend.purge(timedelta(minutes=30))

        assert purged == 2
        assert await backend.get_job(old) is None
        assert await backend.get_job(cancelled_old) is None
        assert await state(backend, recent) is JobState.FAILED
        assert await state(backend, waiting) is JobState.QUEUED
        assert await backend.stats() == {
            "q": {"queued": 1, "running": 0, "succeeded": 0, "failed": 1, "cancelled": 0}
        }


class TestMemoryOnlyWaitForWork:
    async def test_waits_for_max_wait_without_work(self) -> None:
        backend = MemoryBackend()
        loop = asyncio.get_running_loop()
        start = loop.time()

        await backend.wait_for_work(["q"], max_wait=0.05)

        assert loop.time() - start >= 0.04


class TestMemoryOnlyCheckpoint:
    async def test_checkpoint_size_is_limited_by_the_backend(self) -> None:
        backend = MemoryBackend(max_payload_bytes=100)
        errors: list[str] = []

        async def handler(job: Job) -> None:
            try:
                await job.save_checkpoint("x" * 200)
            except PayloadError as exc:
                errors.append(str(exc))

        await backend.enqueue("q", None)
        await Runner(backend, {"q": handler}).run_until_empty()
        assert len(errors) == 1 and "over the limit of 100" in errors[0]


async def test_a_runner_puts_back_a_job_it_claims_again_while_its_earlier_attempt_runs() -> None:
    # The lease of a job still running here ran out (a paused process, a clock jump) and the
    # recovery put it back; this runner, with free slots, claims it again before its heartbeat
    # says the first attempt is lost. The second claim goes back without running: never two
    # attempts of one job in one runner; the first attempt's outcome is fenced out; the job then
    # runs again and succeeds.
    from tests.conftest import eventually

    backend = ClaimRecording()
    claims = backend.attempts  # the attempt of each claim of the job
    job_id = await backend.enqueue("q", "x", max_attempts=5)
    first_started = asyncio.Event()
    release_first = asyncio.Event()
    attempts: list[int] = []
    running = 0
    peak = 0

    async def handler(job: Job) -> str:
        nonlocal running, peak
        attempts.append(job.attempt)
        running += 1
        peak = max(peak, running)
        try:
            if job.attempt == 1:
                first_started.set()
                await release_first.wait()
            return "done"
        finally:
            running -= 1

    # A heartbeat far away: the runner learns of nothing before the test releases the handler.
    runner = Runner(
        backend,
        {"q": handler},
        concurrency=4,
        heartbeat_interval=30.0,
        prune_after=120.0,
        poll_interval=0.02,
        flush_interval=0.01,
    )
    task = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(15):
            await first_started.wait()
        backend._running[job_id].lease_until = 0.0  # the lease ran out
        assert await backend.recover(prune_after=120.0) == 1

        async def claimed_again_twice() -> bool:
            # claimed as attempt 2 and put back without using it, so claimed as 2 again
            return claims.count(2) >= 2

        await eventually(claimed_again_twice, what="the job to be claimed again, twice")
        assert attempts == [1], "a second attempt started while the first still ran"
        release_first.set()

        async def succeeded() -> bool:
            record = await backend.get_job(job_id)
            return record is not None and record.state is JobState.SUCCEEDED

        await eventually(succeeded, within=15.0, what="the job to succeed after the release")
    finally:
        runner.stop()
        async with asyncio.timeout(15):
            await task
    record = await backend.get_job(job_id)
    assert record is not None
    assert peak == 1
    assert attempts == [1, 2], attempts  # the first (fenced out), then one more that settled
    assert [entry["type"] for entry in record.errors] == ["WorkerLost"]


class ClaimRecording(MemoryBackend):
    """A MemoryBackend that records what each claim took: ids and attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[int] = []
        self.attempts: list[int] = []

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        claimed = await super().claim(*args, **kwargs)
        self.ids.extend(job.id for job in claimed)
        self.attempts.extend(job.attempt for job in claimed)
        return claimed


async def test_a_job_waiting_for_a_task_does_not_start_once_the_leases_ran_out() -> None:
    # The process stops (SIGSTOP, a blocked loop) longer than its leases while a claimed job
    # waits for a free task. When it runs again, the job must go back unstarted: by its own
    # clock this worker no longer holds it, and the database may have given it to another.
    import time

    backend = ClaimRecording()
    _, second = await backend.enqueue_many("q", ["block", "wait"])
    started: list[int] = []

    async def handler(job: Job) -> None:
        started.append(job.id)
        if job.payload == "block" and started.count(job.id) == 1:
            time.sleep(1.2)  # noqa: ASYNC251 - the whole process stops, loop and all

    runner = Runner(
        backend,
        {"q": handler},
        concurrency=1,
        batch_size=2,
        heartbeat_interval=0.1,
        prune_after=1.0,
        poll_interval=0.05,
        flush_interval=0.01,
    )
    async with asyncio.timeout(30):
        report = await runner.run_until_empty()
    assert report.succeeded == 2, report
    assert started.index(second) > 0 and backend.ids.count(second) >= 2, (
        f"the waiting job started on leases that had run out (claims {backend.ids}, runs {started})"
    )
    record = await backend.get_job(second)
    assert record is not None and record.state is JobState.SUCCEEDED and record.attempts == 1


class Stalling(ClaimRecording):
    """A MemoryBackend whose heartbeats and claims wait while ``stalled`` is set, as they do
    behind an operator's LOCK TABLE: both come back once it ends, late."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False
        self.unstalled = asyncio.Event()

    async def _wait_out_the_stall(self) -> None:
        if self.stalled:
            await self.unstalled.wait()

    async def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        await self._wait_out_the_stall()
        return await super().heartbeat(*args, **kwargs)

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        await self._wait_out_the_stall()
        return await super().claim(*args, **kwargs)


async def test_claims_wait_for_a_fresh_heartbeat_after_a_stall_instead_of_churning() -> None:
    # A stall longer than the lease: the heartbeat sent during it gets through only when it
    # ends, so by the worker's clock (which counts from the send) its leases have run out
    # though the database just renewed them. Claiming then would put every claimed job back
    # unstarted; the worker has a fresh heartbeat sent first, and claims once it is through.
    backend = Stalling()
    jobs = 400
    await backend.enqueue_many("q", [{"n": n} for n in range(jobs)])
    started: list[int] = []
    stall_over = asyncio.Event()

    async def handler(job: Job) -> None:
        started.append(job.id)
        if len(started) == 40 and not backend.stalled:
            backend.stalled = True
            loop = asyncio.get_running_loop()
            loop.call_later(2.5, backend.unstalled.set)
            loop.call_later(2.5, stall_over.set)
        await asyncio.sleep(0)

    runner = Runner(
        backend,
        {"q": handler},
        concurrency=2,
        batch_size=4,
        heartbeat_interval=0.1,
        prune_after=1.0,
        db_timeout=5.0,
        poll_interval=0.05,
        flush_interval=0.01,
    )
    async with asyncio.timeout(60):
        report = await runner.run_until_empty()
    assert stall_over.is_set(), "the stall never happened: the test proves nothing"
    assert report.succeeded == jobs, report
    put_back = len(backend.ids) - len(started)
    # The jobs held when the leases ran out, and the claim that came back after the stall,
    # go back unstarted: a batch and the pool's jobs at most, not a claim after a claim.
    assert put_back <= 2 * (4 + 2), (
        f"{put_back} claimed jobs went back unstarted after the stall ({len(backend.ids)} "
        f"claimed, {len(started)} started): claims churned on leases the worker's clock "
        "counted as lost"
    )
