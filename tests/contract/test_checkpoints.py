"""Resumable jobs: checkpoints saved by handlers, and per-job time limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import tenacity

from batchworks import (
    Job,
    JobState,
    LeaseLost,
    PayloadError,
    RetryPolicy,
    Runner,
)
from batchworks.backends.base import Backend

FAST = {"heartbeat_interval": 0.05, "prune_after": 5.0, "poll_interval": 0.05}


class TestResume:
    async def test_a_retry_resumes_from_the_last_checkpoint(self, backend: Backend) -> None:
        seen: list[Any] = []

        async def handler(job: Job) -> int:
            seen.append(job.checkpoint)
            start = job.checkpoint["offset"] if job.checkpoint else 0
            for offset in range(start, 10, 2):
                if job.attempt == 1 and offset == 6:
                    raise ConnectionError("source went away")
                await job.save_checkpoint({"offset": offset + 2})
                assert job.checkpoint == {"offset": offset + 2}
            return start

        job_id = await backend.enqueue("q", None)
        policy = RetryPolicy(wait=tenacity.wait_none())
        await Runner(backend, {"q": handler}, retry=policy).run_until_empty(max_delay=1)

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.result, record.checkpoint) == (
            JobState.SUCCEEDED,
            6,
            {"offset": 10},
        )
        assert seen == [None, {"offset": 6}]

    async def test_graceful_shutdown_mid_job_resumes_without_using_an_attempt(
        self, backend: Backend
    ) -> None:
        halfway = asyncio.Event()

        async def slow(job: Job) -> None:
            await job.save_checkpoint({"offset": 500})
            halfway.set()
            await asyncio.Event().wait()  # the rest would take long: shutdown cancels it

        job_id = await backend.enqueue("q", None)
        first = Runner(backend, {"q": slow}, shutdown_timeout=0.05, **FAST)
        task = asyncio.create_task(first.run())
        async with asyncio.timeout(15):  # a hang net
            await halfway.wait()
        first.stop()
        async with asyncio.timeout(15):  # a hang net
            await task

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts, record.checkpoint) == (
            JobState.QUEUED,
            0,
            {"offset": 500},
        )

        resumed: list[Any] = []

        async def finish(job: Job) -> None:
            resumed.append((job.attempt, job.checkpoint))

        await Runner(backend, {"q": finish}).run_until_empty()
        assert resumed == [(1, {"offset": 500})]


class TestFencing:
    async def test_a_stale_worker_cannot_overwrite_the_new_owners_checkpoint(
        self, backend: Backend
    ) -> None:
        job_id = await backend.enqueue("q", None)
        stale = await backend.register_worker("w1", ["q"])
        assert len(await backend.claim(stale, ["q"], 1, lease=30, max_attempts=5)) == 1
        # A restart of w1 takes the job back; a new owner claims it and saves progress.
        owner = await backend.register_worker("w1", ["q"])
        assert len(await backend.claim(owner, ["q"], 1, lease=30, max_attempts=5)) == 1
        await backend.save_checkpoint(owner, job_id, {"offset": 700}, lease=30)

        with pytest.raises(LeaseLost, match="nothing was saved"):
            await backend.save_checkpoint(stale, job_id, {"offset": 100}, lease=30)
        record = await backend.get_job(job_id)
        assert record is not None and record.checkpoint == {"offset": 700}

    async def test_saving_a_checkpoint_extends_the_lease(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", None)
        worker = await backend.register_worker("w1", ["q"])
        # A lease of 0 s has passed by the next call; the checkpoint's lease of 60 s has not.
        assert len(await backend.claim(worker, ["q"], 1, lease=0, max_attempts=5)) == 1
        await backend.save_checkpoint(worker, job_id, {"offset": 1}, lease=60)

        assert await backend.recover(prune_after=60) == 0
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.errors) == (JobState.RUNNING, ())

    async def test_handler_sees_lease_lost_when_its_job_moved_on(self, backend: Backend) -> None:
        saving = asyncio.Event()
        may_save = asyncio.Event()
        raised = asyncio.Event()

        async def handler(job: Job) -> None:
            saving.set()
            await may_save.wait()
            try:
                await job.save_checkpoint({"offset": 1})
            except LeaseLost:
                raised.set()
                raise

        job_id = await backend.enqueue("q", None, max_attempts=3)
        runner = Runner(
            backend, {"q": handler}, worker_name="w1", heartbeat_interval=30, prune_after=120
        )
        async with runner:
            async with asyncio.timeout(15):  # a hang net
                await saving.wait()
            await backend.register_worker("w1", ["q"])  # a restart took the job over
            may_save.set()
            async with asyncio.timeout(15):  # a hang net
                await raised.wait()
        record = await backend.get_job(job_id)
        assert record is not None and record.checkpoint is None
        assert runner.report.lost == 1


class TestValidation:
    async def test_checkpoints_are_validated_like_payloads(self, backend: Backend) -> None:
        errors: list[BaseException] = []

        async def handler(job: Job) -> None:
            for bad in ({"at": object()}, float("nan"), "nul\x00"):
                try:
                    await job.save_checkpoint(bad)
                except PayloadError as exc:
                    errors.append(exc)

        job_id = await backend.enqueue("q", None)
        await Runner(backend, {"q": handler}).run_until_empty()
        assert [type(exc) for exc in errors] == [PayloadError] * 3
        assert "checkpoint of job" in str(errors[0])
        record = await backend.get_job(job_id)
        assert record is not None and record.checkpoint is None


class TestPerJobTimeout:
    async def test_a_jobs_own_timeout_wins_over_the_runners(self, backend: Backend) -> None:
        async def handler(job: Job) -> str:
            await asyncio.sleep(job.payload)
            return "done"

        quick = await backend.enqueue("q", 5, timeout=0.05, max_attempts=1)
        patient = await backend.enqueue("q", 0.2, timeout=10)
        await Runner(backend, {"q": handler}, job_timeout=0.1).run_until_empty()

        quick_record = await backend.get_job(quick)
        patient_record = await backend.get_job(patient)
        assert quick_record is not None and patient_record is not None
        assert (quick_record.state, quick_record.errors[0]["type"]) == (
            JobState.FAILED,
            "TimeoutError",
        )
        assert (patient_record.state, patient_record.timeout) == (JobState.SUCCEEDED, 10.0)

    async def test_job_record_shows_its_limits(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", None, timeout=2.5, max_attempts=7)
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.timeout, record.max_attempts) == (2.5, 7)

    @pytest.mark.parametrize("limit", [0, -1, float("inf"), "5"])
    async def test_impossible_timeouts_are_refused(self, backend: Backend, limit: Any) -> None:
        with pytest.raises(ValueError, match="timeout"):
            await backend.enqueue("q", None, timeout=limit)
        assert await backend.stats() == {}
