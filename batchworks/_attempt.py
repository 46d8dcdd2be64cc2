"""One attempt of one job: run its handler under its time limit and telemetry, and map what
happened to an :class:`Outcome` (the mapping itself is :func:`batchworks.retry.classify`)."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from batchworks import _json
from batchworks._checks import is_async
from batchworks._logs import log_extra
from batchworks.backends.base import ClaimedJob
from batchworks.errors import PayloadError, Snooze
from batchworks.job import ErrorEntry, Job
from batchworks.outcome import Outcome, OutcomeKind
from batchworks.retry import RetryPolicy, classify, describe_exception
from batchworks.tracing import Telemetry

logger = logging.getLogger(__name__)


class CancelReason(enum.StrEnum):
    """Why the runner cancelled a job it held."""

    #: the runner is stopping: the job goes back to the queue, no attempt used
    SHUTDOWN = "shutdown"
    #: an operator cancelled it (``batchworks cancel``): it ends cancelled
    OPERATOR = "operator"
    #: the backend says the job moved on (its lease was taken): nothing may be written
    LOST = "lost"
    #: its lease ran out by this worker's own clock (no heartbeat got through): put back,
    #: fenced, in case it has not moved on
    EXPIRED = "expired"


@dataclass(slots=True, eq=False)
class Held:
    """A claimed job this runner holds, from claim until its outcome is buffered.

    Changed only through its methods: a cancel must reach a task started later, and a task
    must not start for a job already cancelled.
    """

    job: Job
    claim: ClaimedJob
    #: the task running its attempt, while it runs (a pool's task, shared with other jobs)
    task: asyncio.Task[Any] | None = None
    started: bool = False
    #: why the runner cancelled it (None: it did not)
    cancel_reason: CancelReason | None = None

    def start(self, task: asyncio.Task[Any] | None) -> None:
        """Its handler is about to run in ``task`` (a cancel from now on cancels it)."""
        self.started = True
        self.task = task

    def finish(self) -> None:
        """Its attempt ended: a cancel of the task it ran in no longer concerns it. A cancel
        this job was sent is taken back from the task, which goes on to other jobs."""
        task, self.task = self.task, None
        if task is not None and self.cancel_reason is not None:
            task.uncancel()

    def cancel(self, reason: CancelReason) -> None:
        """Cancel the job for ``reason``, once: the first reason counts. A job without a
        task yet sees the reason when its task starts."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            if self.task is not None:
                self.task.cancel()


# What a cancelled attempt counts as in telemetry, by why the runner cancelled it.
CANCELLED_AS = {
    None: "cancelled",
    CancelReason.SHUTDOWN: "released",
    CancelReason.OPERATOR: "cancelled",
    CancelReason.LOST: "lost",
    CancelReason.EXPIRED: "lost",
}


