"""The Runner's behaviour: limits, flushing, fetching ahead, shutdown, timeouts, heartbeats."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
import tenacity

from batchworks import (
    Job,
    JobState,
    LifecycleError,
    MemoryBackend,
    RetryPolicy,
    Runner,
)
from batchworks.backends.base import Backend, Heartbeat
from tests.conftest import eventually

FAST = {"heartbeat_interval": 0.05, "prune_after": 5.0, "poll_interval": 0.05}


async def state_of(backend: Backend, job_id: int) -> JobState:
    record = await backend.get_job(job_id)
    assert record is not None
    return record.state


class Gate:
    """Handlers that block until released, counting how many run at once."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.all_started = asyncio.Event()
        self.expect = 0

    async def __call__(self, job: Job) -> int:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.append(job.id)
        if len(self.started) >= self.expect:
            self.all_started.set()
        try:
            await self.open.wait()
        finally:
            self.running -= 1
        return job.id


class TestConcurrency:
    async def test_in_flight_never_exceeds_the_limit_and_reaches_it(self, backend: Backend) -> None:
        counter = {"now": 0, "peak": 0}

        async def handler(job: Job) -> None:
            counter["now"] += 1
            counter["peak"] = max(counter["peak"], counter["now"])
            for _ in range(3):  # yield so that siblings overlap
                await asyncio.sleep(0)
            counter["now"] -= 1

        await backend.enqueue_many("q", list(range(300)))
        runner = Runner(backend, {"q": handler}, concurrency=7, batch_size=20)
        report = await runner.run_until_empty()

        assert report.succeeded == 300
        assert counter["peak"] == 7

    async def test_claims_the_next_batch_while_the_current_one_runs(self, backend: Backend) -> None:
        gate = Gate()
        gate.expect = 4
        ids = await backend.enqueue_many("q", list(range(12)))
        runner = Runner(backend, {"q": gate}, concurrency=4, batch_size=4, **FAST)
        async with runner:
            async with asyncio.timeout(15):  # a hang net
                await gate.all_started.wait()

            async def held() -> bool:
                return (await backend.stats())["q"]["running"] == 8

            # 4 running and one batch of 4 claimed ahead, waiting for a free slot.
            await eventually(held, what="a second batch claimed ahead")
            assert gate.peak == 4
            gate.open.set()
            await eventually(
                lambda: _all_in(backend, ids, JobState.SUCCEEDED), what="all jobs succeeded"
            )


async def _all_in(backend: Backend, ids: list[int], state: JobState) -> bool:
    return all([await state_of(backend, job_id) is state for job_id in ids])


class TestSettling:
    async def test_outcome_is_written_without_waiting_for_the_slowest_job(
        self, backend: Backend
    ) -> None:
        slow_may_finish = asyncio.Event()

        async def handler(job: Job) -> str:
            if job.payload == "slow":
                await slow_may_finish.wait()
            return str(job.payload)

        slow = await backend.enqueue("q", "slow")
        fast = await backend.enqueue_many("q", ["a", "b", "c"])
        runner = Runner(backend, {"q": handler}, concurrency=4, batch_size=4, **FAST)
        async with runner:
            await eventually(
                lambda: _all_in(backend, fast, JobState.SUCCEEDED),
                within=10.0,  # a hang net: the slow job waits on an event, not a clock
                what="the fast jobs of the batch to be settled while the slow one runs",
            )
            assert await state_of(backend, slow) is JobState.RUNNING
            slow_may_finish.set()
            await eventually(lambda: _all_in(backend, [slow], JobState.SUCCEEDED), what="slow")
        record = await backend.get_job(fast[0])
        assert record is not None and record.result == "a"

    async def test_run_until_empty_reports_what_it_wrote(self, backend: Backend) -> None:
        async def handler(job: Job) -> None:
            if job.payload == "flaky" and job.attempt == 1:
                raise ConnectionError("blip")
            if job.payload == "bad":
                raise ValueError("bad record")

        await backend.enqueue_many("q", ["ok", "ok", "flaky", "bad"])
        policy = RetryPolicy(
            max_attempts=3,
            wait=tenacity.wait_fixed(0.05),
            retry=tenacity.retry_if_not_exception_type(ValueError),
        )
        report = await Runner(backend, {"q": handler}, retry=policy).run_until_empty(max_delay=1)

        assert (report.succeeded, report.failed, report.retried) == (3, 1, 1)
        assert (await backend.stats())["q"]["queued"] == 0

    async def test_run_until_empty_leaves_jobs_due_later_than_max_delay(
        self, backend: Backend
    ) -> None:
        calls = []

        async def handler(job: Job) -> None:
            calls.append(job.payload)

        later = await backend.enqueue("q", "later", delay=60)
        await backend.enqueue("q", "now")
        report = await Runner(backend, {"q": handler}).run_until_empty(max_delay=1)

        assert calls == ["now"]
        assert report.succeeded == 1
        assert await state_of(backend, later) is JobState.QUEUED


