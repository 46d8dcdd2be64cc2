"""The batch calls of :class:`~batchworks.PostgresBackend` (#16), a mixin so that backend.py
keeps to the jobs. Each is one statement of :mod:`.queries` (enqueue_batch of no member and
cancel_batch may take two); the counters themselves are kept by the statements that change
the members (BATCH_DELTAS and BATCH_FINISH there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from batchworks import _json
from batchworks._checks import positive_int
from batchworks.backends._waiters import BatchWaiters
from batchworks.backends.base import BatchSpec, EnqueueOptions
from batchworks.backends.postgres._reads import record
from batchworks.batch import Batch, BatchFailure, BatchRecord, BatchState, Callback
from batchworks.errors import BackendError, BatchClosed, BatchNotFound
from batchworks.job import JobRecord

if TYPE_CHECKING:
    from batchworks.backends.postgres._listener import Listener
    from batchworks.backends.postgres.backend import Queries

__all__ = ["PostgresBatchCalls"]

logger = logging.getLogger(__name__)

#: the prefix of a wait_batch() wake-up on the finished channel (a job's is its bare id)
BATCH_NOTICE = "batch "
CANCEL_PASSES = 20  # cancel_batch runs again while it skipped members another statement held
CANCEL_PAUSE = 0.05  # seconds between those passes


class PostgresBatchCalls:
    """Needs the backend's statements, its fetch helpers and its listener."""

    _q: Queries
    _listener: Listener
    _batch_waiters: BatchWaiters

    if TYPE_CHECKING:  # what the backend class provides (not here: it would shadow it)

        async def _fetch(
            self, query: str, *args: Any, connection: Any = None
        ) -> list[asyncpg.Record]:
            raise NotImplementedError

        def _require_pool(self) -> asyncpg.Pool:
            raise NotImplementedError

        def _wait_recheck(self) -> float:
            raise NotImplementedError

    async def _insert_batch(
        self,
        options: EnqueueOptions,
        payloads: str,
        spec: BatchSpec,
        *,
        close: bool,
        connection: Any,
        carrier: dict[str, str] | None,
    ) -> Batch:
        args = (
            *member_args(options, payloads, carrier),
            spec.name,
            spec.on_complete,
            spec.on_success,
            close,
        )
        if payloads != "[]" or not close:
            return _batch(await self._fetch(self._q.enqueue_batch, *args, connection=connection))
        # No member: closed by CLOSE_BATCH in the same transaction, which finishes it and
        # enqueues its callbacks at once.
        async with contextlib.AsyncExitStack() as stack:
            conn = connection
            if conn is None:
                conn = await stack.enter_async_context(self._require_pool().acquire())
            await stack.enter_async_context(conn.transaction())
            batch = _batch(await self._fetch(self._q.enqueue_batch, *args, connection=conn))
            await self._fetch(self._q.close_batch, batch.id, connection=conn)
            return batch

    async def _add_members(
        self,
        batch_id: int,
        options: EnqueueOptions,
        payloads: str,
        *,
        connection: Any,
        carrier: dict[str, str] | None,
    ) -> list[int]:
        args = (*member_args(options, payloads, carrier), batch_id)
        rows = await self._fetch(self._q.add_to_batch, *args, connection=connection)
        head = next(row for row in rows if row["took"] is not None)
        if not head["took"]:
            if head["state"] is None:
                raise BatchNotFound(batch_id)
            raise BatchClosed(batch_id, head["state"])
        return sorted(row["id"] for row in rows if row["id"] is not None)

    async def _batch_queue(self, batch_id: int, connection: Any) -> str:
        rows = await self._fetch(self._q.batch_queue, batch_id, connection=connection)
        if not rows:
            raise BatchNotFound(batch_id)
        return str(rows[0]["queue"])

    async def _batch_page(self, batch_id: int, after: int, limit: int) -> list[JobRecord]:
        rows = await self._fetch(self._q.batch_page, batch_id, after, limit)
        return [record(row) for row in rows]

    async def get_batch(self, batch_id: int) -> BatchRecord | None:
        """The batch with its counters as they stand (one snapshot), or None."""
        rows = await self._fetch(self._q.get_batch, batch_id)
        return _batch_record(rows[0]) if rows else None

    async def _found(self, batch_id: int) -> BatchRecord:
        record = await self.get_batch(batch_id)
        if record is None:
            raise BatchNotFound(batch_id)
        return record

    async def wait_batch(self, batch_id: int, timeout: float | None = None) -> BatchRecord:
        """Return the batch once it is done; see :meth:`Backend.wait_batch`. The statement
        that finishes a batch sends a NOTIFY for it (one a batch: no mark is needed)."""
        self._listener.start()
        return await self._batch_waiters.wait(
            batch_id, timeout, fetch=self.get_batch, recheck=self._wait_recheck
        )

    def _batch_finished(self, payload: str) -> bool:
        """Wake the waiters of a batch named by a NOTIFY; False if it names no batch."""
        if not payload.startswith(BATCH_NOTICE):
            return False
        if self._batch_waiters:
            with contextlib.suppress(ValueError):
                self._batch_waiters.wake(int(payload[len(BATCH_NOTICE) :]))
        return True

    async def close_batch(self, batch_id: int) -> BatchRecord:
        """Close the batch; it finishes (callbacks enqueued) once no member is pending."""
        rows = await self._fetch(self._q.close_batch, batch_id)
        if not rows[0]["found"]:
            raise BatchNotFound(batch_id)
        return await self._found(batch_id)

    async def cancel_batch(self, batch_id: int) -> BatchRecord:
        """Cancel the queued members, ask the running ones to stop, close the batch."""
        for _ in range(CANCEL_PASSES):
            rows = await self._fetch(self._q.cancel_batch, batch_id)
            if not rows[0]["found"]:
                raise BatchNotFound(batch_id)
            if rows[0]["left"] <= 0:
                return await self._found(batch_id)
            # Members another statement held (a claim taking them, a settle ending them) were
            # skipped; those statements commit in milliseconds.
            await asyncio.sleep(CANCEL_PAUSE)
        raise BackendError(
            f"batch {batch_id}: some members stayed locked through {CANCEL_PASSES} passes of "
            "cancel_batch; the batch is cancelled, call cancel_batch again for the rest"
        )

    async def batches(self, *, limit: int = 20) -> list[BatchRecord]:
        """The newest batches first."""
        positive_int(limit, "limit")
        return [_batch_record(row) for row in await self._fetch(self._q.list_batches, limit)]

    async def batch_failures(self, batch_id: int, *, limit: int = 10) -> list[BatchFailure]:
        """The failed members grouped by their last error's type and message."""
        positive_int(limit, "limit")
        rows = await self._fetch(self._q.batch_failures, batch_id, limit)
        return [
            BatchFailure(
                type=row["type"] or "?",
                message=row["message"] or "",
                count=row["n"],
                example=row["example"],
            )
            for row in rows
        ]

    async def open_batches(self) -> int:
        """How many batches are not done (open, or with members pending)."""
        rows = await self._fetch(self._q.open_batches)
        return int(rows[0][0])


