"""The in-memory backend: the embedded default, with the semantics of the PostgreSQL one.

Everything runs on one event loop, so each operation is atomic: several Runners in one
process may share a backend and no job is handed to two of them at once. Payloads, results
and checkpoints are stored as JSON text and decoded on the way out, as a database round trip
would: a handler sees what PostgreSQL would hand it (tuples become lists), and nobody who
mutates a value after handing it over, or after reading it, changes what is stored.

Ready jobs sit in one heap per queue, ordered by (-priority, run_at, id); jobs due later sit
in a second heap by run_at and move over when due. Entries are invalidated lazily: each row
carries a ``seq`` that an entry must match.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import heapq
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from batchworks import _json
from batchworks._checks import (
    check_queue,
    positive_int,
    seconds,
)
from batchworks.backends._base import BackendBase, payload_label
from batchworks.backends._flow import FLOW_RECHECK
from batchworks.backends._memory_batches import MemoryBatchCalls, MemoryBatches
from batchworks.backends._memory_flow import Entry, QueueFlow
from batchworks.backends._memory_reads import MemoryReads
from batchworks.backends._waiters import JobWaiters
from batchworks.backends.base import (
    ClaimedJob,
    EnqueueOptions,
    Heartbeat,
    Limits,
    QueueOverview,
    QueueState,
    Schedules,
    ScheduleState,
    TickClaim,
    WorkerRecord,
    WorkerToken,
)
from batchworks.errors import ConfigurationError, LeaseLost, LifecycleError
from batchworks.job import ErrorEntry, JobRecord, JobState
from batchworks.outcome import Outcome, OutcomeKind
from batchworks.tracing import send_span

__all__ = ["MemoryBackend"]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(slots=True, eq=False)
class _Row:
    id: int
    queue: str
    payload: str  # JSON text, like result and checkpoint
    priority: int
    run_at: float
    created_at: float
    max_attempts: int | None
    dedupe_key: str | None
    timeout: float | None = None
    trace_context: dict[str, str] | None = None
    state: JobState = JobState.QUEUED
    attempts: int = 0
    seq: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    errors: list[ErrorEntry] = field(default_factory=list)
    result: str | None = None
    checkpoint: str | None = None
    worker: WorkerToken | None = None
    worker_name: str | None = None
    lease_until: float = 0.0
    cancel_requested: bool = False
    schedule: str | None = None
    scheduled_for: datetime | None = None
    batch_id: int | None = None
    concurrency_key: str | None = None


class _WorkerState(enum.StrEnum):
    """Where a registered worker incarnation stands (the ``workers.state`` strings)."""

    #: registered and heartbeating; its leases hold
    ACTIVE = "active"
    #: unregistered itself at the end of a clean stop
    STOPPED = "stopped"
    #: silent for ``prune_after``: presumed dead, its jobs recovered
    PRUNED = "pruned"
    #: another process registered under the same name; the newer one wins
    REPLACED = "replaced"


@dataclass(slots=True, eq=False)
class _Worker:
    token: WorkerToken
    name: str
    queues: tuple[str, ...]
    started_at: float
    heartbeat_at: float
    state: _WorkerState = _WorkerState.ACTIVE
    max_attempts: int | None = None


class MemoryBackend(MemoryBatchCalls, BackendBase[list[str]], MemoryReads):
    """Jobs in this process's memory: for in-process batches, tests and the demo.

    :param clock: seconds since the epoch; tests pass a fake one to move time.
    :param max_payload_bytes: the largest encoded payload, result or checkpoint accepted.
    """

    def __init__(
        self, *, clock: Clock = time.time, max_payload_bytes: int = _json.MAX_PAYLOAD_BYTES
    ) -> None:
        self._clock = clock
        self._max_bytes = max_payload_bytes
        self._rows: dict[int, _Row] = {}
        self._running: dict[int, _Row] = {}
        self._ready: dict[str, list[tuple[int, float, int, int]]] = {}
        self._delayed: dict[str, list[tuple[float, int, int]]] = {}
        self._dedupe: dict[tuple[str, str], int] = {}
        self._workers: dict[WorkerToken, _Worker] = {}
        self._schedules: dict[str, ScheduleState] = {}
        self._ticks: set[tuple[str, datetime]] = set()  # (schedule, tick) of every job enqueued
        self._flow = QueueFlow()
        self._next_id = 1
        self._closed = False
        self._wake: asyncio.Event | None = None
        self._job_waiters = JobWaiters()
        self._batch_book = MemoryBatches(clock, self._enqueue_callback)

    def __repr__(self) -> str:
        return f"<MemoryBackend jobs={len(self._rows)} running={len(self._running)}>"

    async def aclose(self) -> None:
        """Nothing to release; the jobs stay readable."""

    async def migrate(self) -> None:
        """Nothing to migrate: exists so code written for PostgreSQL runs unchanged."""

    # -- enqueue (the rest is BackendBase's) -----------------------------------------------------

    #: an enqueue_many of no payloads opens its (empty) send span here, as it always did
    _SPAN_EMPTY_BATCH = True

    def _check_connection(self, connection: object) -> None:
        self._check_open()
        if connection is not None:
            raise ConfigurationError(
                "MemoryBackend has no connections: connection= is for PostgresBackend"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise LifecycleError("MemoryBackend was closed; create a new one")

    def _encode_payloads(self, queue: str, payloads: Sequence[Any], *, numbered: bool) -> list[str]:
        return [
            self._encode(payload, payload_label(queue, index if numbered else None))
            for index, payload in enumerate(payloads)
        ]

    async def _insert(
        self,
        options: EnqueueOptions,
        payloads: list[str],
        dedupe_keys: list[str | None],
        concurrency_keys: list[str | None],
        connection: Any,
        trace_context: dict[str, str] | None,
    ) -> list[int]:
        return [
            self._insert_row(options, text, key, trace_context, concurrency_key=group)
            for text, key, group in zip(payloads, dedupe_keys, concurrency_keys, strict=True)
        ]

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
        queue = options.queue
        if dedupe_key is not None:
            existing = self._dedupe.get((queue, dedupe_key))
            if existing is not None:
                return existing
        now = self._clock()
        run_at = options.run_at.timestamp() if options.run_at else now + options.delay
        row = _Row(
            id=self._next_id,
            queue=queue,
            payload=payload,
            priority=options.priority,
            run_at=run_at,
            created_at=now,
            max_attempts=options.max_attempts,
            dedupe_key=dedupe_key,
            timeout=options.timeout,
            trace_context=trace_context,
            schedule=schedule,
            scheduled_for=scheduled_for,
            batch_id=batch_id,
            concurrency_key=concurrency_key,
        )
        self._next_id += 1
        self._rows[row.id] = row
        if dedupe_key is not None:
            self._dedupe[(queue, dedupe_key)] = row.id
        self._push(row, now)
        self._notify()
        return row.id

    # -- queue structure ----------------------------------------------------------------------

    def _push(self, row: _Row, now: float) -> None:
        row.seq += 1
        if row.run_at <= now:
            heapq.heappush(
                self._ready.setdefault(row.queue, []), (-row.priority, row.run_at, row.id, row.seq)
            )
        else:
            heapq.heappush(self._delayed.setdefault(row.queue, []), (row.run_at, row.id, row.seq))

    def _promote(self, queue: str, now: float) -> list[tuple[int, float, int, int]]:
        """Move the due entries of ``queue`` to its ready heap and return that heap."""
        ready = self._ready.setdefault(queue, [])
        delayed = self._delayed.get(queue)
        while delayed and delayed[0][0] <= now:
            _, job_id, seq = heapq.heappop(delayed)
            row = self._rows.get(job_id)
            if row is not None and row.seq == seq and row.state is JobState.QUEUED:
                heapq.heappush(ready, (-row.priority, row.run_at, row.id, row.seq))
        return ready

    def _valid_head(self, heap: list[tuple[int, float, int, int]]) -> bool:
        """Drop stale entries from the top of ``heap``; True if a live one is left."""
        while heap:
            _, _, job_id, seq = heap[0]
            row = self._rows.get(job_id)
            if row is not None and row.seq == seq and row.state is JobState.QUEUED:
                return True
            heapq.heappop(heap)
        return False

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    # -- inspection and operator calls --------------------------------------------------------

    async def get_job(self, job_id: int) -> JobRecord | None:
        """The job as stored, or None."""
        row = self._rows.get(job_id)
        if row is None:
            return None
        return JobRecord(
            id=row.id,
            queue=row.queue,
            payload=_json.loads(row.payload),
            state=row.state,
            attempts=row.attempts,
            max_attempts=row.max_attempts or 0,
            priority=row.priority,
            run_at=_dt(row.run_at),
            created_at=_dt(row.created_at),
            started_at=_dt(row.started_at),
            finished_at=_dt(row.finished_at),
            errors=tuple(dict(entry) for entry in row.errors),
            result=_json.loads_optional(row.result),
            dedupe_key=row.dedupe_key,
            checkpoint=_json.loads_optional(row.checkpoint),
            worker=row.worker_name,
            timeout=row.timeout,
            schedule=row.schedule,
            scheduled_for=row.scheduled_for,
            lease_until=_dt(row.lease_until) if row.state is JobState.RUNNING else None,
            cancel_requested=row.cancel_requested,
            concurrency_key=row.concurrency_key,
            batch_id=row.batch_id,
        )

    async def wait_job(self, job_id: int, timeout: float | None = None) -> JobRecord:
        """Return the job once it is succeeded, failed or cancelled; see
        :meth:`Backend.wait_job`. Woken by the settle that ends it, no polling."""
        return await self._job_waiters.wait(
            job_id, timeout, fetch=self.get_job, recheck=lambda: None
        )

    async def stats(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: count}}``, every state present."""
        counts: dict[str, dict[str, int]] = {}
        for row in self._rows.values():
            per_queue = counts.get(row.queue)
            if per_queue is None:
                per_queue = counts[row.queue] = {state.value: 0 for state in JobState}
            per_queue[row.state.value] += 1
        return counts

    async def overview(self, *, estimate: bool = False) -> dict[str, QueueOverview]:
        """Each queue's counts, the age of its oldest due job and its checkpointed jobs;
        exact, with ``estimate`` too."""
        now = self._clock()
        result = {}
        for queue, counts in (await self.stats()).items():
            rows = [row for row in self._rows.values() if row.queue == queue]
            waits = [now - row.run_at for row in rows if row.state is JobState.QUEUED]
            due = [age for age in waits if age >= 0]
            result[queue] = QueueOverview(
                counts=counts,
                queued_later=len(waits) - len(due),
                oldest_ready=max(due) if due else None,
                running_with_checkpoint=sum(
                    1 for row in rows if row.state is JobState.RUNNING and row.checkpoint
                ),
            )
        return result

    async def workers(self) -> list[WorkerRecord]:
        """The live worker incarnations, by name."""
        now = self._clock()
        return [
            WorkerRecord(
                name=worker.name,
                host="localhost",
                pid=os.getpid(),
                queues=worker.queues,
                started_at=_dt(worker.started_at),
                heartbeat_at=_dt(worker.heartbeat_at),
                silent_for=now - worker.heartbeat_at,
            )
            for worker in sorted(self._workers.values(), key=lambda w: w.name)
            if worker.state is _WorkerState.ACTIVE
        ]

    async def retry_failed(
        self,
        *,
        queue: str | None = None,
        ids: Sequence[int] | None = None,
        batch_id: int | None = None,
    ) -> int:
        """Queue failed jobs again, now, with their attempts reset; returns how many."""
        if queue is not None:
            check_queue(queue)
        wanted = None if ids is None else set(ids)
        now = self._clock()
        count = 0
        for row in list(self._rows.values()):
            if row.state is not JobState.FAILED:
                continue
            if (
                (queue is not None and row.queue != queue)
                or (wanted is not None and row.id not in wanted)
                or (batch_id is not None and row.batch_id != batch_id)
            ):
                continue
            row.state, row.attempts, row.run_at, row.finished_at = JobState.QUEUED, 0, now, None
            if row.batch_id is not None:
                self._batch_book.reopened(row.batch_id)
            if row.dedupe_key is not None:
                self._dedupe.setdefault((row.queue, row.dedupe_key), row.id)
            self._push(row, now)
            count += 1
        if count:
            self._notify()
        return count

    async def cancel(self, job_id: int) -> bool:
        """Cancel a queued job now; flag a running one for its worker's next heartbeat."""
        row = self._rows.get(job_id)
        if row is None:
            return False
        if row.state is JobState.QUEUED:
            self._finish(row, JobState.CANCELLED, self._clock())
            return True
        if row.state is JobState.RUNNING:
            row.cancel_requested = True
            return True
        return False

    async def purge(self, older_than: float | timedelta) -> int:
        """Delete jobs that reached a final state more than ``older_than`` ago."""
        old = self._purgeable(older_than)  # a member of a batch not done stays
        self._batch_book.purge(self._clock() - seconds(older_than, name="older_than"))
        return self._delete(old)

    async def purge_batch(self, older_than: float | timedelta, *, limit: int) -> int | None:
        """Delete up to ``limit`` of the jobs :meth:`purge` would delete, the longest finished
        first. Never None here: a call runs to its end before another starts."""
        limit = positive_int(limit, "limit")
        old = self._purgeable(older_than)
        self._batch_book.purge(self._clock() - seconds(older_than, name="older_than"))
        return self._delete(heapq.nsmallest(limit, old, key=lambda row: (row.finished_at, row.id)))

    def _delete(self, old: list[_Row]) -> int:
        for row in old:
            del self._rows[row.id]
            if row.schedule is not None:  # the tick guard goes with its job, as in PostgreSQL
                self._ticks.discard((row.schedule, row.scheduled_for))
        return len(old)

    async def purgeable(self, older_than: float | timedelta) -> dict[str, dict[str, int]]:
        """What :meth:`purge` would delete now, ``{queue: {state: count}}``."""
        counts: dict[str, dict[str, int]] = {}
        for row in self._purgeable(older_than):
            per_queue = counts.setdefault(row.queue, {})
            per_queue[row.state.value] = per_queue.get(row.state.value, 0) + 1
        return counts

    def _purgeable(self, older_than: float | timedelta) -> list[_Row]:
        cutoff = self._clock() - seconds(older_than, name="older_than")
        return [
            row
            for row in self._rows.values()
            if row.state.is_final
            and row.finished_at is not None
            and row.finished_at < cutoff
            # a member of a batch not done yet stays: the callback reads its result
            and self._batch_book.done_or_none(row.batch_id)
        ]

    async def pending_migrations(self) -> list[str]:
        """None: the memory backend has no schema."""
        return []

    async def policy_max_attempts(self, queues: Sequence[str]) -> dict[str, int]:
        """The ``max_attempts`` the latest worker of each queue (a live one first) recorded."""
        latest = sorted(
            (w for w in self._workers.values() if w.max_attempts is not None),
            key=lambda w: (w.state is _WorkerState.ACTIVE, w.started_at),
        )
        found = {queue: w.max_attempts for w in latest for queue in w.queues if queue in queues}
        return {queue: most for queue, most in found.items() if most is not None}

    # -- worker side ----------------------------------------------------------------------------

    async def register_worker(
        self, name: str, queues: Sequence[str], *, max_attempts: int | None = None
    ) -> WorkerToken:
        """A new incarnation of ``name``; earlier live ones are replaced, their jobs recovered."""
        self._check_open()
        now = self._clock()
        for worker in self._workers.values():
            if worker.name == name and worker.state is _WorkerState.ACTIVE:
                worker.state = _WorkerState.REPLACED
                self._recover_worker(worker, "was replaced by a restart of the same name", now)
        token = uuid.uuid4()
        self._workers[token] = _Worker(
            token, name, tuple(queues), now, now, max_attempts=max_attempts
        )
        return token

    async def unregister_worker(self, worker: WorkerToken) -> None:
        """Mark the incarnation stopped; jobs it still holds (none, normally) are recovered."""
        record = self._workers.get(worker)
        if record is not None and record.state is _WorkerState.ACTIVE:
            record.state = _WorkerState.STOPPED
            self._recover_worker(record, "stopped while holding it", self._clock())

    async def claim(
        self,
        worker: WorkerToken,
        queues: Sequence[str],
        limit: int,
        *,
        lease: float,
        max_attempts: int,
        caps: Mapping[str, int] | None = None,
        ended: Sequence[Outcome] = (),
    ) -> list[ClaimedJob]:
        """Take up to ``limit`` due jobs for ``worker``; see :meth:`Backend.claim`."""
        record = self._workers.get(worker)
        if record is None or record.state is not _WorkerState.ACTIVE:
            return []
        now = self._clock()
        if len(queues) == 1 and caps is None and not self._flow.controlled(queues[0]):
            # One queue with nothing set (the common case): its heap order is the claim order.
            rows = [self._rows[e[2]] for e in self._take(self._promote(queues[0], now), limit)]
            return [
                self._start(row, record, now, lease=lease, max_attempts=max_attempts)
                for row in rows
            ]
        # The slots of the worker's ended attempts pass to this claim's jobs (a handover).
        handed = {(o.job_id, o.claimed_at) for o in ended if o.claimed_at is not None}
        running = [
            row
            for row in self._running.values()
            if row.worker != worker or (row.id, _dt(row.started_at)) not in handed
        ]
        # Each queue's picks in its own order, then merged: priority first, then the queues
        # take turns (the rank within its queue), then run_at. Picks the merge leaves out go
        # back to their heap, as they were.
        merged: list[tuple[tuple[int, int, float, int], list[Entry], Entry]] = []
        for queue in queues:
            heap = self._promote(queue, now)
            wanted = limit if caps is None or queue not in caps else min(limit, caps[queue])
            if self._flow.controlled(queue):
                picks = self._flow.pick(queue, heap, wanted, running, now, self._queued_row)
            else:
                picks = self._take(heap, wanted)
            merged.extend(((e[0], rank, e[1], e[2]), heap, e) for rank, e in enumerate(picks))
        merged.sort(key=lambda pick: pick[0])
        for _, heap, entry in merged[limit:]:
            heapq.heappush(heap, entry)
        rows = sorted((self._rows[entry[2]] for _, _, entry in merged[:limit]), key=_claim_order)
        started = collections.Counter(row.queue for row in rows)
        for queue, count in started.items():
            if self._flow.controlled(queue):
                self._flow.settings(queue).started(now, count)
        return [
            self._start(row, record, now, lease=lease, max_attempts=max_attempts) for row in rows
        ]

    def _take(self, heap: list[Entry], wanted: int) -> list[Entry]:
        """Pop up to ``wanted`` live entries off ``heap``."""
        taken: list[Entry] = []
        while len(taken) < wanted and self._valid_head(heap):
            taken.append(heapq.heappop(heap))
        return taken

    def _queued_row(self, entry: Entry) -> _Row | None:
        row = self._rows.get(entry[2])
        if row is None or row.seq != entry[3] or row.state is not JobState.QUEUED:
            return None
        return row

    def _start(
        self, row: _Row, record: _Worker, now: float, *, lease: float, max_attempts: int
    ) -> ClaimedJob:
        row.state = JobState.RUNNING
        row.attempts += 1
        row.max_attempts = row.max_attempts or max_attempts
        row.worker, row.worker_name = record.token, record.name
        row.started_at, row.lease_until = now, now + lease
        self._running[row.id] = row
        return ClaimedJob(
            row.id,
            row.queue,
            _json.loads(row.payload),
            row.attempts,
            row.max_attempts,
            _json.loads_optional(row.checkpoint),
            row.timeout,
            row.trace_context,
            now - row.run_at,
            _lost(row),
            row.schedule,
            row.scheduled_for,
            row.batch_id,
            _dt(now),
        )

    async def settle(self, worker: WorkerToken, outcomes: Sequence[Outcome]) -> list[int]:
        """Write outcomes, fenced by ``worker``; returns the ids it no longer held."""
        now = self._clock()
        lost: list[int] = []
        requeued = False
        for outcome in outcomes:
            row = self._running.get(outcome.job_id)
            if (
                row is None
                or row.worker != worker
                or outcome.attempt not in (None, row.attempts)
                or outcome.claimed_at not in (None, _dt(row.started_at))
            ):
                lost.append(outcome.job_id)
                continue
            # A slot of a controlled queue freed: its idle runners may start a job now.
            requeued |= self._apply(row, outcome, now) or self._flow.controlled(row.queue)
        if requeued:
            self._notify()
        return lost

    def _apply(self, row: _Row, outcome: Outcome, now: float) -> bool:
        """Settle one running row; True if it went back to the queue."""
        kind = outcome.kind
        if outcome.error is not None:
            row.errors.append({**outcome.error, "at": _dt(now).isoformat()})
        if not kind.uses_attempt:
            row.attempts -= 1
        if kind.requeues:
            del self._running[row.id]
            row.state, row.worker, row.run_at = JobState.QUEUED, None, now + outcome.delay
            row.cancel_requested = False
            self._push(row, now)
            return True
        if kind is OutcomeKind.SUCCEEDED:
            row.result = outcome.result_json
        self._finish(row, kind.state, now)
        return False

    def _finish(self, row: _Row, state: JobState, now: float) -> None:
        self._running.pop(row.id, None)
        row.state, row.finished_at, row.worker = state, now, None
        row.cancel_requested = False
        row.seq += 1
        if row.dedupe_key is not None and self._dedupe.get((row.queue, row.dedupe_key)) == row.id:
            del self._dedupe[(row.queue, row.dedupe_key)]
        if self._job_waiters:  # one check per finished job when nobody waits
            self._job_waiters.wake(row.id)
        if row.batch_id is not None:  # in the same step: the batch's counters stay exact
            self._batch_book.ended(row.batch_id, state)

    async def heartbeat(
        self, worker: WorkerToken, job_ids: Sequence[int], *, lease: float
    ) -> Heartbeat:
        """Extend the leases of the held jobs; report lost and cancel-requested ones."""
        record = self._workers.get(worker)
        if record is None or record.state is not _WorkerState.ACTIVE:
            replaced = record is not None and record.state is _WorkerState.REPLACED
            return Heartbeat(alive=False, lost=tuple(job_ids), replaced=replaced)
        now = self._clock()
        record.heartbeat_at = now
        lost: list[int] = []
        cancel: list[int] = []
        for job_id in job_ids:
            row = self._running.get(job_id)
            if row is None or row.worker != worker:
                lost.append(job_id)
                continue
            row.lease_until = now + lease
            if row.cancel_requested:
                cancel.append(job_id)
        return Heartbeat(alive=True, lost=tuple(lost), cancel=tuple(cancel))

    async def recover(self, *, prune_after: float) -> int:
        """Prune silent workers and recover their jobs and every job whose lease passed."""
        now = self._clock()
        recovered = 0
        for record in self._workers.values():
            if record.state is _WorkerState.ACTIVE and record.heartbeat_at < now - prune_after:
                record.state = _WorkerState.PRUNED
                logger.warning(
                    "pruned worker %r: no heartbeat for %.1fs",
                    record.name,
                    now - record.heartbeat_at,
                    extra={"action": "worker_pruned", "worker": record.name},
                )
                recovered += self._recover_worker(record, "stopped heartbeating", now)
        for row in [row for row in self._running.values() if row.lease_until < now]:
            self._lose(row, f"worker {row.worker_name!r} let the job's lease expire", now)
            recovered += 1
        return recovered

    def _recover_worker(self, record: _Worker, why: str, now: float) -> int:
        rows = [row for row in self._running.values() if row.worker == record.token]
        for row in rows:
            self._lose(row, f"worker {record.name!r} {why}", now)
        return len(rows)

    def _lose(self, row: _Row, why: str, now: float) -> None:
        """Recover a running job whose worker is gone: the attempt it used stays used."""
        del self._running[row.id]
        row.errors.append(
            {
                "attempt": row.attempts,
                "type": "WorkerLost",
                "message": why,
                "traceback": None,
                "at": _dt(now).isoformat(),
            }
        )
        row.worker = None
        if row.cancel_requested:  # an operator asked for it to stop: it has
            self._finish(row, JobState.CANCELLED, now)
        elif row.attempts >= (row.max_attempts or 1):
            self._finish(row, JobState.FAILED, now)
        else:
            row.state, row.run_at = JobState.QUEUED, now
            self._push(row, now)
            self._notify()
        if self._flow.controlled(row.queue):
            self._notify()  # its slot freed
        logger.warning(
            "recovered job %s: %s",
            row.id,
            why,
            extra={"action": "job_recovered", "job_id": row.id, "queue": row.queue},
        )

    async def save_checkpoint(
        self, worker: WorkerToken, job_id: int, value: Any, *, lease: float
    ) -> Any:
        """Store a checkpoint, fenced by ``worker``, and extend the job's lease."""
        text = self._encode(value, f"checkpoint of job {job_id}")
        row = self._running.get(job_id)
        if row is None or row.worker != worker:
            raise LeaseLost(f"job {job_id} is no longer held by this worker; nothing was saved")
        row.checkpoint = text
        row.lease_until = self._clock() + lease
        return _json.loads(text)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest queued job of ``queues`` is due, or None (a paused
        queue's jobs are not due)."""
        due, _ = self._next_due(queues)
        return due

    def _next_due(self, queues: Sequence[str]) -> tuple[float | None, float | None]:
        """(due, free): :meth:`next_due`, and the same over the queues without flow control."""
        now = self._clock()
        due: float | None = None
        free: float | None = None
        for queue in queues:
            if self._flow.paused(queue):
                continue
            earliest = self._earliest(queue, now)
            if earliest is None:
                continue
            due = earliest if due is None else min(due, earliest)
            if not self._flow.controlled(queue):
                free = earliest if free is None else min(free, earliest)
        return due, free

    def _earliest(self, queue: str, now: float) -> float | None:
        """Seconds until the earliest queued job of ``queue`` is due (0: one is), or None."""
        if self._valid_head(self._promote(queue, now)):
            return 0.0
        delayed = self._delayed.get(queue)
        while delayed:
            run_at, job_id, seq = delayed[0]
            row = self._rows.get(job_id)
            if row is not None and row.seq == seq and row.state is JobState.QUEUED:
                return max(0.0, run_at - now)
            heapq.heappop(delayed)
        return None

    async def wait_for_work(self, queues: Sequence[str], max_wait: float) -> None:
        """Return when a job is enqueued or re-queued, when one falls due, when a slot of a
        controlled queue frees, or after ``max_wait``; due jobs only controlled queues hold
        are looked at again after ``FLOW_RECHECK`` seconds at most (a rate window moves on
        without an event)."""
        due, free = self._next_due(queues)
        if free is not None:
            max_wait = min(max_wait, free)
        if due is not None:
            max_wait = min(max_wait, max(due, FLOW_RECHECK))
        if max_wait <= 0:
            return
        if self._wake is None:
            self._wake = asyncio.Event()
        wake = self._wake
        try:
            async with asyncio.timeout(max_wait):
                await wake.wait()
        except TimeoutError:
            pass

    # -- flow control -------------------------------------------------------------------------

    async def _configure(self, queue: str, limits: Limits) -> None:
        self._check_open()
        settings = self._flow.settings(queue)
        settings.concurrency, settings.key_concurrency = limits.concurrency, limits.key_concurrency
        settings.rate = limits.rate
        self._notify()

    async def _pause(self, queue: str, paused: bool) -> None:
        self._check_open()
        self._flow.settings(queue).paused = paused
        if not paused:
            self._notify()

    async def queues(self) -> list[QueueState]:
        """Every queue with settings or live jobs: settings and use."""
        now = self._clock()
        live: dict[str, list[_Row]] = {name: [] for name in self._flow.names()}
        running: dict[str, list[_Row]] = {name: [] for name in self._flow.names()}
        for row in self._rows.values():
            if row.state is JobState.QUEUED:
                live.setdefault(row.queue, []).append(row)
                running.setdefault(row.queue, [])
            elif row.state is JobState.RUNNING:
                running.setdefault(row.queue, []).append(row)
                live.setdefault(row.queue, [])
        return [self._flow.state(name, live[name], running[name], now) for name in sorted(live)]

    # -- schedules ----------------------------------------------------------------------------

    async def schedules(self) -> Schedules:
        """Every stored schedule by name, with this backend's clock."""
        self._check_open()
        ordered = tuple(self._schedules[name] for name in sorted(self._schedules))
        return Schedules(_dt(self._clock()), ordered)

    async def put_schedule(
        self, name: str, definition: str, *, next_tick: datetime
    ) -> tuple[ScheduleState, bool]:
        """Store a new schedule, or a changed definition (with ``next_tick``)."""
        self._check_open()
        stored = self._schedules.get(name)
        if stored is None:
            state = ScheduleState(name=name, definition=definition, revision=1, next_tick=next_tick)
            self._schedules[name] = state
            return state, False
        if _json.loads(stored.definition) == _json.loads(definition):
            return stored, False
        state = replace(
            stored, definition=definition, revision=stored.revision + 1, next_tick=next_tick
        )
        self._schedules[name] = state
        return state, True

    async def claim_ticks(
        self,
        name: str,
        *,
        revision: int,
        due: datetime,
        next_tick: datetime,
        ticks: Sequence[datetime],
        skipped: int,
        trace_context: Mapping[str, str] | None = None,
    ) -> TickClaim:
        """Advance the schedule and enqueue its ticks' jobs, atomically (one event loop)."""
        self._check_open()
        now = _dt(self._clock())
        stored = self._schedules.get(name)
        if stored is None or stored.revision != revision or stored.next_tick != due:
            return TickClaim(False, (), stored, now)
        ids = []
        if not stored.paused:
            options, payload = self._schedule_job(stored)
            context = None if trace_context is None else dict(trace_context)
            for tick in ticks:
                if (name, tick) in self._ticks:  # the guard PostgreSQL's unique index gives
                    continue
                self._ticks.add((name, tick))
                ids.append(
                    self._insert_row(
                        options, payload, None, context, schedule=name, scheduled_for=tick
                    )
                )
        state = replace(
            stored,
            next_tick=next_tick,
            last_tick=max(ticks) if ticks and not stored.paused else stored.last_tick,
            skipped=stored.skipped + skipped + (len(ticks) if stored.paused else 0),
        )
        self._schedules[name] = state
        return TickClaim(True, tuple(ids), state, now)

    async def pause_schedule(self, name: str, paused: bool, *, next_tick: datetime) -> bool:
        """Pause or resume a schedule; a resume continues from ``next_tick``."""
        stored = self._schedules.get(name)
        if stored is None:
            return False
        if paused:
            self._schedules[name] = replace(stored, paused=True)
        elif stored.paused:
            self._schedules[name] = replace(stored, paused=False, next_tick=next_tick)
        return True

    async def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; its jobs stay."""
        return self._schedules.pop(name, None) is not None

    async def run_schedule(self, name: str) -> int | None:
        """Enqueue one job of the schedule now, outside its ticks."""
        self._check_open()
        stored = self._schedules.get(name)
        if stored is None:
            return None
        options, payload = self._schedule_job(stored)
        with send_span(options.queue, 1) as span:
            job_id = self._insert_row(options, payload, None, span.carrier, schedule=name)
            span.sent([job_id])
            return job_id

    def _schedule_job(self, stored: ScheduleState) -> tuple[EnqueueOptions, str]:
        """The options and payload of a job of a stored schedule's definition."""
        fields = _json.loads(stored.definition)
        options = EnqueueOptions.build(
            fields["queue"],
            delay=None,
            run_at=None,
            priority=fields["priority"],
            max_attempts=fields["max_attempts"],
        )
        return options, self._encode(fields["payload"], f"payload of schedule {stored.name!r}")


def _claim_order(row: _Row) -> tuple[int, float, int]:
    return -row.priority, row.run_at, row.id


def _lost(row: _Row) -> int:
    """How many earlier attempts lost their worker (the runner judges suspects by it)."""
    return sum(1 for entry in row.errors if entry["type"] == "WorkerLost")


def _dt(timestamp: float | None) -> Any:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
