"""The memory backend's reads for operators' pages (the dashboard, ``jobs why``): filtered
keyset pages of jobs, counts and cancels by a :class:`JobFilter`, a job's place in its queue,
throughput. A mixin of :class:`~.memory.MemoryBackend`, kept apart so that memory.py does not
grow; the same semantics as the PostgreSQL backend's (``postgres/_reads.py``), held by
tests/contract/test_dashboard_reads.py.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from batchworks._checks import check_before, check_filters, check_throughput
from batchworks.backends.base import (
    AHEAD_CAP,
    JobFilter,
    JobSummary,
    QueuePosition,
    Throughput,
    empty_buckets,
)
from batchworks.job import JobRecord, JobState

if TYPE_CHECKING:
    from batchworks.backends.memory import Clock, _Row

__all__ = ["MemoryReads"]


class MemoryReads:
    """The operators' read calls of :class:`~.memory.MemoryBackend`."""

    _rows: dict[int, _Row]
    _clock: Clock

    if TYPE_CHECKING:  # MemoryBackend's

        async def get_job(self, job_id: int) -> JobRecord | None: ...

        async def cancel(self, job_id: int) -> bool: ...

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: str | None = None,
        limit: int = 50,
        schedule: str | None = None,
        error_type: str | None = None,
        before: int | None = None,
    ) -> list[JobRecord]:
        """The newest jobs first, filtered, paged by keyset (see :meth:`Backend.list_jobs`)."""
        filters = check_filters(queue, state, schedule, error_type)
        return await self._page(self._matching(*filters), check_before(before), limit)

    async def _page(self, rows: list[_Row], before: int | None, limit: int) -> list[JobRecord]:
        """The records of the newest ``limit`` of ``rows`` below id ``before``."""
        ids = sorted((row.id for row in rows if before is None or row.id < before), reverse=True)
        records = [await self.get_job(job_id) for job_id in ids[:limit]]
        return [record for record in records if record is not None]

    def _matching(
        self,
        queue: str | None,
        state: str | None,
        schedule: str | None,
        error: str | None,
        *,
        up_to: int | None = None,
        batch_id: int | None = None,
    ) -> list[_Row]:
        """The rows checked filters of ``list_jobs`` select (each None: no filter)."""
        return [
            row
            for row in self._rows.values()
            if (up_to is None or row.id <= up_to)
            and (batch_id is None or row.batch_id == batch_id)
            and _matches(row, queue, state, schedule, error)
        ]

    async def list_job_summaries(
        self, where: JobFilter | None = None, *, before: int | None = None, limit: int = 50
    ) -> list[JobSummary]:
        """A page of :class:`JobSummary` rows, newest first."""
        *filters, up_to, batch_id = (where or JobFilter()).checked()
        rows = self._matching(*filters, up_to=up_to, batch_id=batch_id)
        return [JobSummary.of(r) for r in await self._page(rows, check_before(before), limit)]

    async def count_jobs(self, where: JobFilter) -> int:
        """How many jobs match the filters of :meth:`list_jobs`."""
        *filters, up_to, batch_id = where.checked()
        return len(self._matching(*filters, up_to=up_to, batch_id=batch_id))

    async def cancel_jobs(self, where: JobFilter) -> int:
        """Cancel every queued or running job matching ``where``."""
        *filters, up_to, batch_id = where.checked()
        matching = self._matching(*filters, up_to=up_to, batch_id=batch_id)
        return sum([await self.cancel(row.id) for row in matching])

    async def queue_position(self, job_id: int) -> QueuePosition | None:
        """Where the job stands in its queue."""
        job = self._rows.get(job_id)
        if job is None:
            return None
        now = self._clock()
        ahead = 0
        if job.state is JobState.QUEUED:
            first = (-job.priority, job.run_at, job.id)
            ahead = sum(
                1
                for row in self._rows.values()
                if row.state is JobState.QUEUED
                and row.queue == job.queue
                and row.run_at <= now
                and (-row.priority, row.run_at, row.id) < first
            )
        return QueuePosition(
            state=job.state,
            due_in=job.run_at - now,
            ahead=min(ahead, AHEAD_CAP),
            now=datetime.fromtimestamp(now, UTC),
        )

    async def throughput(self, *, window: float = 3600.0, buckets: int = 60) -> Throughput:
        """Jobs that ended in each bucket of the last ``window`` seconds, per queue."""
        span, count = check_throughput(window, buckets)
        now = self._clock()
        width = span / count
        oldest = math.floor(now / width) - count + 1  # buckets aligned to the epoch, as on PG
        queues: dict[str, dict[str, list[int]]] = {}
        for row in self._rows.values():
            if row.state.is_final and row.finished_at is not None:
                bucket = math.floor(row.finished_at / width) - oldest
                if 0 <= bucket < count:
                    queues.setdefault(row.queue, empty_buckets(count))[row.state.value][bucket] += 1
        return Throughput(now=datetime.fromtimestamp(now, UTC), bucket=width, queues=queues)


def _matches(
    row: _Row, queue: str | None, state: str | None, schedule: str | None, error: str | None
) -> bool:
    return (
        (queue is None or row.queue == queue)
        and (state is None or row.state.value == state)
        and (schedule is None or row.schedule == schedule)
        and (error is None or (bool(row.errors) and row.errors[-1].get("type") == error))
    )
