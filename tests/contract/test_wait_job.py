"""``backend.wait_job(job_id, timeout=None)``: the producer's way to a job's outcome, on both
backends. Every bound below is a hang net; on PostgreSQL it is also far below the 30 s re-read
(``WAIT_RECHECK``), so a waiter that returns within it was woken by its NOTIFY."""

from __future__ import annotations

import asyncio

import pytest

from batchworks import (
    ConfigurationError,
    Job,
    JobNotFound,
    JobState,
    Runner,
    Terminal,
)
from batchworks.backends.base import Backend
from tests.conftest import eventually

HANG_NET = 15.0  # seconds


async def _waiting(task: asyncio.Task[object]) -> None:
    for _ in range(20):  # let it subscribe and read the job (a round trip on PostgreSQL)
        await asyncio.sleep(0.01)
    assert not task.done(), task


class TestWaitJob:
    async def test_a_runner_in_another_task_wakes_the_waiter_with_the_result(
        self, backend: Backend
    ) -> None:
        async def handler(job: Job) -> object:
            return {"total": job.payload["n"] * 2}

        job_id = await backend.enqueue("orders", {"n": 21})
        waiter = asyncio.create_task(backend.wait_job(job_id))
        await _waiting(waiter)

        async with Runner(backend, {"orders": handler}):
            async with asyncio.timeout(HANG_NET):
                record = await waiter

        assert (record.id, record.state, record.result) == (
            job_id,
            JobState.SUCCEEDED,
            {"total": 42},
        )

    async def test_a_failed_job_ends_the_wait_with_its_errors(self, backend: Backend) -> None:
        async def handler(job: Job) -> object:
            raise Terminal("no such customer")

        job_id = await backend.enqueue("orders", {})
        async with Runner(backend, {"orders": handler}):
            async with asyncio.timeout(HANG_NET):
                record = await backend.wait_job(job_id)

        assert record.state is JobState.FAILED
        assert [entry["message"] for entry in record.errors] == ["no such customer"]

    async def test_cancelling_a_queued_job_ends_the_wait(self, backend: Backend) -> None:
        job_id = await backend.enqueue("orders", {})
        waiter = asyncio.create_task(backend.wait_job(job_id))
        await _waiting(waiter)

        assert await backend.cancel(job_id)

        async with asyncio.timeout(HANG_NET):
            record = await waiter
        assert record.state is JobState.CANCELLED

    async def test_a_job_failed_by_recovery_ends_the_wait(self, backend: Backend) -> None:
        # Its worker is lost on its only attempt: the restart under the same name fails it.
        job_id = await backend.enqueue("orders", {}, max_attempts=1)
        worker = await backend.register_worker("w", ["orders"])
        [claimed] = await backend.claim(worker, ["orders"], 1, lease=30.0, max_attempts=5)
        assert claimed.id == job_id
        waiter = asyncio.create_task(backend.wait_job(job_id))
        await _waiting(waiter)

        await backend.register_worker("w", ["orders"])

        async with asyncio.timeout(HANG_NET):
            record = await waiter
        assert record.state is JobState.FAILED
        assert [entry["type"] for entry in record.errors] == ["WorkerLost"]

    async def test_an_already_final_job_returns_at_once(self, backend: Backend) -> None:
        job_id = await backend.enqueue("orders", {})
        assert await backend.cancel(job_id)

        record = await backend.wait_job(job_id, timeout=0)

        assert record.state is JobState.CANCELLED

    async def test_an_unfinished_job_times_out_with_its_state_named(self, backend: Backend) -> None:
        job_id = await backend.enqueue("orders", {})

        with pytest.raises(TimeoutError, match=rf"job {job_id} is still queued after 0.05s"):
            await backend.wait_job(job_id, timeout=0.05)
        with pytest.raises(TimeoutError, match="still queued after 0s"):
            await backend.wait_job(job_id, timeout=0)
        record = await backend.get_job(job_id)
        assert record is not None and record.state is JobState.QUEUED  # nothing changed

    async def test_an_unknown_id_is_a_clear_error(self, backend: Backend) -> None:
        with pytest.raises(JobNotFound, match="no job has id 424242") as caught:
            await backend.wait_job(424242, timeout=1)
        assert isinstance(caught.value, LookupError) and caught.value.job_id == 424242

    async def test_a_bad_timeout_is_refused(self, backend: Backend) -> None:
        job_id = await backend.enqueue("orders", {})
        with pytest.raises(ConfigurationError, match="timeout must be"):
            await backend.wait_job(job_id, timeout=-1)

    async def test_many_waiters_on_many_jobs_each_get_their_own(self, backend: Backend) -> None:
        async def handler(job: Job) -> object:
            return job.payload

        ids = await backend.enqueue_many("orders", list(range(20)))
        waiters = [asyncio.create_task(backend.wait_job(job_id)) for job_id in ids * 2]
        await _waiting(waiters[-1])

        async with Runner(backend, {"orders": handler}, batch_size=7):
            async with asyncio.timeout(HANG_NET):
                records = await asyncio.gather(*waiters)

        assert [record.result for record in records] == list(range(20)) * 2

    async def test_a_cancelled_wait_leaves_no_waiter_behind(self, backend: Backend) -> None:
        job_id = await backend.enqueue("orders", {})
        waiter = asyncio.create_task(backend.wait_job(job_id))
        await _waiting(waiter)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

        waiters = getattr(backend, "_job_waiters")  # noqa: B009 - private: no public view of it
        await eventually(lambda: not waiters, what="the waiter to be gone")
