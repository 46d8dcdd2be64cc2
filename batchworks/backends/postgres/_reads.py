"""The PostgreSQL backend's reads for operators' pages (the dashboard, ``jobs why``): filtered
keyset pages of jobs, counts and cancels by a :class:`JobFilter`, a job's place in its queue,
throughput; and how a row becomes a :class:`JobRecord` or a :class:`JobSummary`.

A mixin of :class:`~.backend.PostgresBackend`, kept apart so that backend.py does not grow:
it runs the statements of :mod:`.queries` through the backend's ``_q`` and ``_fetch``.
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

import asyncpg

from batchworks import _json
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
    from batchworks.backends.postgres.backend import Queries

__all__ = ["OperatorReads", "record"]


class OperatorReads:
    """The operators' read calls of :class:`~.backend.PostgresBackend`."""

    _q: Queries

    async def _fetch(self, query: str, *args: Any, connection: Any = None) -> list[asyncpg.Record]:
        raise NotImplementedError  # PostgresBackend's

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record:
        raise NotImplementedError  # PostgresBackend's

    def _require_pool(self) -> asyncpg.Pool:
        raise NotImplementedError  # PostgresBackend's

    def _errors(self) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError  # PostgresBackend's

    async def _fetch_filtered(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """``query`` (one with optional filters, ``$1::text IS NULL OR queue = $1``) planned
        for the values it gets. A prepared statement goes over to a generic plan after five
        runs, and a generic plan cannot use an index for a filter that may be absent: the
        list would walk the whole history for a filter matching few jobs. Planning each run
        costs a fraction of a millisecond; a dashboard page runs one such statement."""
        async with self._errors(), self._require_pool().acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            return cast(list[asyncpg.Record], await conn.fetch(query, *args))

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
        rows = await self._fetch_filtered(self._q.list_jobs, *filters, check_before(before), limit)
        return [record(row) for row in rows]

    async def list_job_summaries(
        self, where: JobFilter | None = None, *, before: int | None = None, limit: int = 50
    ) -> list[JobSummary]:
        """A page of :class:`JobSummary` rows, newest first, in one statement."""
        filters = (where or JobFilter()).checked()
        rows = await self._fetch_filtered(
            self._q.list_job_summaries, *filters, check_before(before), limit
        )
        return [_summary(row) for row in rows]

    async def count_jobs(self, where: JobFilter) -> int:
        """How many jobs match the filters of :meth:`list_jobs`."""
        return int((await self._fetch_filtered(self._q.count_jobs, *where.checked()))[0][0])

    async def cancel_jobs(self, where: JobFilter) -> int:
        """Cancel every queued or running job matching ``where``, in one statement."""
        return int((await self._fetchrow(self._q.cancel_jobs, *where.checked()))[0])

    async def queue_position(self, job_id: int) -> QueuePosition | None:
        """Where the job stands in its queue, on the database's clock."""
        rows = await self._fetch(self._q.queue_position, job_id, AHEAD_CAP)
        if not rows:
            return None
        row = rows[0]
        return QueuePosition(
            state=JobState(row["state"]), due_in=row["due_in"], ahead=row["ahead"], now=row["now"]
        )

    async def throughput(self, *, window: float = 3600.0, buckets: int = 60) -> Throughput:
        """Jobs that ended in each bucket of the last ``window`` seconds, per queue."""
        span, count = check_throughput(window, buckets)
        rows = await self._fetch(self._q.throughput, span, count)
        queues: dict[str, dict[str, list[int]]] = {}
        for row in rows:
            if row["queue"] is not None:
                per_state = queues.setdefault(row["queue"], empty_buckets(count))
                per_state[row["state"]][max(0, row["bucket"])] += row["n"]
        return Throughput(now=rows[-1]["now"], bucket=span / count, queues=queues)


def _listed(row: asyncpg.Record) -> dict[str, Any]:
    """The columns a JobRecord and a JobSummary share, as their fields."""
    return {
        "id": row["id"],
        "queue": row["queue"],
        "state": JobState(row["state"]),
        "attempts": row["attempts"],
        "max_attempts": row["max_attempts"] or 0,
        "priority": row["priority"],
        "run_at": row["run_at"],
        "created_at": row["created_at"],
        "finished_at": row["finished_at"],
        "schedule": row["schedule"],
        "worker": row["worker_name"],
    }


def record(row: asyncpg.Record) -> JobRecord:
    return JobRecord(
        **_listed(row),
        payload=_json.loads(row["payload"]),
        started_at=row["started_at"],
        errors=tuple(json.loads(row["errors"])),
        result=_json.loads_optional(row["result"]),
        dedupe_key=row["dedupe_key"],
        checkpoint=_json.loads_optional(row["checkpoint"]),
        timeout=row["timeout"],
        scheduled_for=row["scheduled_for"],
        lease_until=row["lease_until"],
        cancel_requested=row["cancel_requested"],
        concurrency_key=row["concurrency_key"],
        batch_id=row["batch_id"],
    )


def _summary(row: asyncpg.Record) -> JobSummary:
    return JobSummary(
        **_listed(row), error_type=row["error_type"], error_message=row["error_message"]
    )
