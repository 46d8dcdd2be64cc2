"""One attempt of one job: run its handler under its time limit and telemetry, and map what
happened to an :class:`Outcome` (the mapping itself is :func:`batchworks.retry.classify`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread

from batchworks import _json
from batchworks._checks import is_async
from batchworks.backends.base import ClaimedJob
from batchworks.errors import PayloadError, Snooze
from batchworks.job import Job
from batchworks.outcome import Outcome, OutcomeKind
from batchworks.retry import RetryPolicy, classify, describe_exception
from batchworks.tracing import Telemetry

logger = logging.getLogger("batchworks.runner")


@dataclass(slots=True, eq=False)
class Held:
    """A claimed job this runner holds, from claim until its outcome is buffered."""

    job: Job
    claim: ClaimedJob
    task: asyncio.Task[None] | None = None
    started: bool = False
    #: why the runner cancelled it: "shutdown", "operator", "lost" or "expired" (its lease
    #: ran out by this worker's own clock: no heartbeat got through)
    cancel_reason: str | None = None


# What a cancelled attempt counts as in telemetry, by why the runner cancelled it.
CANCELLED_AS = {
    None: "cancelled",
    "shutdown": "released",
    "operator": "cancelled",
    "lost": "lost",
    "expired": "lost",
}


class Attempts:
    """Runs attempts for a Runner: its handlers, its retry policy, its telemetry."""

    def __init__(
        self,
        handlers: Mapping[str, Callable[[Job], Any]],
        policy: RetryPolicy,
        telemetry: Telemetry,
    ) -> None:
        self._handlers = handlers
        self._policy = policy
        self.telemetry = telemetry
        #: the largest result kept, in bytes of JSON: the backend's max_payload_bytes
        self.result_limit = _json.MAX_PAYLOAD_BYTES
        #: set by the Runner when plain handlers may run in threads
        self.thread_limiter: anyio.CapacityLimiter | None = None

    async def run(self, held: Held) -> Outcome:
        """Run one attempt inside its telemetry: a ``process`` span and the job metrics."""
        job, claim, telemetry = held.job, held.claim, self.telemetry
        if not (telemetry.tracing or telemetry.metrics):  # no SDK: nothing to start or end
            return (await self._run_handler(job))[0]
        watch = telemetry.start_job(
            job.id, job.queue, job.attempt, claim.trace_context, claim.waited
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
        encoded = self._encode_result(job, result)
        return Outcome(job.id, OutcomeKind.SUCCEEDED, result_json=encoded, queue=job.queue), None

    async def _call(self, handler: Callable[[Job], Any], job: Job) -> Any:
        if self.thread_limiter is not None and not is_async(handler):
            return await anyio.to_thread.run_sync(
                handler, job, abandon_on_cancel=True, limiter=self.thread_limiter
            )
        return await handler(job)

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
                extra={
                    "action": f"job_{decision.kind.value}",
                    "job_id": job.id,
                    "queue": job.queue,
                    "attempt": job.attempt,
                },
            )
        return Outcome(job.id, decision.kind, decision.delay, error=error, queue=job.queue)

    def _encode_result(self, job: Job, result: Any) -> str | None:
        if result is None:
            return None
        try:
            return _json.dumps(result, what=f"result of job {job.id}", limit=self.result_limit)
        except PayloadError as exc:
            # The work is done; failing the job now would only run it again.
            logger.warning(
                "%s; the job succeeded but its result was not kept",
                exc,
                extra={"action": "result_dropped", "job_id": job.id, "queue": job.queue},
            )
            return None

    @staticmethod
    def cancelled_outcome(job: Job, reason: str) -> Outcome | None:
        """The outcome of an attempt the runner cancelled (None: nothing may be written)."""
        if reason == "lost":
            return None  # the job moved on: there is nothing this worker may write
        if reason == "operator":
            return Outcome(
                job.id,
                OutcomeKind.CANCELLED,
                queue=job.queue,
                error={
                    "attempt": job.attempt,
                    "type": "Cancelled",
                    "message": "cancelled by an operator",
                    "traceback": None,
                },
            )
        # "shutdown", and "expired": the job may have moved on or not (a partition, or a
        # stalled database), so it is put back without using an attempt, fenced: the write
        # changes nothing if another worker recovered it meanwhile.
        return Outcome(job.id, OutcomeKind.RELEASED, queue=job.queue)
