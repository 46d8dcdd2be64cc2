"""The interface every backend implements (:class:`Backend`, for typing) and the values it
passes; :mod:`._base` writes what both backends share once, and :mod:`batchworks._checks`
holds the argument checks.

A backend stores jobs; it knows nothing of handlers. The Runner drives it through the
worker-side operations below, each of which covers a whole batch in one call (for
PostgreSQL: one round trip): ``claim`` a batch, ``settle`` a flush of outcomes, ``heartbeat``
every held job at once.

Worker tokens: each Runner incarnation registers and gets a fresh token (a UUID). Every write
a worker makes to a job is fenced by it: a job changes only while it is running under that
token. A worker that lost a job (pruned, replaced, lease expired) writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from batchworks._checks import (
    check_due,
    check_filters,
    check_job_id,
    check_max_attempts,
    check_priority,
    check_queue,
    check_timeout,
    seconds,
)
from batchworks._quick import quick_init
from batchworks.batch import Batch, BatchFailure, BatchRecord, Callback
from batchworks.job import JobRecord, JobState
from batchworks.outcome import Outcome

__all__ = [
    "Backend",
    "BatchSpec",
    "ClaimedJob",
    "EnqueueOptions",
    "Heartbeat",
    "JobFilter",
    "JobSummary",
    "Limits",
    "QueueOverview",
    "QueuePosition",
    "QueueState",
    "ScheduleState",
    "Schedules",
    "Throughput",
    "TickClaim",
    "WorkerRecord",
    "WorkerToken",
    "check_queue",
    "empty_buckets",
    "seconds",
]

WorkerToken = uuid.UUID


@quick_init
@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job as a claim hands it to a worker (the worker wraps it into a :class:`Job`)."""

    id: int
    queue: str
    payload: Any
    #: this attempt's number, 1-based
    attempt: int
    max_attempts: int
    checkpoint: Any = None
    #: the job's own handler time limit in seconds, given at enqueue
    timeout: float | None = None
    #: the W3C trace context of the enqueue, for the consumer span's link
    trace_context: Mapping[str, str] | None = None
    #: seconds from the job being due to this claim (on the backend's clock)
    waited: float = 0.0
    #: how many earlier attempts lost their worker (the runner isolates a job that lost it
    #: ``SUSPECT_AFTER`` times: it may be what killed them)
    lost: int = 0
    #: the schedule that enqueued it, and the tick it stands for (None: a manual run)
    schedule: str | None = None
    scheduled_for: datetime | None = None
    #: the batch it is a member of, or None
    batch_id: int | None = None
    #: when this claim took the job, on the backend's clock: the settle is fenced by it too,
    #: for what token and attempt cannot tell apart (after a failover to a standby that lagged,
    #: a job that reuses a lost job's id, claimed by the same worker at the same attempt)
    claimed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a heartbeat learned about the worker and the jobs it holds."""

    #: False once the worker was pruned or replaced: it must stop claiming
    alive: bool
    #: held jobs that are no longer this worker's (their outcome would be fenced out)
    lost: tuple[int, ...] = ()
    #: held jobs an operator asked to cancel
    cancel: tuple[int, ...] = ()
    #: not alive because another incarnation registered under the same name (not pruned)
    replaced: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecord:
    """A live worker incarnation, for operators."""

    name: str
    host: str
    pid: int
    queues: tuple[str, ...]
    started_at: datetime
    heartbeat_at: datetime
    #: seconds since its last heartbeat, on the backend's clock
    silent_for: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueOverview:
    """One queue at a glance, for operators."""

    #: jobs by state, every state present
    counts: dict[str, int]
    #: queued jobs not due yet (retries, snoozes, delayed jobs), counted in ``counts`` too
    queued_later: int = 0
    #: seconds the oldest due job has waited to run, or None when none is due
    oldest_ready: float | None = None
    #: running jobs that saved a checkpoint
    running_with_checkpoint: int = 0
    #: states whose count is an estimate from a sample of the table (``overview(estimate=True)``
    #: on a large history); the others are exact
    estimated: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Limits:
    """A queue's checked limits, as ``configure_queue`` stores them (None: no limit)."""

    concurrency: int | None = None
    key_concurrency: int | None = None
    rate: tuple[int, float] | None = None


