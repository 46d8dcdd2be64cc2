"""The Runner under faults of its backend: calls that hang, a worker pruned while alive, a
stall, and bugs in its background tasks. The faults come from a fake backend (a
MemoryBackend subclass), not from mocks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from batchworks import Job, JobState, MemoryBackend, Runner, RunnerFailed, cli
from tests.conftest import eventually
from tests.unit.faulty import FaultyBackend


async def _state(backend: MemoryBackend, job_id: int) -> JobState:
    record = await backend.get_job(job_id)
    assert record is not None
    return record.state


class TestBackgroundTaskFailures:
    async def test_a_bug_in_settling_stops_the_run_loudly(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        backend = FaultyBackend()
        backend.bug["settle"] = AttributeError("'NoneType' object has no attribute 'kind'")
        await backend.enqueue_many("q", list(range(200)))

        async def handler(job: Job) -> None:
            await asyncio.sleep(0.01)

        runner = Runner(backend, {"q": handler}, batch_size=5, concurrency=5)
        with pytest.raises(RunnerFailed, match="settle task failed") as raised:
            async with asyncio.timeout(20):
                await runner.run_until_empty()

        assert isinstance(raised.value.__cause__, AttributeError)
        assert any(
            record.levelno == logging.ERROR and record.exc_info for record in caplog.records
        ), "the failure must be logged with its traceback"
        # It stopped claiming at the first failed flush: most jobs were never taken, and none
        # was lost (those it held stay its own until it is pruned).
        counts = (await backend.stats())["q"]
        assert counts["succeeded"] == 0
        assert counts["queued"] >= 100, counts
        assert counts["queued"] + counts["running"] == 200

    async def test_a_bug_in_heartbeats_makes_run_raise(self) -> None:
        backend = FaultyBackend()
        backend.bug["heartbeat"] = TypeError("heartbeat() got an unexpected keyword argument")
        runner = Runner(backend, {"q": _noop}, heartbeat_interval=0.05, prune_after=5.0)

        with pytest.raises(RunnerFailed, match="heartbeat task failed") as raised:
            async with asyncio.timeout(20):
                await runner.run()
        assert isinstance(raised.value.__cause__, TypeError)

    async def test_a_bug_in_claiming_stops_the_run_loudly_instead_of_retrying_forever(
        self,
    ) -> None:
        backend = FaultyBackend()
        backend.bug["claim"] = TypeError("claim() got an unexpected keyword argument 'lease'")
        job_id = await backend.enqueue("q", None)
        runner = Runner(backend, {"q": _noop}, heartbeat_interval=0.05, prune_after=5.0)

        with pytest.raises(RunnerFailed, match="its claim failed") as raised:
            async with asyncio.timeout(20):
                await runner.run()
        assert isinstance(raised.value.__cause__, TypeError)
        assert backend.calls.count("claim") == 1, "a bug is not worth a retry"
        assert await _state(backend, job_id) is JobState.QUEUED  # nothing taken, nothing lost

    def test_the_cli_worker_exits_non_zero(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert cli.main(["worker", "tests.unit.faulty:buggy_runner", "--log-level=ERROR"]) == 2
        assert "settle task failed" in capsys.readouterr().err

    async def test_a_failing_database_is_retried_not_fatal(self) -> None:
        backend = FaultyBackend()
        backend.bug["settle"] = ConnectionError("connection reset")
        job_id = await backend.enqueue("q", None)
        async with Runner(backend, {"q": _noop}, heartbeat_interval=0.05, prune_after=5.0):
            await eventually(lambda: backend.calls.count("settle") >= 3, what="settle retries")
            del backend.bug["settle"]
            await eventually(
                lambda: _is(backend, job_id, JobState.SUCCEEDED), what="the job settled"
            )


class TestBlackHoledBackend:
    async def test_a_partitioned_worker_gives_up_its_leases_by_its_own_clock(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        backend = FaultyBackend()
        started = asyncio.Event()
        cancelled = asyncio.Event()
        starts: list[int] = []

        async def handler(job: Job) -> None:
            if job.payload == "long":
                starts.append(job.attempt)
                started.set()
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.set()
                    raise

        job_id = await backend.enqueue("q", "long")
        runner = Runner(
            backend,
            {"q": handler},
            heartbeat_interval=0.05,
            prune_after=0.5,
            db_timeout=60,
            shutdown_timeout=0,
        )
        async with runner:
            async with asyncio.timeout(5):
                await started.wait()
            backend.partition()
            async with asyncio.timeout(10):
                await cancelled.wait()  # by its own clock: no heartbeat got an answer
            assert any(getattr(r, "action", None) == "lease_expired" for r in caplog.records)
            claims = backend.calls.count("claim")
            await asyncio.sleep(0.3)  # several heartbeat intervals: no claim meanwhile
            assert backend.calls.count("claim") == claims, "it must not claim while cut off"

            backend.heal()
            # Once it answers again, the job goes back without using an attempt (nobody
            # recovered it meanwhile), and the worker claims again: it runs once more.
            await eventually(lambda: _regained(caplog), what="a heartbeat through again")
            await eventually(lambda: len(starts) == 2, within=5, what="the job run again")
            record = await backend.get_job(job_id)
            assert record is not None
            assert (record.state, record.attempts, record.errors) == (JobState.RUNNING, 1, ())
        assert starts == [1, 1], "the attempt cut off by the partition must be given back"

    async def test_a_hard_stop_cuts_a_hung_settle(self) -> None:
        backend = FaultyBackend()
        job_id = await backend.enqueue("q", None)
        runner = Runner(backend, {"q": _noop}, heartbeat_interval=0.05, prune_after=5.0)
        task = asyncio.create_task(runner.run())
        await eventually(lambda: "claim" in backend.calls, what="a claim")
        backend.partition()  # the settle of the job's outcome hangs
        await eventually(lambda: "settle" in backend.calls, what="a settle")
        runner.stop()
        runner.stop(now=True)
        async with asyncio.timeout(15):  # CLOSE_GRACE, and a generous margin
            await task
        # The outcome could not be written: the job is still the (stopped) worker's, and
        # will be recovered when it is pruned; nothing was lost.
        assert await _state(backend, job_id) is JobState.RUNNING


class TestPrunedWhileAlive:
    async def test_a_pruned_worker_registers_again_and_carries_on(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        backend = MemoryBackend()
        release = asyncio.Event()
        runs: list[int] = []

        async def handler(job: Job) -> None:
            runs.append(job.attempt)
            if job.payload == "first":
                await release.wait()

        job_id = await backend.enqueue("q", "first", max_attempts=3)
        runner = Runner(
            backend, {"q": handler}, worker_name="w1", heartbeat_interval=0.05, prune_after=5
        )
        async with runner:
            await eventually(lambda: runs == [1], what="the job running")
            # Another worker judged it silent (a partition that has healed, a pause).
            assert await backend.recover(prune_after=0) == 1
            await eventually(
                lambda: runs == [1, 2], what="the job run again by the new incarnation"
            )
            release.set()
            await eventually(lambda: _is(backend, job_id, JobState.SUCCEEDED), what="done")
            later = await backend.enqueue("q", "later")
            await eventually(lambda: _is(backend, later, JobState.SUCCEEDED), what="still claiming")
            workers = await backend.workers()
            assert [worker.name for worker in workers] == ["w1"]
        assert any(getattr(r, "action", None) == "worker_reregistered" for r in caplog.records)


class TestStall:
    async def test_a_worker_out_of_a_stall_recovers_nothing_until_its_beats_are_regular(
        self,
    ) -> None:
        backend = FaultyBackend()
        runner = Runner(backend, {"q": _noop}, heartbeat_interval=0.05, prune_after=2.0)
        async with runner:
            await eventually(lambda: "recover" in backend.calls, what="a first recovery")
            backend.slow["heartbeat"] = 1.5  # longer than (prune_after - interval) / 2
            await eventually(lambda: _after_slow(backend).count("recover") >= 1, what="recover")
        # The slow beat, then two regular ones, and only then a recovery.
        assert _after_slow(backend)[:3] == ["heartbeat", "heartbeat", "recover"]


async def _noop(job: Job) -> None:
    return None


async def _is(backend: MemoryBackend, job_id: int, state: JobState) -> bool:
    return await _state(backend, job_id) is state


def _after_slow(backend: FaultyBackend) -> list[str]:
    """The heartbeats and recoveries after the slow heartbeat."""
    if "heartbeat:slow" not in backend.calls:
        return []
    after = backend.calls[backend.calls.index("heartbeat:slow") + 1 :]
    return [call for call in after if call in ("heartbeat", "recover")]


def _regained(caplog: pytest.LogCaptureFixture) -> bool:
    return any(getattr(r, "action", None) == "lease_regained" for r in caplog.records)


class _GatedSettles(MemoryBackend):
    """A MemoryBackend whose settles wait for ``gate`` (a database slow to commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def settle(self, worker: Any, outcomes: Any) -> list[int]:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return await super().settle(worker, outcomes)


class TestSlowSettles:
    async def test_claims_wait_for_the_outcomes_a_slow_settle_holds_up(self) -> None:
        # Claims commit asynchronously (#18) and may be faster than settles: unwritten outcomes
        # count against the room, or they pile up without bound while claims go on.
        backend = _GatedSettles()
        await backend.enqueue_many("q", list(range(500)))
        concurrency = batch = 10
        runner = Runner(backend, {"q": _noop}, concurrency=concurrency, batch_size=batch)
        async with runner:
            await eventually(lambda: backend.waiting > 0, what="a settle held up")
            for _ in range(1000):  # every loop turn the runner would use to claim more
                await asyncio.sleep(0)
            running = (await backend.stats())["q"].get("running", 0)
            # held and unwritten within concurrency + batch, and the batch being written
            assert batch <= running <= concurrency + 2 * batch
            backend.gate.set()

            async def all_done() -> bool:
                return (await backend.stats())["q"].get("succeeded", 0) == 500

            await eventually(all_done, within=20.0, what="the queue to drain once settles pass")
