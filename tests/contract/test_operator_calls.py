"""Contract tests of the operator's backend calls on every backend (the ``backend`` fixture):
stats, retry_failed and purge."""

from __future__ import annotations

from datetime import timedelta

from batchworks import JobState
from batchworks.backends.base import Backend
from batchworks.outcome import Outcome, OutcomeKind
from tests.support.calls import (
    ALL_STATES,
    claim,
    claim_one,
    state,
    succeeded,
)


class TestStats:
    async def test_stats_of_an_empty_backend_is_empty(self, backend: Backend) -> None:
        assert await backend.stats() == {}

    async def test_stats_counts_every_state_per_queue(self, backend: Backend) -> None:
        done, running, failed, queued = await backend.enqueue_many("a", [1, 2, 3, 4])
        cancelled = await backend.enqueue("a", 5)
        await backend.enqueue("b", 6)
        worker = await backend.register_worker("w1", ["a"])
        await claim(backend, worker, 3, queues=("a",))
        await backend.settle(worker, [succeeded(done), Outcome(failed, OutcomeKind.FAILED)])
        await backend.cancel(cancelled)

        stats = await backend.stats()

        assert stats == {
            "a": {"queued": 1, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 1},
            "b": {"queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0},
        }
        assert all(set(counts) == ALL_STATES for counts in stats.values())
        assert (await state(backend, running), await state(backend, queued)) == (
            JobState.RUNNING,
            JobState.QUEUED,
        )


class TestRetryFailed:
    @staticmethod
    async def _failed(backend: Backend, queue: str, count: int) -> list[int]:
        ids = await backend.enqueue_many(queue, list(range(count)))
        worker = await backend.register_worker(f"failer-{queue}", [queue])
        await claim(backend, worker, count, queues=(queue,))
        await backend.settle(worker, [Outcome(job_id, OutcomeKind.FAILED) for job_id in ids])
        return ids

    async def test_failed_jobs_are_queued_again_with_fresh_attempts(self, backend: Backend) -> None:
        ids = await self._failed(backend, "q", 2)
        done = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        await backend.settle(worker, [succeeded(done)])

        assert await backend.retry_failed() == 2

        for job_id in ids:
            record = await backend.get_job(job_id)
            assert record is not None
            assert (record.state, record.attempts) == (JobState.QUEUED, 0)
        assert await state(backend, done) is JobState.SUCCEEDED
        assert sorted(job.id for job in await claim(backend, worker)) == sorted(ids)

    async def test_retry_failed_of_one_queue(self, backend: Backend) -> None:
        mine = await self._failed(backend, "a", 1)
        theirs = await self._failed(backend, "b", 1)

        assert await backend.retry_failed(queue="a") == 1

        assert await state(backend, mine[0]) is JobState.QUEUED
        assert await state(backend, theirs[0]) is JobState.FAILED

    async def test_retry_failed_by_ids(self, backend: Backend) -> None:
        first, second = await self._failed(backend, "q", 2)

        assert await backend.retry_failed(ids=[second]) == 1

        assert await state(backend, first) is JobState.FAILED
        assert await state(backend, second) is JobState.QUEUED

    async def test_retry_failed_with_nothing_failed_is_zero(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})

        assert await backend.retry_failed() == 0
        assert await state(backend, job_id) is JobState.QUEUED


class TestPurge:
    async def test_purge_keeps_recent_and_unfinished_jobs(self, backend: Backend) -> None:
        done, waiting = await backend.enqueue_many("q", [1, 2])
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        await backend.settle(worker, [succeeded(done)])

        assert await backend.purge(timedelta(hours=1)) == 0
        assert await backend.purge(3600.0) == 0

        assert await state(backend, done) is JobState.SUCCEEDED
        assert await state(backend, waiting) is JobState.QUEUED