def member_args(
    options: EnqueueOptions, payloads: str, carrier: dict[str, str] | None
) -> tuple[Any, ...]:
    """$1-$8 of ENQUEUE_PLAIN, ENQUEUE, ENQUEUE_BATCH and ADD_TO_BATCH."""
    return (
        options.queue,
        payloads,
        options.priority,
        options.run_at,
        options.delay,
        options.max_attempts,
        options.timeout,
        None if carrier is None else json.dumps(carrier),
    )


def _batch(rows: list[asyncpg.Record]) -> Batch:
    """ENQUEUE_BATCH's rows: the member ids, a NULL for its NOTIFY, -id for the batch."""
    ids = [row["id"] for row in rows if row["id"] is not None]
    [batch_id] = [-i for i in ids if i < 0]
    return Batch(batch_id, sorted(i for i in ids if i > 0))


def _batch_record(row: asyncpg.Record) -> BatchRecord:
    running = row["running"]
    pending = row["total"] - row["succeeded"] - row["failed"] - row["cancelled"]
    return BatchRecord(
        id=row["id"],
        name=row["name"],
        state=BatchState(row["state"]),
        total=row["total"],
        queued=pending - running,
        running=running,
        succeeded=row["succeeded"],
        failed=row["failed"],
        cancelled=row["cancelled"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        on_complete=Callback.from_spec(_json.loads_optional(row["on_complete"])),
        on_success=Callback.from_spec(_json.loads_optional(row["on_success"])),
        complete_job=row["complete_job"],
        success_job=row["success_job"],
    )