#: the kinds of flow control that hold a due job back, in the order they are told apart
HELD_BACK_BY = ("paused", "concurrency", "rate", "key_concurrency")


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueState:
    """A queue's flow-control settings and its use now (:meth:`Backend.queues`)."""

    name: str
    paused: bool = False
    #: jobs of the queue running at once across every worker at most (None: no limit)
    concurrency: int | None = None
    #: jobs sharing one ``concurrency_key`` running at once at most (None: no limit)
    key_concurrency: int | None = None
    #: ``(n, seconds)``: at most n starts in any window of that many seconds (None: no limit)
    rate: tuple[int, float] | None = None
    #: slots in use: jobs running now (each holding a lease)
    running: int = 0
    #: queued jobs, due or not
    queued: int = 0
    #: queued jobs due now
    due: int = 0
    #: starts within the last ``rate`` window
    recent_starts: int = 0
    #: due jobs that cannot start now, by what holds them back (see :func:`held_back`)
    held_back: Mapping[str, int] = field(default_factory=dict)

    @property
    def controlled(self) -> bool:
        """Whether anything limits the queue (paused or any limit set)."""
        return self.paused or any(
            limit is not None for limit in (self.concurrency, self.key_concurrency, self.rate)
        )


def held_back(
    *,
    paused: bool,
    concurrency: int | None,
    rate: tuple[int, float] | None,
    running: int,
    recent_starts: int,
    due: int,
    key_held: int,
) -> dict[str, int]:
    """The due jobs of a queue that cannot start now, by the first thing that holds them back:
    all of them by a pause, a full ``concurrency`` or a full rate window (in that order), else
    those whose key is at ``key_concurrency`` (``key_held``)."""
    if due == 0:
        return {}
    if paused:
        return {"paused": due}
    if concurrency is not None and running >= concurrency:
        return {"concurrency": due}
    if rate is not None and recent_starts >= rate[0]:
        return {"rate": due}
    return {"key_concurrency": key_held} if key_held else {}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSummary:
    """A job as a list shows it (:meth:`Backend.list_job_summaries`): no payload, result or
    checkpoint, and of its error history the latest entry's type and the start of its
    message, so that a page of 50 costs the same whatever its jobs carry."""

    id: int
    queue: str
    state: JobState
    attempts: int
    #: 0: none of its own yet (the policy of the worker that claims it decides)
    max_attempts: int
    priority: int
    run_at: datetime
    created_at: datetime
    finished_at: datetime | None = None
    schedule: str | None = None
    #: the worker that holds (or last held) it
    worker: str | None = None
    #: the type of the latest entry of its error history, and its message's first
    #: :data:`SUMMARY_MESSAGE` characters
    error_type: str | None = None
    error_message: str | None = None

    @classmethod
    def of(cls, record: JobRecord) -> JobSummary:
        """The summary of a whole job (what :meth:`Backend.list_job_summaries` returns)."""
        last = record.errors[-1] if record.errors else {}
        message = last.get("message")
        shared = {f.name: getattr(record, f.name) for f in fields(cls) if f.name in _FROM_RECORD}
        return cls(
            **shared,
            error_type=last.get("type"),
            error_message=None if message is None else str(message)[:SUMMARY_MESSAGE],
        )


#: characters of the latest error's message a :class:`JobSummary` keeps
SUMMARY_MESSAGE = 200
#: the fields a JobSummary copies from a JobRecord as they are
_FROM_RECORD = frozenset(f.name for f in fields(JobRecord)) - {"errors"}


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Which jobs :meth:`Backend.list_job_summaries`, :meth:`Backend.count_jobs` and
    :meth:`Backend.cancel_jobs` take (the filters of :meth:`Backend.list_jobs`); each None
    matches every job."""

    queue: str | None = None
    #: a :class:`JobState` value
    state: str | None = None
    #: the name of the schedule that enqueued them
    schedule: str | None = None
    #: the type of the latest entry of their error history (``"ValueError"``)
    error_type: str | None = None
    #: only jobs whose id is at most this: a cancel confirmed for the jobs that were there
    #: when its count was shown leaves alone the jobs enqueued since
    up_to: int | None = None
    #: the members of this batch (#16) only
    batch_id: int | None = None

    def checked(
        self,
    ) -> tuple[str | None, str | None, str | None, str | None, int | None, int | None]:
        """The filters, checked, in the order the backends bind them."""
        filters = check_filters(self.queue, self.state, self.schedule, self.error_type)
        ids = check_job_id(self.up_to, "up_to"), check_job_id(self.batch_id, "batch_id")
        return (*filters, *ids)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePosition:
    """Where a job stands in its queue, on the backend's clock (for "why is it waiting")."""

    state: JobState
    #: seconds until it is due (0 or less: due now), from its ``run_at``
    due_in: float
    #: due queued jobs of its queue that a claim takes before it (higher priority, or the same
    #: priority and due earlier), counted up to :data:`AHEAD_CAP`; 0 unless it is queued
    ahead: int
    #: the backend's clock when it looked
    now: datetime


