"""What a handler sees (:class:`Job`), what an operator inspects (:class:`JobRecord`), and the
states a job moves through (:class:`JobState`)."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic

# TypeVar's default= is PEP 696, in typing from Python 3.13 only: typing_extensions has it for
# 3.11 and 3.12 (and was already installed, by opentelemetry-api; now it is a dependency of ours).
from typing_extensions import TypeVar

from batchworks.errors import LifecycleError

__all__ = ["ErrorEntry", "Job", "JobRecord", "JobState", "PayloadT"]

#: The type of a job's payload, for handlers that want it checked: ``Job[OrderPayload]``
#: (a TypedDict, say). A bare ``Job`` is ``Job[Any]``. Nothing checks it at run time: the
#: payload is whatever JSON the producer enqueued.
PayloadT = TypeVar("PayloadT", default=Any)

#: One failed attempt as kept in :attr:`JobRecord.errors`: at least ``attempt`` (int),
#: ``type`` (the exception's class name), ``message``, ``traceback`` (its head) and ``at``
#: (ISO timestamp).
ErrorEntry = dict[str, Any]


class JobState(enum.StrEnum):
    """The state of a job; values are the strings the database stores."""

    #: waiting to run, now or at ``run_at``
    QUEUED = "queued"
    #: claimed by a worker, which holds a lease on it
    RUNNING = "running"
    #: the handler returned; final
    SUCCEEDED = "succeeded"
    #: terminal error, or no attempts left; final until an operator retries it
    FAILED = "failed"
    #: cancelled by an operator; final
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for the states a job rests in: succeeded, failed, cancelled."""
        return self in _FINAL


_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

CheckpointSaver = Callable[[int, Any], Awaitable[Any]]


@dataclass(slots=True, kw_only=True, eq=False)
class Job(Generic[PayloadT]):
    """One attempt at a job, as its handler sees it.

    ``attempt`` is 1-based and counts this attempt. ``checkpoint`` is the last value saved
    with :meth:`save_checkpoint` (in this attempt or an earlier one), or None. Generic over
    its payload's type: ``async def handler(job: Job[OrderPayload])``; ``Job`` alone is
    ``Job[Any]``.
    """

    id: int
    queue: str
    payload: PayloadT
    attempt: int
    max_attempts: int
    checkpoint: Any = None
    #: this job's handler time limit in seconds, or None for none
    timeout: float | None = None
    #: the name of the :class:`Schedule` that enqueued it, or None
    schedule: str | None = None
    #: the tick this job stands for (aware; not when it was enqueued); None for a job of no
    #: schedule, or a manual run (``batchworks schedules run``)
    scheduled_for: datetime | None = None
    #: the batch this job is a member of (``backend.add_to_batch(job.batch_id, ...)`` adds to
    #: it while this job runs), or None
    batch_id: int | None = None
    _saver: CheckpointSaver | None = field(default=None, repr=False)
    #: ClaimedJob.claimed_at, for the fence of this attempt's outcome
    _claimed_at: datetime | None = field(default=None, repr=False)

    async def save_checkpoint(self, value: Any) -> None:
        """Store ``value`` (JSON) with the job at once, so that the next attempt resumes from it.

        The write is fenced like a settle and extends the job's lease.

        :raises PayloadError: ``value`` is not storable JSON.
        :raises LeaseLost: this worker no longer holds the job; nothing was written.
        """
        if self._saver is None:
            raise LifecycleError(
                "this Job was not claimed by a Runner; it cannot save a checkpoint"
            )
        self.checkpoint = await self._saver(self.id, value)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """A job as stored, for inspection (``backend.get_job(id)``)."""

    id: int
    queue: str
    payload: Any
    state: JobState
    #: attempts used so far: a claim uses one; a shutdown release or a Snooze gives it back
    attempts: int
    max_attempts: int
    priority: int
    #: when the job is (or was) due to run
    run_at: datetime
    created_at: datetime
    #: when its last attempt started, and when it reached a final state
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: one entry per failed attempt, oldest first; also one for a succeeded attempt whose
    #: result could not be kept (not JSON, or too large): type ``PayloadError``, the message
    #: naming the type and what to return instead
    errors: tuple[ErrorEntry, ...] = ()
    #: what the handler returned, for a succeeded job
    result: Any = None
    dedupe_key: str | None = None
    checkpoint: Any = None
    #: the name of the worker that holds (or last held) the job
    worker: str | None = None
    #: the job's own handler time limit in seconds (None: the runner's ``job_timeout``)
    timeout: float | None = None
    #: the name of the :class:`Schedule` that enqueued it, or None
    schedule: str | None = None
    #: the tick it stands for; None for a job of no schedule, or a manual run
    scheduled_for: datetime | None = None
    #: while running: until when its worker's lease holds (it is recovered once past)
    lease_until: datetime | None = None
    #: an operator asked to cancel it while it runs: its worker cancels it at its next heartbeat
    cancel_requested: bool = False
    #: the group its queue's ``key_concurrency`` limits, given at enqueue
    concurrency_key: str | None = None
    #: the batch it is a member of (#16), or None
    batch_id: int | None = None

    @property
    def late_by(self) -> float | None:
        """Seconds from its tick to its enqueue (a tick caught up after downtime is late),
        or None for a job of no tick."""
        if self.scheduled_for is None:
            return None
        return max(0.0, (self.created_at - self.scheduled_for).total_seconds())