class Attempts:
    """Runs attempts for a Runner: its handlers, its retry policy, its telemetry."""

    def __init__(
        self,
        handlers: Mapping[str, Callable[[Job], Any]],
        policy: RetryPolicy,
        telemetry: Telemetry,
        *,
        result_limit: int = _json.MAX_PAYLOAD_BYTES,
        threads: int | None = None,
    ) -> None:
        """:param result_limit: the largest result kept, in bytes of JSON (the backend's
            ``max_payload_bytes``).
        :param threads: run plain (non-async) handlers in at most this many threads at once
            (None: every handler is async).
        """
        self._handlers = handlers
        self._policy = policy
        self._telemetry = telemetry
        self._result_limit = result_limit
        self._threads = threads
        # Made on first use: an anyio limiter needs a running event loop, and a Runner (which
        # makes this) may be built before one runs.
        self._thread_limiter: anyio.CapacityLimiter | None = None
        # Plain handlers running in threads: how many, by job id (each thread counts itself).
        self._in_threads: dict[int, int] = {}
        self._threads_lock = threading.Lock()

    async def run(self, held: Held) -> Outcome:
        """Run one attempt inside its telemetry: a ``process`` span and the job metrics."""
        job, claim, telemetry = held.job, held.claim, self._telemetry
        if not (telemetry.tracing or telemetry.metrics):  # no SDK: nothing to start or end
            return (await self._run_handler(job))[0]
        watch = telemetry.start_job(
            job.id, job.queue, job.attempt, claim.trace_context, claim.waited, claim.batch_id
        )
        outcome: Outcome | None = None
        error: BaseException | None = None
        try:
            outcome, error = await self._run_handler(job)
            return outcome
        finally:
            watch.finish(outcome.kind.value if outcome else CANCELLED_AS[held.cancel_reason], error)

    async def _run_handler(self, job: Job) -> tuple[Outcome, BaseException | None]:
        handler = self._handlers[job.queue]
        try:
            if job.timeout is None:
                result = await self._call(handler, job)
            else:
                async with asyncio.timeout(job.timeout):
                    result = await self._call(handler, job)
        except (Exception, asyncio.CancelledError) as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                raise  # cancelled by us (shutdown, operator, lost lease) or the loop
            return self._failure(job, exc), exc
        if result is None:  # the common case: nothing to encode, nothing to check
            return ended(job, OutcomeKind.SUCCEEDED), None
        return self._success(job, result), None

    def in_thread(self, job_id: int) -> bool:
        """Whether a plain handler of job ``job_id`` may still run in a thread: one that a
        timeout or a cancel abandoned goes on until it returns, after its outcome is made."""
        return job_id in self._in_threads

    def _call(self, handler: Callable[[Job], Any], job: Job) -> Awaitable[Any]:
        """The handler's call, to await (not a coroutine of its own: one frame less a job)."""
        if self._threads is not None and not is_async(handler):
            if self._thread_limiter is None:
                self._thread_limiter = anyio.CapacityLimiter(self._threads)
            return self._call_in_thread(handler, job, self._thread_limiter)
        call: Awaitable[Any] = handler(job)
        return call

    async def _call_in_thread(
        self, handler: Callable[[Job], Any], job: Job, limiter: anyio.CapacityLimiter
    ) -> Any:
        """Run a plain handler in a thread, counted in ``in_thread`` while it runs: a slot of a
        limited queue is not handed over while its handler may run (#14). A thread that starts
        only after its call was abandoned does not run the handler, so what is not counted when
        the outcome is made never runs."""
        lock, counts = self._threads_lock, self._in_threads
        abandoned = False

        def call() -> Any:
            with lock:
                if abandoned:
                    return None
                counts[job.id] = counts.get(job.id, 0) + 1
            try:
                return handler(job)
            finally:
                with lock:
                    counts[job.id] -= 1
                    if not counts[job.id]:
                        del counts[job.id]

        try:
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=limiter)
        except BaseException:
            with lock:
                abandoned = True
            raise

    def _failure(self, job: Job, exc: BaseException) -> Outcome:
        decision = classify(exc, job.attempt, job.max_attempts, self._policy)
        error = None if isinstance(exc, Snooze) else describe_exception(exc, job.attempt)
        if decision.kind is not OutcomeKind.SNOOZED:
            logger.info(
                "job %s attempt %d/%d %s: %s: %s",
                job.id,
                job.attempt,
                job.max_attempts,
                "will be retried" if decision.kind is OutcomeKind.RETRIED else "failed",
                type(exc).__name__,
                exc,
                extra=log_extra(
                    f"job_{decision.kind.value}",
                    job_id=job.id,
                    queue=job.queue,
                    attempt=job.attempt,
                ),
            )
        return ended(job, decision.kind, decision.delay, error=error)

    def _success(self, job: Job, result: Any) -> Outcome:
        """A succeeded attempt that returned a value: keep it as JSON, or, if it cannot be
        kept, say so in the job's error history. The job stays succeeded: its side effects
        happened, and failing it now would only run them again."""
        try:
            encoded = _json.dumps(result, what=f"result of job {job.id}", limit=self._result_limit)
        except PayloadError as exc:
            logger.warning(
                "%s; the job succeeded but its result was not kept",
                exc,
                extra=log_extra(
                    "result_dropped", job_id=job.id, queue=job.queue, attempt=job.attempt
                ),
            )
            error = {
                "attempt": job.attempt,
                "type": type(exc).__name__,
                "message": f"{exc}; the job succeeded and will not run again, but its result "
                "was not kept",
                "traceback": None,
            }
            return ended(job, OutcomeKind.SUCCEEDED, error=error)
        return ended(job, OutcomeKind.SUCCEEDED, result_json=encoded)

    @staticmethod
    def cancelled_outcome(job: Job, reason: CancelReason) -> Outcome | None:
        """The outcome of an attempt the runner cancelled (None: nothing may be written)."""
        if reason is CancelReason.LOST:
            return None  # the job moved on: there is nothing this worker may write
        if reason is CancelReason.OPERATOR:
            return ended(
                job,
                OutcomeKind.CANCELLED,
                error={
                    "attempt": job.attempt,
                    "type": "Cancelled",
                    "message": "cancelled by an operator",
                    "traceback": None,
                },
            )
        # SHUTDOWN, and EXPIRED: the job may have moved on or not (a partition, or a
        # stalled database), so it is put back without using an attempt, fenced: the write
        # changes nothing if another worker recovered it meanwhile.
        return released(job)


def ended(
    job: Job | ClaimedJob,
    kind: OutcomeKind,
    delay: float = 0.0,
    *,
    result_json: str | None = None,
    error: ErrorEntry | None = None,
) -> Outcome:
    """The outcome of ``job``'s attempt, fenced by what its claim gave it: the attempt and the
    claim's time (every outcome the runner writes is made here, so none goes unfenced)."""
    claimed_at = job.claimed_at if isinstance(job, ClaimedJob) else job._claimed_at
    return Outcome(
        job.id,
        kind,
        delay,
        result_json=result_json,
        error=error,
        queue=job.queue,
        attempt=job.attempt,
        claimed_at=claimed_at,
    )


def released(job: Job | ClaimedJob) -> Outcome:
    """A job put back unstarted, or cut short by a stop: queued again now, its attempt given
    back, fenced by the attempt it was claimed for."""
    return ended(job, OutcomeKind.RELEASED)