def empty_buckets(count: int) -> dict[str, list[int]]:
    """A queue's entry of :attr:`Throughput.queues` before any job is counted."""
    return {state.value: [0] * count for state in JobState if state.is_final}


#: :meth:`Backend.queue_position` stops counting the jobs ahead at this many.
AHEAD_CAP = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Throughput:
    """Jobs that ended in each bucket of the last ``window`` seconds, per queue. Buckets are
    aligned to multiples of their length since the epoch (the bounds of a bucket do not move
    from one read to the next); the last holds ``now`` and is not over yet."""

    #: the backend's clock when it was read, within the last bucket
    now: datetime
    #: seconds a bucket spans
    bucket: float
    #: ``{queue: {state: [count per bucket, oldest first]}}`` for succeeded, failed and
    #: cancelled; only queues in which a job ended within the window
    queues: dict[str, dict[str, list[int]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleState:
    """A schedule as the backend keeps it (see :class:`batchworks.Schedule`)."""

    name: str
    #: the schedule's canonical JSON (``Schedule.definition()``)
    definition: str
    #: bumped at every change of the definition: a claim planned on another fails
    revision: int
    #: the first tick no job or skip has been claimed for yet
    next_tick: datetime
    #: the latest tick that became a job, if any
    last_tick: datetime | None = None
    #: ticks that became no job (missed while no runner was alive, or paused)
    skipped: int = 0
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Schedules:
    """Every stored schedule, and the backend's clock when it read them."""

    now: datetime
    schedules: tuple[ScheduleState, ...]


@dataclass(frozen=True, slots=True)
class TickClaim:
    """What a claim of a schedule's due ticks did."""

    #: this claim advanced the schedule (False: another runner did first, or it changed)
    won: bool
    #: the jobs it enqueued (none when it lost, or when the schedule is paused)
    job_ids: tuple[int, ...]
    #: the schedule as it is now (None: it was removed)
    state: ScheduleState | None
    #: the backend's clock at the claim
    now: datetime


@runtime_checkable
class Backend(Protocol):
    """Where jobs live. The semantics both backends share are README.md's (what happens to a
    job, "Guarantees"), held by the contract tests that run on each (the ``backend`` fixture of
    tests/conftest.py); docs/postgres-roles.md has the PostgreSQL roles."""

    # -- lifecycle and user-facing operations ------------------------------------------------

    @property
    def max_payload_bytes(self) -> int:
        """The largest encoded payload, result or checkpoint this backend accepts."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None: ...

    async def migrate(self) -> None:
        """Create or upgrade the schema; idempotent."""

    async def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        dedupe_key: str | None = None,
        timeout: float | timedelta | None = None,
        connection: Any = None,
        concurrency_key: str | None = None,
    ) -> int:
        """Add one job and return its id (or, for a live duplicate ``dedupe_key``, that job's).

        ``concurrency_key`` groups jobs for the queue's ``key_concurrency`` limit."""

    async def enqueue_many(
        self,
        queue: str,
        payloads: Sequence[Any],
        *,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        dedupe_keys: Sequence[str | None] | None = None,
        timeout: float | timedelta | None = None,
        connection: Any = None,
        concurrency_keys: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Add jobs in one go; ids come back in payload order."""

    async def get_job(self, job_id: int) -> JobRecord | None: ...

    async def wait_job(self, job_id: int, timeout: float | None = None) -> JobRecord:
        """Return the job once it is succeeded, failed or cancelled (at once if it already is).

        Woken by the backend when the job ends (PostgreSQL: a NOTIFY for that job only), not
        by polling; a job re-queued by ``retry_failed()`` is waited for again.

        :param timeout: seconds to wait at most (None: no limit).
        :raises TimeoutError: the job did not end within ``timeout``.
        :raises JobNotFound: no job has that id.
        """

    async def stats(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: count}}`` with every state present."""

    async def overview(self, *, estimate: bool = False) -> dict[str, QueueOverview]:
        """Each queue's counts, the age of its oldest due job and its checkpointed jobs.
        ``estimate``: a backend may estimate the counts of finished jobs of a large history
        (and name those states in ``estimated``); the live states stay exact."""

    async def workers(self) -> list[WorkerRecord]:
        """The live worker incarnations, by name."""

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
        """The newest jobs first, filtered by queue, state, schedule and the type of the
        latest error; ``before`` pages on: only jobs whose id is below it (keyset paging,
        as fast on the last page as on the first)."""

    async def list_job_summaries(
        self, where: JobFilter | None = None, *, before: int | None = None, limit: int = 50
    ) -> list[JobSummary]:
        """The newest jobs ``where`` selects (below id ``before``: keyset paging), as
        :class:`JobSummary` rows: what the dashboard lists."""

    async def count_jobs(self, where: JobFilter) -> int:
        """How many jobs :meth:`list_jobs` would page through with these filters."""

    async def cancel_jobs(self, where: JobFilter) -> int:
        """:meth:`cancel` every queued or running job matching ``where``; returns how many
        were cancelled (queued) or marked for their worker's next heartbeat (running)."""

    async def queue_position(self, job_id: int) -> QueuePosition | None:
        """Where the job stands in its queue (None: no such job)."""

    async def throughput(self, *, window: float = 3600.0, buckets: int = 60) -> Throughput:
        """Jobs that ended in each of ``buckets`` equal parts of the last ``window`` seconds."""

    async def retry_failed(
        self,
        *,
        queue: str | None = None,
        ids: Sequence[int] | None = None,
        batch_id: int | None = None,
    ) -> int:
        """Queue failed jobs again with fresh attempts (those of batch ``batch_id`` only, when
        given; its counters follow); returns how many."""

    async def cancel(self, job_id: int) -> bool:
        """Cancel a queued job now, or a running one at its worker's next heartbeat."""

    async def purge(self, older_than: float | timedelta) -> int:
        """Delete jobs that reached a final state more than ``older_than`` ago."""

    async def purge_batch(self, older_than: float | timedelta, *, limit: int) -> int | None:
        """Delete up to ``limit`` of the jobs :meth:`purge` would delete, those that finished
        longest ago first, and return how many; None, deleting nothing, while another caller
        is purging (one at a time). The Runner's retention purge calls it in small batches,
        so that no statement holds locks for long whatever the history's size."""

    async def purgeable(self, older_than: float | timedelta) -> dict[str, dict[str, int]]:
        """What :meth:`purge` would delete now, ``{queue: {state: count}}``; deletes nothing."""

    # -- flow control (#14) ------------------------------------------------------------------

    async def configure_queue(
        self,
        queue: str,
        *,
        concurrency: int | None = None,
        key_concurrency: int | None = None,
        rate: tuple[int, float] | None = None,
    ) -> None:
        """Set the limits of ``queue``, durably, for every worker: each argument left None
        removes that limit. ``concurrency``: its jobs running at once; ``key_concurrency``:
        its jobs of one ``concurrency_key`` running at once; ``rate=(n, seconds)``: at most
        n starts in any window of ``seconds`` (a sliding window over the latest starts)."""

    async def pause_queue(self, queue: str) -> None:
        """Start no new job of ``queue`` (durably); running ones finish, enqueues go on."""

    async def resume_queue(self, queue: str) -> None:
        """Undo :meth:`pause_queue`; its idle runners are woken."""

    async def queues(self) -> list[QueueState]:
        """Every queue with settings or live jobs, by name: settings, slots in use, queued
        jobs and the due ones held back, by which limit."""

    async def pending_migrations(self) -> list[str]:
        """The migrations :meth:`migrate` would apply (``0004_name``), empty when up to date."""

    async def policy_max_attempts(self, queues: Sequence[str]) -> dict[str, int]:
        """For each of ``queues`` that a worker ever registered for, the ``max_attempts`` of
        the retry policy of the latest such worker (a live one first): what a claim there
        gives a job enqueued without its own."""

    # -- batches (#16) ---------------------------------------------------------------------

    async def enqueue_batch(
        self,
        queue: str,
        payloads: Sequence[Any],
        *,
        on_complete: Callback | None = None,
        on_success: Callback | None = None,
        name: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        close: bool = True,
        connection: Any = None,
    ) -> Batch:
        """Add a batch and its members in one transaction (the caller's with ``connection=``).
        It is closed at once, so its callbacks come when its members end (at once for no
        members); with ``close=False`` it stays open for :meth:`add_to_batch` until
        :meth:`close_batch`. The options are ``enqueue_many``'s but ``dedupe_keys``: a member
        whose key a live job held would be no member."""

    async def add_to_batch(
        self,
        batch_id: int,
        payloads: Sequence[Any],
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        connection: Any = None,
    ) -> Batch:
        """Add members to a batch that is open, or closed with members still pending (so a
        running member's handler can add to its own batch, ``job.batch_id``), in one
        transaction. ``queue`` defaults to the queue the batch was enqueued to.

        :raises BatchNotFound: no batch has that id.
        :raises BatchClosed: the batch takes no more members.
        """

    async def close_batch(self, batch_id: int) -> BatchRecord:
        """Close an open batch (idempotent): it finishes, and its callbacks are enqueued, once
        no member is pending (at once if none is).

        :raises BatchNotFound: no batch has that id."""

    async def cancel_batch(self, batch_id: int) -> BatchRecord:
        """Cancel the batch's queued members now and ask its running ones to stop (at their
        worker's next heartbeat); closes it. ``on_complete`` still comes, once the last member
        ended; ``on_success`` comes only if every member had succeeded.

        :raises BatchNotFound: no batch has that id."""

    async def get_batch(self, batch_id: int) -> BatchRecord | None:
        """The batch with its counters as they stand, or None."""

    async def wait_batch(self, batch_id: int, timeout: float | None = None) -> BatchRecord:
        """Return the batch once it is done (closed or cancelled, no member pending): woken
        by the backend (PostgreSQL: a NOTIFY as the last member ends), not by polling.

        :raises TimeoutError: it was not done within ``timeout`` seconds.
        :raises BatchNotFound: no batch has that id."""

    def batch_results(self, batch_id: int, *, page_size: int = 500) -> AsyncIterator[JobRecord]:
        """The batch's members in id order, read ``page_size`` at a time (a batch of millions
        streams in bounded memory)."""

    async def batches(self, *, limit: int = 20) -> list[BatchRecord]:
        """The newest batches first."""

    async def batch_failures(self, batch_id: int, *, limit: int = 10) -> list[BatchFailure]:
        """The batch's failed members grouped by their last error's type and message, the
        largest group first."""

    async def open_batches(self) -> int:
        """How many batches are not done (open, or closed with members pending)."""

    # -- worker-side operations (the Runner's) -----------------------------------------------

    async def register_worker(
        self, name: str, queues: Sequence[str], *, max_attempts: int | None = None
    ) -> WorkerToken:
        """Start a worker incarnation named ``name``; earlier incarnations of the same name
        are marked replaced and their jobs recovered at once. ``max_attempts`` is its retry
        policy's, recorded for operators (see :meth:`policy_max_attempts`)."""

    async def unregister_worker(self, worker: WorkerToken) -> None:
        """Mark the incarnation stopped (after it released or settled everything)."""

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
        """Take up to ``limit`` due jobs, highest priority first; among equal priorities the
        queues take turns (each queue's earliest ``run_at`` first), so a quiet queue does not
        wait behind a busy one's backlog.

        Each claim uses an attempt and holds the job for ``lease`` seconds. ``max_attempts``
        is the policy's, for jobs enqueued without their own. ``caps`` bounds the jobs taken
        of a queue (the runner's ``queue_concurrency`` room). A paused queue gives none; a
        limited one only as many as its limits leave, skipping a job over a limit for the
        next one in order.

        ``ended`` are outcomes of ``worker`` not written yet: their handlers have ended, so
        their slots of a limited queue pass to the jobs this claim takes (a handover). An
        outcome counts only while its job is still running under ``worker`` by the claim the
        outcome names (``Outcome.claimed_at``); any other is ignored. A backend written before
        this keyword existed may leave it out: the Runner passes it only to a backend whose
        ``claim`` takes it.
        """

    async def settle(self, worker: WorkerToken, outcomes: Sequence[Outcome]) -> list[int]:
        """Write outcomes, fenced; returns the ids that could not be settled (lost leases)."""

    async def heartbeat(
        self, worker: WorkerToken, job_ids: Sequence[int], *, lease: float
    ) -> Heartbeat:
        """Prove the worker alive and extend the lease of each job it still holds."""

    async def recover(self, *, prune_after: float) -> int:
        """Prune workers silent for ``prune_after`` seconds and recover their jobs and every
        job whose lease passed; returns how many jobs were recovered."""

    async def save_checkpoint(
        self, worker: WorkerToken, job_id: int, value: Any, *, lease: float
    ) -> Any:
        """Store a checkpoint (JSON), fenced, and extend the job's lease; returns the value as
        stored (what the next attempt will read).

        :raises PayloadError: ``value`` is not storable JSON, or too large.
        :raises LeaseLost: the worker does not hold the job.
        """

    async def next_due(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest queued job is due (0 when one is due now), or None."""

    async def wait_for_work(self, queues: Sequence[str], max_wait: float) -> None:
        """Return when a job may have become due, or after ``max_wait`` seconds."""

    # -- schedules (periodic jobs, #15) ----------------------------------------------------

    async def schedules(self) -> Schedules:
        """Every stored schedule by name, with the backend's clock."""

    async def put_schedule(
        self, name: str, definition: str, *, next_tick: datetime
    ) -> tuple[ScheduleState, bool]:
        """Store schedule ``name`` if it is new, or its ``definition`` if that differs from
        the stored one (then with ``next_tick``, a revision more); returns the stored state
        and whether an existing definition was replaced."""

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
        """In one transaction: advance schedule ``name`` from ``due`` to ``next_tick`` if it
        still stands at ``due`` and ``revision``, and enqueue one job per tick of ``ticks``
        (none if it is paused: then they count as skipped, with ``skipped``). However many
        runners race, one wins each tick; a tick's job is never enqueued twice."""

    async def pause_schedule(self, name: str, paused: bool, *, next_tick: datetime) -> bool:
        """Pause (its ticks are skipped) or resume a schedule; a resume continues from
        ``next_tick``. False if no schedule has that name."""

    async def remove_schedule(self, name: str) -> bool:
        """Delete a schedule (its jobs stay); False if none has that name."""

    async def run_schedule(self, name: str) -> int | None:
        """Enqueue one job of schedule ``name`` now, outside its ticks (a manual run: its
        ``scheduled_for`` is None); None if no schedule has that name."""


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """A new batch's checked settings, the callbacks as JSON text (what both backends store)."""

    name: str | None
    on_complete: str | None
    on_success: str | None


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """The checked options of an enqueue; each backend turns them into its own writes."""

    queue: str
    #: seconds from now (on the backend's clock) until due, when ``run_at`` is None
    delay: float
    run_at: datetime | None
    priority: int
    max_attempts: int | None
    #: the handler's time limit for this job, over the runner's ``job_timeout``
    timeout: float | None = None

    @classmethod
    def build(
        cls,
        queue: str,
        *,
        delay: float | timedelta | None,
        run_at: datetime | None,
        priority: int,
        max_attempts: int | None,
        timeout: float | timedelta | None = None,
    ) -> EnqueueOptions:
        # With several bad arguments, this order says whose error is raised (delay's value last).
        check_queue(queue)
        limit = check_timeout(timeout)
        check_due(delay, run_at)
        check_priority(priority)
        check_max_attempts(max_attempts)
        return cls(
            queue=queue,
            delay=0.0 if delay is None else seconds(delay, name="delay"),
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            timeout=limit,
        )
