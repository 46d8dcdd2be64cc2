"""Contract tests of enqueue and enqueue_many on every backend (the ``backend`` fixture): ids,
stored options, payload copies and dedupe keys."""

from __future__ import annotations

from typing import Any

from batchworks import JobState
from batchworks.backends.base import Backend
from batchworks.outcome import Outcome, OutcomeKind
from tests.support.calls import (
    claim_one,
    state,
    succeeded,
)


class TestEnqueue:
    async def test_enqueue_returns_a_new_id_each_time(self, backend: Backend) -> None:
        ids = [await backend.enqueue("q", {"n": n}) for n in range(5)]

        assert all(isinstance(job_id, int) for job_id in ids)
        assert len(set(ids)) == 5

    async def test_enqueued_job_is_queued_with_its_payload(self, backend: Backend) -> None:
        job_id = await backend.enqueue("emails", {"to": "a@example.com"})

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.id, record.queue, record.payload) == (
            job_id,
            "emails",
            {"to": "a@example.com"},
        )
        assert (record.state, record.attempts, record.errors, record.result) == (
            JobState.QUEUED,
            0,
            (),
            None,
        )

    async def test_enqueue_many_returns_ids_in_payload_order(self, backend: Backend) -> None:
        ids = await backend.enqueue_many("q", [{"n": n} for n in range(20)])

        assert len(set(ids)) == 20
        records = [await backend.get_job(job_id) for job_id in ids]
        assert [record.payload if record else None for record in records] == [
            {"n": n} for n in range(20)
        ]

    async def test_enqueue_many_of_nothing_adds_nothing(self, backend: Backend) -> None:
        assert await backend.enqueue_many("q", []) == []
        assert await backend.stats() == {}

    async def test_max_attempts_is_stored_with_the_job(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {}, max_attempts=3)

        record = await backend.get_job(job_id)
        assert record is not None and record.max_attempts == 3

    async def test_enqueue_many_stores_max_attempts_and_priority(self, backend: Backend) -> None:
        ids = await backend.enqueue_many("q", [1, 2], max_attempts=2, priority=7)

        for job_id in ids:
            record = await backend.get_job(job_id)
            assert record is not None
            assert (record.max_attempts, record.priority) == (2, 7)

    async def test_get_job_of_an_unknown_id_is_none(self, backend: Backend) -> None:
        await backend.enqueue("q", {})

        assert await backend.get_job(987_654_321) is None

    async def test_migrate_is_idempotent(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})

        await backend.migrate()

        assert await state(backend, job_id) is JobState.QUEUED


class TestPayloadCopies:
    async def test_mutating_the_original_after_enqueue_changes_nothing(
        self, backend: Backend
    ) -> None:
        payload: dict[str, Any] = {"items": [1, 2], "meta": {"k": "v"}}
        job_id = await backend.enqueue("q", payload)

        payload["items"].append(3)
        payload["meta"]["k"] = "changed"
        payload["new"] = True

        record = await backend.get_job(job_id)
        assert record is not None
        assert record.payload == {"items": [1, 2], "meta": {"k": "v"}}

    async def test_tuples_come_back_as_lists(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {"pair": (1, 2), "nested": [(3, (4,))]})

        record = await backend.get_job(job_id)
        assert record is not None
        assert record.payload == {"pair": [1, 2], "nested": [[3, [4]]]}
        assert type(record.payload["pair"]) is list

    async def test_mutating_a_returned_record_changes_nothing_stored(
        self, backend: Backend
    ) -> None:
        job_id = await backend.enqueue("q", {"items": [1]})
        record = await backend.get_job(job_id)
        assert record is not None

        record.payload["items"].append(2)

        again = await backend.get_job(job_id)
        assert again is not None and again.payload == {"items": [1]}

    async def test_mutating_a_claimed_payload_changes_nothing_stored(
        self, backend: Backend
    ) -> None:
        # A handler that edits job.payload and then fails must not change what its retry sees.
        job_id = await backend.enqueue("q", {"items": [1]})
        worker = await backend.register_worker("w1", ["q"])
        job = await claim_one(backend, worker)

        job.payload["items"].append(2)
        await backend.settle(worker, [Outcome(job_id, OutcomeKind.RETRIED, 0.0)])

        retry = await claim_one(backend, worker)
        assert retry.payload == {"items": [1]}


class TestDedupe:
    async def test_key_of_a_queued_job_returns_its_id(self, backend: Backend) -> None:
        first = await backend.enqueue("q", {"v": 1}, dedupe_key="order-1")

        second = await backend.enqueue("q", {"v": 2}, dedupe_key="order-1")

        assert second == first
        assert (await backend.stats())["q"]["queued"] == 1
        record = await backend.get_job(first)
        assert record is not None
        assert (record.payload, record.dedupe_key) == ({"v": 1}, "order-1")

    async def test_key_of_a_running_job_returns_its_id(self, backend: Backend) -> None:
        first = await backend.enqueue("q", {}, dedupe_key="order-1")
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        assert await backend.enqueue("q", {}, dedupe_key="order-1") == first
        assert (await backend.stats())["q"]["queued"] == 0

    async def test_key_of_a_finished_job_adds_a_new_job(self, backend: Backend) -> None:
        first = await backend.enqueue("q", {}, dedupe_key="order-1")
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        await backend.settle(worker, [succeeded(first)])

        second = await backend.enqueue("q", {}, dedupe_key="order-1")

        assert second != first
        assert await state(backend, second) is JobState.QUEUED

    async def test_key_of_a_cancelled_job_adds_a_new_job(self, backend: Backend) -> None:
        first = await backend.enqueue("q", {}, dedupe_key="order-1")
        await backend.cancel(first)

        assert await backend.enqueue("q", {}, dedupe_key="order-1") != first

    async def test_same_key_in_another_queue_adds_a_new_job(self, backend: Backend) -> None:
        first = await backend.enqueue("a", {}, dedupe_key="k")

        assert await backend.enqueue("b", {}, dedupe_key="k") != first

    async def test_enqueue_many_dedupes_per_payload(self, backend: Backend) -> None:
        existing = await backend.enqueue("q", "x", dedupe_key="x")

        ids = await backend.enqueue_many("q", ["x", "y", None], dedupe_keys=["x", "y", None])

        assert ids[0] == existing
        assert len(set(ids)) == 3
        assert (await backend.stats())["q"]["queued"] == 3
