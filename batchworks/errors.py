"""Exceptions of batchworks.

Two families, kept apart on purpose: handlers *raise* signals to steer the outcome of their
job, and batchworks *raises* errors when something is wrong with the input, the setup or the
backend::

    Exception
    ├── HandlerSignal                  raised by a handler to choose its job's outcome
    │   ├── Retryable                  retry (if attempts are left), whatever the policy says
    │   ├── Terminal                   fail now, whatever the policy says
    │   └── Snooze                     run again in `seconds`, without using an attempt
    └── BatchworksError                raised by batchworks
        ├── ConfigurationError         (also ValueError) bad Runner/backend arguments
        ├── PayloadError               (also ValueError, TypeError) a value that is not JSON
        ├── LifecycleError             (also RuntimeError) an object used in the wrong state
        ├── BackendError               the backend failed (driver errors are its __cause__)
        │   └── SchemaNotMigrated      the database has no batchworks schema yet
        ├── JobNotFound                (also LookupError) no job has that id (or it was purged)
        ├── BatchNotFound              (also LookupError) no batch has that id (or it was purged)
        ├── BatchClosed                (also RuntimeError) the batch takes no more members
        ├── LeaseLost                  this worker no longer holds the job
        ├── RunnerFailed               (also RuntimeError) a Runner's background task broke
        └── WorkerLost                 recorded on a job whose worker died or hung
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BatchClosed",
    "BatchNotFound",
    "BatchworksError",
    "ConfigurationError",
    "HandlerSignal",
    "JobNotFound",
    "LeaseLost",
    "LifecycleError",
    "PayloadError",
    "Retryable",
    "RunnerFailed",
    "SchemaNotMigrated",
    "Snooze",
    "Terminal",
    "WorkerLost",
]


class HandlerSignal(Exception):
    """Base of the exceptions a handler raises to choose its job's outcome."""


class Retryable(HandlerSignal):
    """The job failed in a way a later attempt may fix: retry it while attempts are left.

    Overrides the policy's ``retry`` predicate. ``delay`` (seconds), when given, replaces the
    policy's wait for this retry.
    """

    def __init__(self, message: str = "", *, delay: float | None = None) -> None:
        super().__init__(message)
        if delay is not None and delay < 0:
            raise ValueError(f"Retryable delay must be >= 0 seconds, got {delay!r}")
        self.delay = delay


class Terminal(HandlerSignal):
    """The job failed in a way no retry can fix: fail it now, whatever attempts are left."""


class Snooze(HandlerSignal):
    """Put the job back to run again in ``seconds``, without using an attempt."""

    def __init__(self, seconds: float) -> None:
        if not seconds >= 0:  # also rejects NaN
            raise ValueError(f"Snooze takes seconds >= 0, got {seconds!r}")
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = float(seconds)


class BatchworksError(Exception):
    """Base of the errors batchworks raises."""


class ConfigurationError(BatchworksError, ValueError):
    """An argument of a Runner, a backend or an enqueue call cannot work; the message says
    what to change."""


class PayloadError(BatchworksError, ValueError, TypeError):
    """A payload, result or checkpoint is not storable JSON (or is too large)."""


class LifecycleError(BatchworksError, RuntimeError):
    """An object was used in a state that does not allow it (a Runner run twice, a backend
    used after it was closed)."""


class BackendError(BatchworksError):
    """The backend could not do what was asked; the driver's error is the ``__cause__``."""


class SchemaNotMigrated(BackendError):
    """The database has no (or an older) batchworks schema: run ``await backend.migrate()``
    or ``batchworks migrate``."""


class JobNotFound(BatchworksError, LookupError):
    """No job has the id asked for: it never existed, or ``purge()`` deleted it."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            f"no job has id {job_id!r}: check the id enqueue() returned (a finished job is "
            "gone once purge() deleted it)"
        )
        self.job_id = job_id


class BatchNotFound(BatchworksError, LookupError):
    """No batch has the id asked for: it never existed, or ``purge()`` deleted it."""

    def __init__(self, batch_id: int) -> None:
        super().__init__(
            f"no batch has id {batch_id!r}: check the id enqueue_batch() returned (a finished "
            "batch is gone once purge() deleted it)"
        )
        self.batch_id = batch_id


class BatchClosed(BatchworksError, RuntimeError):
    """The batch takes no more members: it is closed with none pending, finished or
    cancelled. A closed batch takes members only while some are pending (from a running
    member's handler, say); open a new batch instead."""

    def __init__(self, batch_id: int, state: str) -> None:
        super().__init__(
            f"batch {batch_id} is {state} and takes no more members: add to a batch while it "
            "is open (before close_batch) or from a handler of one of its pending members, or "
            "enqueue a new batch"
        )
        self.batch_id = batch_id
        self.state = state


class LeaseLost(BatchworksError):
    """This worker no longer holds the job (it was presumed dead and the job moved on, or the
    job was cancelled): nothing was written. Let it propagate from the handler."""


class RunnerFailed(BatchworksError, RuntimeError):
    """A background task of the Runner (the one writing outcomes, or the heartbeats) failed
    with an unexpected error, so the run stopped rather than claim jobs it could not settle or
    keep; the error is the ``__cause__`` and was logged with its traceback. Jobs left running
    are recovered by the backend as for a lost worker."""


class WorkerLost(BatchworksError):
    """The worker running the job died, hung or restarted; recorded in the job's errors."""
