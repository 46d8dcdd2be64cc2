"""Retention (#18): finished jobs are purged in small batches, the longest finished first, by a
runner's retention purge; unfinished jobs and recent history stay. On every backend."""

from __future__ import annotations

from datetime import timedelta

import pytest

from batchworks import ConfigurationError, Job, JobState, MemoryBackend, Runner
from batchworks.backends.base import Backend
from batchworks.outcome import Outcome, OutcomeKind
from tests.conftest import eventually

LEASE = 30.0  # seconds
RETENTION = 0.3  # seconds: a round every 0.15 s


async def finish_one_by_one(backend: Backend, queue: str, count: int) -> list[int]:
    """Enqueue ``count`` jobs and finish them one settle after the other, oldest id first."""
    ids = await backend.enqueue_many(queue, [{"n": i} for i in range(count)])
    worker = await backend.register_worker(f"w-{queue}", [queue])
    for job_id in ids:
        [job] = await backend.claim(worker, [queue], 1, lease=LEASE, max_attempts=1)
        assert job.id == job_id
        kind = OutcomeKind.FAILED if job_id == ids[1] else OutcomeKind.SUCCEEDED
        assert await backend.settle(worker, [Outcome(job_id, kind, queue=queue)]) == []
    return ids


class TestPurgeBatch:
    async def test_deletes_at_most_limit_the_longest_finished_first(self, backend: Backend) -> None:
        ids = await finish_one_by_one(backend, "a", 5)
        queued = await backend.enqueue("a", "still queued")
        worker = await backend.register_worker("holder", ["b"])
        running = await backend.enqueue("b", "running")
        [held] = await backend.claim(worker, ["b"], 1, lease=LEASE, max_attempts=1)
        assert held.id == running

        assert await backend.purge_batch(timedelta(hours=1), limit=10) == 0  # all recent
        assert await backend.purge_batch(0, limit=2) == 2
        left = [await backend.get_job(job_id) for job_id in ids]
        assert [record is not None for record in left] == [False, False, True, True, True]

        assert await backend.purge_batch(0, limit=10) == 3
        assert await backend.purge_batch(0, limit=10) == 0
        for job_id, state in ((queued, JobState.QUEUED), (running, JobState.RUNNING)):
            record = await backend.get_job(job_id)
            assert record is not None and record.state is state

    async def test_refuses_a_limit_below_one(self, backend: Backend) -> None:
        with pytest.raises(ConfigurationError, match="limit must be an int >= 1"):
            await backend.purge_batch(0, limit=0)


async def succeed(job: Job) -> None:
    return None


class TestRunnerRetention:
    async def test_purges_jobs_finished_longer_ago_than_its_retention(
        self, backend: Backend
    ) -> None:
        later = await backend.enqueue("r", "not due", delay=3600)
        ids = await backend.enqueue_many("r", [{"n": i} for i in range(30)])

        async def gone() -> bool:
            return all([await backend.get_job(job_id) is None for job_id in ids])

        runner = Runner(backend, {"r": succeed}, retention=RETENTION, batch_size=7)
        async with runner:
            await eventually(gone, within=15.0, what="the finished jobs to be purged")
        record = await backend.get_job(later)
        assert record is not None and record.state is JobState.QUEUED
        assert runner.report.succeeded == 30

    @pytest.mark.parametrize("bad", [0, -1.0, "7d", True, timedelta(0)])
    def test_refuses_a_retention_that_is_no_duration(self, bad: object) -> None:
        with pytest.raises(ConfigurationError, match="retention must be"):
            Runner(MemoryBackend(), {"r": succeed}, retention=bad)  # type: ignore[arg-type]