class TestShutdown:
    async def test_stop_releases_running_jobs_after_shutdown_timeout(
        self, backend: Backend
    ) -> None:
        gate = Gate()
        gate.expect = 2
        ids = await backend.enqueue_many("q", [1, 2])
        runner = Runner(backend, {"q": gate}, concurrency=2, shutdown_timeout=0.2, **FAST)
        task = asyncio.create_task(runner.run())
        async with asyncio.timeout(15):  # a hang net
            await gate.all_started.wait()
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        runner.stop()
        async with asyncio.timeout(15):  # a hang net
            await task
        took = loop.time() - stopped_at

        # It waited for shutdown_timeout (load only makes that longer); the upper bound of the
        # timeout(5) above is a hang net, not a figure.
        assert took >= 0.2, f"stopped after {took:.2f}s, before shutdown_timeout"
        for job_id in ids:
            record = await backend.get_job(job_id)
            assert record is not None
            assert (record.state, record.attempts) == (JobState.QUEUED, 0)
        assert runner.report.released == 2

    async def test_jobs_finishing_within_shutdown_timeout_succeed(self, backend: Backend) -> None:
        gate = Gate()
        gate.expect = 1
        job_id = await backend.enqueue("q", 1)
        runner = Runner(backend, {"q": gate}, shutdown_timeout=10, **FAST)
        task = asyncio.create_task(runner.run())
        async with asyncio.timeout(15):  # a hang net
            await gate.all_started.wait()
        runner.stop()
        await eventually(lambda: "stopping" in repr(runner), what="the runner to be stopping")
        gate.open.set()
        async with asyncio.timeout(15):  # a hang net
            await task
        assert await state_of(backend, job_id) is JobState.SUCCEEDED

    async def test_jobs_claimed_ahead_are_released_at_once(self, backend: Backend) -> None:
        gate = Gate()
        gate.expect = 1
        ids = await backend.enqueue_many("q", list(range(5)))
        runner = Runner(
            backend, {"q": gate}, concurrency=1, batch_size=5, shutdown_timeout=30, **FAST
        )
        task = asyncio.create_task(runner.run())
        async with asyncio.timeout(15):  # a hang net
            await gate.all_started.wait()
        runner.stop()
        # The four waiting for the single slot go back while the first still runs.
        waiting = [job_id for job_id in ids if job_id not in gate.started]
        await eventually(
            lambda: _all_in(backend, waiting, JobState.QUEUED), what="unstarted jobs released"
        )
        assert await state_of(backend, gate.started[0]) is JobState.RUNNING
        runner.stop(now=True)
        async with asyncio.timeout(15):  # a hang net
            await task
        record = await backend.get_job(gate.started[0])
        assert record is not None and (record.state, record.attempts) == (JobState.QUEUED, 0)

    async def test_second_sigterm_stops_at_once(self, backend: Backend) -> None:
        gate = Gate()
        gate.expect = 1
        job_id = await backend.enqueue("q", 1)
        runner = Runner(backend, {"q": gate}, shutdown_timeout=60, **FAST)
        task = asyncio.create_task(runner.run())
        async with asyncio.timeout(15):  # a hang net
            await gate.all_started.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await eventually(lambda: "stopping" in repr(runner), what="graceful stop on SIGTERM")
        assert not task.done()
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(15):  # a hang net
            await task  # returns normally: a worker process exits 0
        record = await backend.get_job(job_id)
        assert record is not None and (record.state, record.attempts) == (JobState.QUEUED, 0)

    async def test_a_stop_reports_what_it_wrote_and_loses_no_lease(self, backend: Backend) -> None:
        calls = 0

        async def handler(job: Job) -> None:
            nonlocal calls
            calls += 1
            if calls == 500:
                runner.stop()

        await backend.enqueue_many("q", list(range(2000)))
        runner = Runner(backend, {"q": handler}, concurrency=50, batch_size=50, **FAST)
        await runner.run()

        stats = (await backend.stats())["q"]
        report = runner.report
        assert report.lost == 0
        assert report.succeeded == stats["succeeded"]
        assert stats["running"] == 0
        assert stats["queued"] + stats["succeeded"] == 2000

    async def test_a_runner_runs_once(self, backend: Backend) -> None:
        async def handler(job: Job) -> None:
            return None

        runner = Runner(backend, {"q": handler})
        await runner.run_until_empty()
        with pytest.raises(LifecycleError, match="create a new Runner"):
            await runner.run_until_empty()


