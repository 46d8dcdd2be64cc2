"""Retry policies on tenacity's own strategy objects, and the pure mapping from an exception
to an outcome (:func:`classify`)."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import tenacity
from tenacity.retry import RetryBaseT
from tenacity.wait import WaitBaseT

from batchworks._checks import check_retry_policy
from batchworks.errors import Retryable, Snooze, Terminal
from batchworks.outcome import Decision, OutcomeKind

__all__ = ["DEFAULT_MAX_ATTEMPTS", "RetryPolicy", "classify"]

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MAX_WAIT = 300.0  # seconds


def _default_wait() -> WaitBaseT:
    # 1 s, 2 s, 4 s ... plus up to 1 s of jitter, capped at 5 minutes. tenacity's own defaults
    # start at 1 s; passing initial= warns on tenacity 9.2 and multiplier= fails before it.
    return tenacity.wait_exponential_jitter(max=DEFAULT_MAX_WAIT)


def _default_retry() -> RetryBaseT:
    return tenacity.retry_if_not_exception_type(Terminal)


# tenacity's strategies read a RetryCallState; this is the Retrying object it points back to.
_RETRYING = tenacity.Retrying()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed job is retried, and after how long.

    :param max_attempts: attempts a job gets in all (a job's own ``max_attempts``, given at
        enqueue, wins over this).
    :param wait: any tenacity wait strategy; it is computed for the failed attempt's number,
        so ``wait_exponential`` grows from one attempt to the next as it does in tenacity.
    :param retry: any tenacity retry predicate: true means retryable, false terminal.
        :class:`Retryable` and :class:`Terminal` raised by a handler override it.

    The default: 5 attempts, exponential backoff with jitter from 1 s up to 5 minutes, every
    exception retryable but :class:`Terminal`.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    wait: WaitBaseT = field(default_factory=_default_wait)
    retry: RetryBaseT = field(default_factory=_default_retry)

    def __post_init__(self) -> None:
        check_retry_policy(self.max_attempts, self.wait, self.retry)

    def _state(self, exc: BaseException, attempt: int) -> tenacity.RetryCallState:
        state = tenacity.RetryCallState(_RETRYING, None, (), {})
        state.attempt_number = attempt
        state.set_exception((type(exc), exc, exc.__traceback__))
        return state

    def is_retryable(self, exc: BaseException, attempt: int = 1) -> bool:
        """True when the policy would retry ``exc`` (attempts aside)."""
        if isinstance(exc, Terminal):
            return False
        if isinstance(exc, Retryable):
            return True
        return bool(self.retry(self._state(exc, attempt)))

    def wait_for(self, exc: BaseException, attempt: int) -> float:
        """Seconds to wait before retrying after failed attempt number ``attempt``."""
        if isinstance(exc, Retryable) and exc.delay is not None:
            return exc.delay
        return max(0.0, float(self.wait(self._state(exc, attempt))))


def classify(exc: BaseException, attempt: int, max_attempts: int, policy: RetryPolicy) -> Decision:
    """Map the exception that ended attempt ``attempt`` of ``max_attempts`` to a decision.

    Pure: no I/O, no clock. A :class:`Snooze` never uses an attempt; a retryable error
    with no attempts left fails the job.
    """
    if isinstance(exc, Snooze):
        return Decision(OutcomeKind.SNOOZED, exc.seconds)
    if not policy.is_retryable(exc, attempt) or attempt >= max_attempts:
        return Decision(OutcomeKind.FAILED)
    return Decision(OutcomeKind.RETRIED, policy.wait_for(exc, attempt))


def describe_exception(exc: BaseException, attempt: int, limit: int = 2000) -> dict[str, object]:
    """The error-history entry for an attempt that ended with ``exc`` (without ``at``).

    The traceback keeps its last ``limit`` characters, where the failing frame is.
    """
    lines = traceback.format_exception(exc)
    text = "".join(lines)
    if len(text) > limit:
        text = "…" + text[-limit:]
    return {
        "attempt": attempt,
        "type": type(exc).__name__,
        "message": str(exc)[:limit],
        "traceback": text,
    }
