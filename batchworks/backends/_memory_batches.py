"""The memory backend's batches: counters, states and callbacks, with the rules of the
PostgreSQL statements (queries.py's BATCH_* parts) in Python.

:class:`MemoryBatches` is told of every member that enters or leaves a final state
(:meth:`~MemoryBatches.ended`, :meth:`~MemoryBatches.reopened`) in the same step as the
member's own change, so the counters are exact and the callbacks are enqueued exactly once,
by the step that leaves a closed batch with no pending member.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from batchworks import _json
from batchworks._checks import positive_int
from batchworks.backends._waiters import BatchWaiters
from batchworks.backends.base import BatchSpec, EnqueueOptions
from batchworks.batch import Batch, BatchFailure, BatchRecord, BatchState, Callback
from batchworks.errors import BatchClosed, BatchNotFound
from batchworks.job import JobRecord, JobState

__all__ = ["MemoryBatchCalls", "MemoryBatches"]

#: enqueue a callback's job: (the callback as stored, its payload, the batch's trace context)
EnqueueCallback = Callable[[dict[str, Any], dict[str, Any], dict[str, str] | None], int]

_COUNTED = {
    JobState.SUCCEEDED: "succeeded",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}


@dataclass(slots=True, eq=False)
class _Batch:
    id: int
    name: str | None
    queue: str
    state: BatchState
    created_at: float
    on_complete: dict[str, Any] | None
    on_success: dict[str, Any] | None
    trace_context: dict[str, str] | None
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    finished_at: float | None = None
    complete_job: int | None = None
    success_job: int | None = None
    #: member ids in id order (ids only grow): for the paged results and cancel_batch
    members: list[int] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.total - self.succeeded - self.failed - self.cancelled


class MemoryBatches:
    """Every batch of one :class:`~batchworks.MemoryBackend`."""

    def __init__(self, clock: Callable[[], float], enqueue: EnqueueCallback) -> None:
        self._clock = clock
        self._enqueue = enqueue
        self._batches: dict[int, _Batch] = {}
        self._next_id = 1
        self.waiters = BatchWaiters()

    def __len__(self) -> int:
        return len(self._batches)

    def create(self, queue: str, spec: BatchSpec, trace_context: dict[str, str] | None) -> int:
        batch = _Batch(
            id=self._next_id,
            name=spec.name,
            queue=queue,
            state=BatchState.OPEN,
            created_at=self._clock(),
            on_complete=None if spec.on_complete is None else _json.loads(spec.on_complete),
            on_success=None if spec.on_success is None else _json.loads(spec.on_success),
            trace_context=trace_context,
        )
        self._next_id += 1
        self._batches[batch.id] = batch
        return batch.id

    def get(self, batch_id: int) -> _Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise BatchNotFound(batch_id)
        return batch

    def find(self, batch_id: int) -> _Batch | None:
        return self._batches.get(batch_id)

    def addable(self, batch_id: int) -> _Batch:
        """The batch, if it takes members now (ADD_TO_BATCH's condition)."""
        batch = self.get(batch_id)
        if batch.state is BatchState.OPEN or (
            batch.state is BatchState.CLOSED and batch.pending > 0
        ):
            return batch
        raise BatchClosed(batch_id, batch.state.value)

    def added(self, batch: _Batch, job_ids: list[int]) -> None:
        batch.members.extend(job_ids)
        batch.total += len(job_ids)

    def ended(self, batch_id: int, state: JobState) -> None:
        """A member reached the final ``state``."""
        batch = self._batches.get(batch_id)
        if batch is None:  # purged meanwhile: nothing to count
            return
        name = _COUNTED[state]
        setattr(batch, name, getattr(batch, name) + 1)
        self._settle(batch)

    def reopened(self, batch_id: int) -> None:
        """A failed member was queued again (retry_failed)."""
        batch = self._batches.get(batch_id)
        if batch is None:
            return
        batch.failed -= 1
        self._settle(batch)

    def close(self, batch_id: int) -> _Batch:
        batch = self.get(batch_id)
        if batch.state is BatchState.OPEN:
            batch.state = BatchState.CLOSED
            self._settle(batch)
        return batch

    def cancelling(self, batch_id: int) -> _Batch:
        """Mark the batch cancelled before its members are (their ends settle it)."""
        batch = self.get(batch_id)
        if batch.state is not BatchState.FINISHED:
            batch.state = BatchState.CANCELLED
        return batch

    def settle(self, batch: _Batch) -> None:
        self._settle(batch)

    def _settle(self, batch: _Batch) -> None:
        """After any change: finished (and the callbacks, once each) when closed with no
        pending member; back to closed when a retry made one pending again."""
        if batch.state is BatchState.OPEN:
            return
        if batch.pending:
            if batch.state is BatchState.FINISHED:
                batch.state = BatchState.CLOSED
            batch.finished_at = None
            return
        if batch.state is BatchState.CLOSED:
            batch.state = BatchState.FINISHED
        if batch.finished_at is None:
            batch.finished_at = self._clock()
        if batch.on_complete is not None and batch.complete_job is None:
            batch.complete_job = self._fire(batch, "on_complete", batch.on_complete)
        if (
            batch.on_success is not None
            and batch.success_job is None
            and batch.succeeded == batch.total
        ):
            batch.success_job = self._fire(batch, "on_success", batch.on_success)
        if self.waiters:
            self.waiters.wake(batch.id)

    def _fire(self, batch: _Batch, which: str, spec: dict[str, Any]) -> int:
        payload = {"batch_id": batch.id, "callback": which, "payload": spec.get("payload")}
        return self._enqueue(spec, payload, batch.trace_context)

    def record(self, batch: _Batch, running: int) -> BatchRecord:
        return BatchRecord(
            id=batch.id,
            name=batch.name,
            state=batch.state,
            total=batch.total,
            queued=batch.pending - running,
            running=running,
            succeeded=batch.succeeded,
            failed=batch.failed,
            cancelled=batch.cancelled,
            created_at=_dt(batch.created_at),
            finished_at=None if batch.finished_at is None else _dt(batch.finished_at),
            on_complete=Callback.from_spec(batch.on_complete),
            on_success=Callback.from_spec(batch.on_success),
            complete_job=batch.complete_job,
            success_job=batch.success_job,
        )

    def open_count(self) -> int:
        return sum(1 for batch in self._batches.values() if batch.finished_at is None)

    def newest(self, limit: int) -> list[_Batch]:
        return [self._batches[i] for i in sorted(self._batches, reverse=True)[:limit]]

    def purge(self, before: float) -> None:
        """Drop batches done before ``before`` (PURGE's rule)."""
        for batch_id in [
            b.id
            for b in self._batches.values()
            if b.finished_at is not None and b.finished_at < before
        ]:
            del self._batches[batch_id]

    def done_or_none(self, batch_id: int | None) -> bool:
        """Whether a member of ``batch_id`` may be purged: its batch is done, or gone."""
        if batch_id is None:
            return True
        batch = self._batches.get(batch_id)
        return batch is None or batch.finished_at is not None


def _dt(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


class MemoryBatchCalls:
    """The batch calls of :class:`~batchworks.MemoryBackend` (a mixin: it keeps memory.py to
    the jobs). It needs the backend's rows and the few methods declared here."""

    _rows: dict[int, Any]
    _running: dict[int, Any]
    _batch_book: MemoryBatches
    _clock: Callable[[], float]

    if TYPE_CHECKING:  # what the backend class provides (not here: it would shadow it)

        def _check_open(self) -> None:
            raise NotImplementedError

        def _insert_row(
            self,
            options: EnqueueOptions,
            payload: str,
            dedupe_key: str | None,
            trace_context: dict[str, str] | None,
            *,
            schedule: str | None = None,
            scheduled_for: datetime | None = None,
            batch_id: int | None = None,
            concurrency_key: str | None = None,
        ) -> int:
            raise NotImplementedError

        def _finish(self, row: Any, state: JobState, now: float) -> None:
            raise NotImplementedError

        def _encode(self, value: Any, what: str) -> str:
            raise NotImplementedError

        async def get_job(self, job_id: int) -> JobRecord | None:
            raise NotImplementedError

    async def _insert_batch(
        self,
        options: EnqueueOptions,
        payloads: list[str],
        spec: BatchSpec,
        *,
        close: bool,
        connection: Any,
        carrier: dict[str, str] | None,
    ) -> Batch:
        batch_id = self._batch_book.create(options.queue, spec, carrier)
        ids = self._add_rows(self._batch_book.get(batch_id), options, payloads, carrier)
        if close:
            self._batch_book.close(batch_id)
        return Batch(batch_id, ids)

    async def _add_members(
        self,
        batch_id: int,
        options: EnqueueOptions,
        payloads: list[str],
        *,
        connection: Any,
        carrier: dict[str, str] | None,
    ) -> list[int]:
        return self._add_rows(self._batch_book.addable(batch_id), options, payloads, carrier)

    def _add_rows(
        self,
        batch: Any,
        options: EnqueueOptions,
        payloads: list[str],
        carrier: dict[str, str] | None,
    ) -> list[int]:
        ids = [
            self._insert_row(options, text, None, carrier, batch_id=batch.id) for text in payloads
        ]
        self._batch_book.added(batch, ids)
        return ids

    async def _batch_queue(self, batch_id: int, connection: Any) -> str:
        return str(self._batch_book.get(batch_id).queue)

    async def _batch_page(self, batch_id: int, after: int, limit: int) -> list[JobRecord]:
        batch = self._batch_book.get(batch_id)
        start = bisect.bisect_right(batch.members, after)
        records = []
        for job_id in batch.members[start:]:
            record = await self.get_job(job_id)
            if record is not None:  # purged
                records.append(record)
                if len(records) >= limit:
                    break
        return records

    def _running_of(self, batch_id: int) -> int:
        return sum(1 for row in self._running.values() if row.batch_id == batch_id)

    async def get_batch(self, batch_id: int) -> BatchRecord | None:
        """The batch with its counters as they stand, or None."""
        batch = self._batch_book.find(batch_id)
        return None if batch is None else self._batch_book.record(batch, self._running_of(batch_id))

    async def wait_batch(self, batch_id: int, timeout: float | None = None) -> BatchRecord:
        """Return the batch once it is done; woken by the step that finishes it."""
        return await self._batch_book.waiters.wait(
            batch_id, timeout, fetch=self.get_batch, recheck=lambda: None
        )

    async def close_batch(self, batch_id: int) -> BatchRecord:
        """Close the batch; it finishes once no member is pending."""
        self._check_open()
        self._batch_book.close(batch_id)
        record = await self.get_batch(batch_id)
        assert record is not None
        return record

    async def cancel_batch(self, batch_id: int) -> BatchRecord:
        """Cancel the queued members now, ask the running ones to stop; closes the batch."""
        self._check_open()
        batch = self._batch_book.cancelling(batch_id)
        now = self._clock()
        for job_id in batch.members:
            row = self._rows.get(job_id)
            if row is None:
                continue
            if row.state is JobState.QUEUED:
                self._finish(row, JobState.CANCELLED, now)
            elif row.state is JobState.RUNNING:
                row.cancel_requested = True
        self._batch_book.settle(batch)  # finishes it now when no member was running
        record = await self.get_batch(batch_id)
        assert record is not None
        return record

    async def batches(self, *, limit: int = 20) -> list[BatchRecord]:
        """The newest batches first."""
        positive_int(limit, "limit")
        return [
            self._batch_book.record(batch, self._running_of(batch.id))
            for batch in self._batch_book.newest(limit)
        ]

    async def batch_failures(self, batch_id: int, *, limit: int = 10) -> list[BatchFailure]:
        """The failed members grouped by their last error's type and message."""
        batch = self._batch_book.get(batch_id)
        groups: dict[tuple[str, str], list[int]] = {}
        for job_id in batch.members:
            row = self._rows.get(job_id)
            if row is not None and row.state is JobState.FAILED:
                last = row.errors[-1] if row.errors else {"type": "?", "message": ""}
                groups.setdefault((last["type"], last["message"]), []).append(job_id)
        ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0]))
        return [
            BatchFailure(type=kind, message=message, count=len(ids), example=min(ids))
            for (kind, message), ids in ordered[:limit]
        ]

    async def open_batches(self) -> int:
        """How many batches are not done (open, or closed with members pending)."""
        return self._batch_book.open_count()

    def _enqueue_callback(
        self, spec: dict[str, Any], payload: dict[str, Any], carrier: dict[str, str] | None
    ) -> int:
        options = EnqueueOptions.build(
            spec["queue"],
            delay=None,
            run_at=None,
            priority=spec.get("priority", 0),
            max_attempts=spec.get("max_attempts"),
        )
        text = self._encode(payload, f"payload of the {payload['callback']} callback")
        return self._insert_row(options, text, None, carrier)