class TestTimeouts:
    async def test_job_past_its_timeout_fails_with_timeout_error_and_is_retried(
        self, backend: Backend
    ) -> None:
        async def handler(job: Job) -> str:
            if job.attempt == 1:
                await asyncio.Event().wait()  # hangs
            return "second try"

        job_id = await backend.enqueue("q", None)
        policy = RetryPolicy(wait=tenacity.wait_none())
        runner = Runner(backend, {"q": handler}, job_timeout=0.1, retry=policy)
        report = await runner.run_until_empty(max_delay=1)

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts, record.result) == (
            JobState.SUCCEEDED,
            2,
            "second try",
        )
        assert record.errors[0]["type"] == "TimeoutError"
        assert report.retried == 1


class TestWakeUp:
    async def test_idle_runner_starts_an_enqueued_job_at_once(self, backend: Backend) -> None:
        started = asyncio.Event()

        async def handler(job: Job) -> None:
            started.set()

        runner = Runner(backend, {"q": handler}, poll_interval=60)
        async with runner:
            await asyncio.sleep(0)  # let it go idle
            await backend.enqueue("q", None)
            async with asyncio.timeout(15):  # a hang net, still far below the 60 s poll
                await started.wait()

    async def test_idle_runner_wakes_when_a_delayed_job_falls_due(self, backend: Backend) -> None:
        started = asyncio.Event()

        async def handler(job: Job) -> None:
            started.set()

        await backend.enqueue("q", None, delay=0.2)
        async with Runner(backend, {"q": handler}, poll_interval=60):
            async with asyncio.timeout(15):  # a hang net, far below the 60 s poll
                await started.wait()


class TestHeartbeats:
    async def test_operator_cancel_stops_a_running_job(self, backend: Backend) -> None:
        gate = Gate()
        gate.expect = 1
        job_id = await backend.enqueue("q", None)
        async with Runner(backend, {"q": gate}, **FAST):
            async with asyncio.timeout(15):  # a hang net
                await gate.all_started.wait()
            assert await backend.cancel(job_id)
            await eventually(
                lambda: _all_in(backend, [job_id], JobState.CANCELLED),
                what="the running job cancelled at the next heartbeat",
            )
        assert gate.running == 0

    async def test_worker_replaced_by_a_restart_stops_and_writes_nothing(
        self, backend: Backend
    ) -> None:
        gate = Gate()
        gate.expect = 1
        job_id = await backend.enqueue("q", None, max_attempts=3)
        runner = Runner(backend, {"q": gate}, worker_name="w1", **FAST)
        task = asyncio.create_task(runner.run())
        async with asyncio.timeout(15):  # a hang net
            await gate.all_started.wait()
        # A new incarnation of w1 takes over: the job goes back to the queue as worker-lost.
        await backend.register_worker("w1", ["q"])
        async with asyncio.timeout(15):  # a hang net
            await task  # the old incarnation notices at its next heartbeat and stops
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.QUEUED, 1)
        assert [entry["type"] for entry in record.errors] == ["WorkerLost"]
        assert runner.report.settled == 0


