"""Contract tests of the backend calls behind the operator commands (``batchworks purge
--dry-run``, ``health``, ``jobs list``'s attempts, ``run``'s pending lines), on every backend."""

from __future__ import annotations

from datetime import timedelta

from batchworks import JobState
from batchworks.backends.base import Backend
from batchworks.outcome import Outcome, OutcomeKind

LEASE = 30.0  # seconds


async def finish(backend: Backend, queue: str, kinds: list[OutcomeKind]) -> list[int]:
    """Enqueue, claim and settle one job per kind in ``queue``."""
    ids = await backend.enqueue_many(queue, [f"job {i}" for i in range(len(kinds))])
    worker = await backend.register_worker(f"w-{queue}", [queue])
    claimed = await backend.claim(worker, [queue], len(ids), lease=LEASE, max_attempts=1)
    assert sorted(job.id for job in claimed) == ids
    outcomes = [Outcome(job_id, kind, queue=queue) for job_id, kind in zip(ids, kinds, strict=True)]
    assert await backend.settle(worker, outcomes) == []
    return ids


class TestPurgeable:
    async def test_counts_what_purge_would_delete_and_deletes_nothing(
        self, backend: Backend
    ) -> None:
        done, failed = OutcomeKind.SUCCEEDED, OutcomeKind.FAILED
        ids = await finish(backend, "a", [done, done, failed]) + await finish(backend, "b", [done])
        await backend.enqueue("a", "still queued")

        assert await backend.purgeable(0) == {
            "a": {"succeeded": 2, "failed": 1},
            "b": {"succeeded": 1},
        }
        assert await backend.purgeable(timedelta(hours=1)) == {}
        for job_id in ids:
            assert await backend.get_job(job_id) is not None
        assert await backend.purge(0) == 4
        assert await backend.purgeable(0) == {}


class TestPendingMigrations:
    async def test_a_migrated_backend_has_none(self, backend: Backend) -> None:
        assert await backend.pending_migrations() == []


class TestPolicyMaxAttempts:
    async def test_the_latest_live_worker_of_each_queue_gives_its_figure(
        self, backend: Backend
    ) -> None:
        assert await backend.policy_max_attempts(["q"]) == {}
        old = await backend.register_worker("w1", ["q", "r"], max_attempts=4)
        await backend.register_worker("w2", ["q"], max_attempts=9)
        await backend.register_worker("w3", ["s"])  # recorded no figure
        assert await backend.policy_max_attempts(["q", "r", "s", "t"]) == {"q": 9, "r": 4}
        await backend.unregister_worker(old)  # a stopped worker still tells, after live ones
        assert await backend.policy_max_attempts(["r"]) == {"r": 4}


class TestQueuedLater:
    async def test_overview_counts_queued_jobs_not_due_yet(self, backend: Backend) -> None:
        await backend.enqueue_many("q", ["now", "now"])
        await backend.enqueue("q", "later", delay=3600)
        overview = (await backend.overview())["q"]
        assert overview.counts[JobState.QUEUED.value] == 3
        assert overview.queued_later == 1
