"""The outcome of one attempt: what the runner decides and what a backend writes.

This is the vocabulary between :mod:`batchworks.retry` (which decides), the runner (which
collects) and the backends (which settle many outcomes in one round trip).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from batchworks._quick import quick_init
from batchworks.job import ErrorEntry, JobState

__all__ = ["Decision", "Outcome", "OutcomeKind"]


class OutcomeKind(enum.StrEnum):
    """How one attempt ended; each kind maps to a state and to whether the attempt counts."""

    #: the handler returned: succeeded
    SUCCEEDED = "succeeded"
    #: retryable error with attempts left: queued again after a delay
    RETRIED = "retried"
    #: terminal error, or no attempts left: failed
    FAILED = "failed"
    #: the handler raised Snooze: queued again after its delay, attempt given back
    SNOOZED = "snoozed"
    #: cancelled by a shutdown before it could finish: queued now, attempt given back
    RELEASED = "released"
    #: cancelled by an operator while it ran: cancelled
    CANCELLED = "cancelled"

    @property
    def state(self) -> JobState:
        """The state a job settled with this outcome rests in."""
        return _STATE[self]

    @property
    def uses_attempt(self) -> bool:
        """False where the claim's attempt is given back."""
        return self not in (OutcomeKind.SNOOZED, OutcomeKind.RELEASED)

    @property
    def requeues(self) -> bool:
        """True where the job goes back to the queue, due after the outcome's delay."""
        return self.state is JobState.QUEUED

    @property
    def finishes(self) -> bool:
        """True where the job reaches a final state (it gets its finished_at)."""
        return self.state.is_final


_STATE = {
    OutcomeKind.SUCCEEDED: JobState.SUCCEEDED,
    OutcomeKind.RETRIED: JobState.QUEUED,
    OutcomeKind.FAILED: JobState.FAILED,
    OutcomeKind.SNOOZED: JobState.QUEUED,
    OutcomeKind.RELEASED: JobState.QUEUED,
    OutcomeKind.CANCELLED: JobState.CANCELLED,
}


@dataclass(frozen=True, slots=True)
class Decision:
    """What :func:`batchworks.retry.classify` makes of an exception."""

    kind: OutcomeKind
    #: seconds until the job is due again (RETRIED, SNOOZED)
    delay: float = 0.0


@quick_init
@dataclass(frozen=True, slots=True)
class Outcome:
    """One settled attempt, as handed to :meth:`Backend.settle`."""

    job_id: int
    kind: OutcomeKind
    #: seconds from now, on the backend's clock, until a re-queued job is due
    delay: float = 0.0
    #: the handler's return value as JSON text (SUCCEEDED only)
    result_json: str | None = None
    #: the entry for the job's error history: a failed attempt's, or a succeeded one's whose
    #: result could not be kept (SUCCEEDED with no result_json)
    error: ErrorEntry | None = None
    #: the job's queue, for metrics (backends do not need it)
    queue: str = ""
    #: the attempt this outcome ends (Job.attempt): the settle is fenced by it as well as by
    #: the worker token, so a worker that claimed the job again after its lease ran out cannot
    #: settle the new attempt with the old one's outcome. None: fenced by the token alone.
    attempt: int | None = None
    #: the claim this outcome ends (ClaimedJob.claimed_at): fenced by it as well, so that an
    #: outcome of a job lost in a failover cannot land on the job that reuses its id. None: not
    #: fenced by it.
    claimed_at: datetime | None = None