class TestSyncHandlers:
    async def test_sync_handler_runs_in_a_thread_when_allowed(self, backend: Backend) -> None:
        import threading

        seen: list[Any] = []

        def handler(job: Job) -> int:
            seen.append(threading.current_thread() is threading.main_thread())
            return int(job.payload) * 2

        job_id = await backend.enqueue("q", 21)
        await Runner(backend, {"q": handler}, sync_in_thread=True).run_until_empty()
        record = await backend.get_job(job_id)
        assert record is not None and record.result == 42
        assert seen == [False]


async def test_repr_shows_worker_state_and_counts() -> None:
    backend = MemoryBackend()

    async def handler(job: Job) -> None:
        return None

    await backend.enqueue_many("q", [1, 2, 3])
    runner = Runner(backend, {"q": handler}, worker_name="w1")
    assert repr(runner) == "<Runner worker='w1' state=created running=0 succeeded=0 failed=0>"
    await runner.run_until_empty()
    assert repr(runner) == "<Runner worker='w1' state=stopped running=0 succeeded=3 failed=0>"


class TestHealthy:
    async def test_healthy_while_running_and_not_before_or_after(self) -> None:
        gate = Gate()
        gate.expect = 1
        backend = MemoryBackend()
        await backend.enqueue("q", 1)
        runner = Runner(backend, {"q": gate}, shutdown_timeout=10, **FAST)
        assert not runner.healthy  # not started

        task = asyncio.create_task(runner.run())
        await runner.wait_ready()
        assert runner.healthy
        async with asyncio.timeout(10):
            await gate.all_started.wait()
        runner.stop()
        assert not runner.healthy  # stopping, with a job still running
        gate.open.set()
        async with asyncio.timeout(10):
            await task
        assert not runner.healthy  # stopped

    async def test_unhealthy_once_heartbeats_failed_for_prune_after(self) -> None:
        class Flaky(MemoryBackend):
            failing = False
            beats = 0

            async def heartbeat(self, *args: Any, **kwargs: Any) -> Heartbeat:
                if self.failing:
                    raise ConnectionError("database unreachable")
                self.beats += 1
                return await super().heartbeat(*args, **kwargs)

        async def handler(job: Job) -> None:
            return None

        backend = Flaky()
        options = {"heartbeat_interval": 0.02, "prune_after": 0.3, "poll_interval": 0.05}
        async with Runner(backend, {"q": handler}, **options) as runner:
            await eventually(lambda: backend.beats >= 3, what="a few heartbeats")
            assert runner.healthy
            backend.failing = True
            await eventually(lambda: not runner.healthy, what="healthy to turn false")
            assert repr(runner).count("state=running") == 1  # still running: only unhealthy
            backend.failing = False
            await eventually(lambda: runner.healthy, what="healthy again after a heartbeat")

    async def test_a_pruned_worker_is_unhealthy(self) -> None:
        async def handler(job: Job) -> None:
            return None

        backend = MemoryBackend()
        runner = Runner(backend, {"q": handler}, worker_name="w", **FAST)
        task = asyncio.create_task(runner.run())
        await runner.wait_ready()
        await backend.register_worker("w", ["q"])  # another incarnation replaces it

        await eventually(lambda: not runner.healthy, what="the replaced worker to be unhealthy")
        async with asyncio.timeout(10):
            await task  # and it stopped by itself


class TestRunnerQueues:
    def test_names_the_queues_it_takes_jobs_from(self) -> None:
        async def handle(job: Job) -> None:
            return None

        backend = MemoryBackend()
        assert Runner(backend, {"a": handle, "b": handle}).queues == ("a", "b")
        assert Runner(backend, {"a": handle, "b": handle}, queues=["b"]).queues == ("b",)
