"""The PostgreSQL backend's reads for operators' pages (the dashboard, ``jobs why``): filtered
keyset pages of jobs, counts and cancels by a :class:`JobFilter`, a job's place in its queue,
throughput; and how a row becomes a :class:`JobRecord` or a :class:`JobSummary`.

A mixin of :class:`~.backend.PostgresBackend`, kept apart so that backend.py does not grow:
it runs the statements of :mod:`.queries` through the backend's ``_q`` and ``_fetch``.
"""

from __future__ import annotations

import json
import math
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import asyncpg

from batchworks import _json
from batchworks._checks import check_before, check_filters, check_throughput
from batchworks.backends.base import (
    AHEAD_CAP,
    JobFilter,
    JobSummary,
    QueueOverview,
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

    #: the pages of the table overview(estimate=True) samples for the succeeded and cancelled
    #: jobs (about 20 jobs a page at fillfactor 50); a table of at most twice as many pages
    #: is counted whole
    OVERVIEW_SAMPLE_PAGES = 1_000

    async def overview(self, *, estimate: bool = False) -> dict[str, QueueOverview]:
        """Each queue's counts, the age of its oldest due job and its checkpointed jobs.

        With ``estimate``, what a page refreshed every few seconds asks: the queued, running
        and failed jobs are counted exactly through their indexes; the succeeded and
        cancelled ones too while the table is small (:attr:`OVERVIEW_SAMPLE_PAGES`), else
        they are estimated from a fixed sample of its pages, and every queue names those two
        states in ``estimated`` (a queue with few such jobs may read far off, or 0). The
        queues the sample misses are there still when they have live jobs, limits set or a
        live worker. Its cost follows the live jobs, not the history. The parts are read in
        one snapshot."""
        if not estimate:
            return _overviews(await self._fetch(self._q.overview), estimated=frozenset())
        async with (
            self._errors(),
            self._require_pool().acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = [dict(row) for row in await conn.fetch(self._q.overview_live)]
            size = await conn.fetchrow(self._q.overview_size)
            if size["pages"] <= 2 * self.OVERVIEW_SAMPLE_PAGES:
                rows += await conn.fetch(self._q.overview_finished)
                return _overviews(rows, estimated=frozenset())
            percent = 100.0 * self.OVERVIEW_SAMPLE_PAGES / size["pages"]
            scale = 100.0 / percent
            for row in await conn.fetch(self._q.overview_finished_sample, percent):
                rows.append(
                    {"queue": row["queue"], "state": row["state"], "n": round(row["n"] * scale)}
                )
        known = [{"queue": name, "state": "succeeded", "n": 0} for name in size["known"]]
        return _overviews(known + rows, estimated=FINISHED_ESTIMATED)

    def _kept_buckets(self, span: float, count: int, *, anew: bool = False) -> _Kept:
        """The throughput buckets kept for this window and count; a few windows at most (a
        caller computing its window anew each time must not grow them without end)."""
        kept: dict[tuple[float, int], _Kept] = self.__dict__.setdefault("_throughput_kept", {})
        if anew or (span, count) not in kept:
            kept.pop((span, count), None)
            while len(kept) >= KEPT_WINDOWS:
                del kept[next(iter(kept))]  # the first kept
            kept[(span, count)] = _Kept()
        return kept[(span, count)]

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
        """Jobs that ended in each bucket of the last ``window`` seconds, per queue.

        The buckets are aligned to multiples of their length since the epoch, and those that
        are over (by :data:`SETTLED_AFTER`) are kept and never read again: a refresh reads the
        jobs that ended in the newest few buckets, whatever the rate, instead of the whole
        window (3.6M rows an hour at 1,000 jobs/s). So a kept bucket counts the jobs that had
        ended in it when it was read: one retried or purged later is still counted there
        (the memory backend counts the jobs as they are now)."""
        span, count = check_throughput(window, buckets)
        width = span / count
        kept = self._kept_buckets(span, count)
        since = kept.upto * width if kept.upto is not None else None
        rows = await self._fetch(self._q.throughput, since, width, span)
        now = next(row["now"] for row in rows if row["queue"] is None)
        if kept.now is not None and now < kept.now:  # the server's clock went back (a failover)
            kept = self._kept_buckets(span, count, anew=True)
            rows = await self._fetch(self._q.throughput, None, width, span)
            now = next(row["now"] for row in rows if row["queue"] is None)
        kept.now = now
        newest = math.floor(now.timestamp() / width)
        oldest = newest - count + 1
        fresh: dict[int, dict[tuple[str, str], int]] = {}
        for row in rows:
            if row["queue"] is not None:
                fresh.setdefault(row["k"], {})[(row["queue"], row["state"])] = row["n"]
        # Over: every bucket that ended SETTLED_AFTER ago, read from since on; kept from now on.
        over = math.floor((now.timestamp() - SETTLED_AFTER) / width)
        first = kept.upto if kept.upto is not None else oldest
        for k in range(max(first, oldest), over):
            kept.buckets[k] = fresh.get(k, {})
        kept.upto = max(over, first)
        for k in [k for k in kept.buckets if k < oldest]:
            del kept.buckets[k]
        queues: dict[str, dict[str, list[int]]] = {}
        for k in range(oldest, newest + 1):
            counts = kept.buckets.get(k) if k < kept.upto else fresh.get(k)
            for (queue, state), n in (counts or {}).items():
                queues.setdefault(queue, empty_buckets(count))[state][k - oldest] += n
        return Throughput(now=now, bucket=width, queues=queues)


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


#: seconds after a throughput bucket's end from which it is kept: a settle that began (its
#: finished_at) before the end and committed after it is seen if it took less than this (the
#: pool's command_timeout is 60 s)
SETTLED_AFTER = 120.0
#: windows (window, buckets) whose buckets are kept at once, at most
KEPT_WINDOWS = 4


@dataclass
class _Kept:
    """The throughput buckets of one width that are over, by their number since the epoch;
    every bucket before ``upto`` (and within the window) is here, empty or not."""

    upto: int | None = None
    buckets: dict[int, dict[tuple[str, str], int]] = field(default_factory=dict)
    #: the server's clock at the last read
    now: datetime | None = None


#: the states overview(estimate=True) samples once the history is large
FINISHED_ESTIMATED = frozenset({JobState.SUCCEEDED.value, JobState.CANCELLED.value})


def _overviews(rows: Any, *, estimated: frozenset[str]) -> dict[str, QueueOverview]:
    """Rows of (queue, state, n) and, for some, later, oldest_ready and checkpointed, by
    queue: every state present (a later row of a queue and state replaces an earlier one)."""
    counts: dict[str, dict[str, int]] = {}
    oldest: dict[str, float] = {}
    checkpointed: dict[str, int] = {}
    later: dict[str, int] = {}
    for row in rows:
        queue = row["queue"]
        per_state = counts.setdefault(queue, {state.value: 0 for state in JobState})
        per_state[row["state"]] = row["n"]
        if row.get("later"):
            later[queue] = row["later"]
        if row.get("oldest_ready") is not None:
            oldest[queue] = max(oldest.get(queue, 0.0), row["oldest_ready"])
        checkpointed[queue] = checkpointed.get(queue, 0) + (row.get("checkpointed") or 0)
    return {
        queue: QueueOverview(
            counts=per_state,
            queued_later=later.get(queue, 0),
            oldest_ready=oldest.get(queue),
            running_with_checkpoint=checkpointed.get(queue, 0),
            estimated=estimated,
        )
        for queue, per_state in counts.items()
    }
