"""RetryPolicy and the pure classify(exc, attempt, max_attempts, policy) -> Decision."""

from __future__ import annotations

import math
from typing import Any

import pytest
import tenacity

from batchworks import ConfigurationError, Retryable, RetryPolicy, Snooze, Terminal
from batchworks.outcome import Decision, OutcomeKind
from batchworks.retry import classify


class FlakyError(Exception):
    """A transient error of the kind a retry fixes."""


def retried(exc: BaseException, attempt: int = 1, policy: RetryPolicy | None = None) -> float:
    """The delay classify gives ``exc`` when it must be retried; fails the test otherwise."""
    decision = classify(exc, attempt, 100, policy or RetryPolicy())
    assert decision.kind is OutcomeKind.RETRIED, decision
    return decision.delay


class TestDefaultPolicy:
    def test_allows_five_attempts(self) -> None:
        policy = RetryPolicy()

        assert policy.max_attempts == 5
        assert classify(FlakyError(), 4, policy.max_attempts, policy).kind is OutcomeKind.RETRIED
        assert classify(FlakyError(), 5, policy.max_attempts, policy).kind is OutcomeKind.FAILED

    @pytest.mark.parametrize("attempt", range(1, 13))
    def test_waits_exponentially_with_jitter_from_one_second_up_to_five_minutes(
        self, attempt: int
    ) -> None:
        policy = RetryPolicy()
        low = min(300.0, 2.0 ** (attempt - 1))
        high = min(300.0, 2.0 ** (attempt - 1) + 1.0)

        delays = [retried(FlakyError(), attempt, policy) for _ in range(50)]

        assert all(low <= delay <= high for delay in delays), (low, high, delays)

    def test_jitter_varies_the_wait(self) -> None:
        delays = {retried(FlakyError(), 3) for _ in range(20)}

        assert len(delays) > 1

    def test_wait_never_exceeds_five_minutes(self) -> None:
        assert retried(FlakyError(), 60) == 300.0

    @pytest.mark.parametrize(
        "exc",
        [FlakyError("x"), ValueError("x"), KeyError("x"), OSError("x"), TimeoutError()],
        ids=lambda exc: type(exc).__name__,
    )
    def test_every_exception_is_retryable(self, exc: Exception) -> None:
        assert classify(exc, 1, 5, RetryPolicy()).kind is OutcomeKind.RETRIED

    def test_terminal_is_not_retryable(self) -> None:
        assert classify(Terminal("bad input"), 1, 5, RetryPolicy()) == Decision(OutcomeKind.FAILED)


class TestWaitStrategies:
    def test_wait_exponential_doubles_with_the_attempt_number(self) -> None:
        policy = RetryPolicy(max_attempts=10, wait=tenacity.wait_exponential(multiplier=1))

        delays = [retried(FlakyError(), attempt, policy) for attempt in (1, 2, 3, 4)]

        assert delays == [1, 2, 4, 8]

    def test_wait_fixed_is_the_same_for_every_attempt(self) -> None:
        policy = RetryPolicy(max_attempts=10, wait=tenacity.wait_fixed(7))

        assert [retried(FlakyError(), attempt, policy) for attempt in (1, 2, 9)] == [7, 7, 7]

    def test_wait_chain_picks_the_strategy_of_the_attempt_number(self) -> None:
        wait = tenacity.wait_chain(
            tenacity.wait_fixed(1), tenacity.wait_fixed(10), tenacity.wait_fixed(100)
        )
        policy = RetryPolicy(max_attempts=10, wait=wait)

        delays = [retried(FlakyError(), attempt, policy) for attempt in (1, 2, 3, 4, 5)]

        assert delays == [1, 10, 100, 100, 100]

    def test_combined_waits_add_up(self) -> None:
        policy = RetryPolicy(wait=tenacity.wait_fixed(3) + tenacity.wait_exponential(multiplier=1))

        assert retried(FlakyError(), 3, policy) == 3 + 4

    def test_wait_strategy_sees_the_exception(self) -> None:
        def wait(state: tenacity.RetryCallState) -> float:
            assert state.outcome is not None
            return 30.0 if isinstance(state.outcome.exception(), OSError) else 2.0

        policy = RetryPolicy(wait=wait)

        assert retried(OSError("reset"), 1, policy) == 30.0
        assert retried(FlakyError(), 1, policy) == 2.0

    def test_negative_wait_counts_as_no_wait(self) -> None:
        policy = RetryPolicy(wait=lambda state: -5.0)

        assert retried(FlakyError(), 1, policy) == 0.0


class TestRetryPredicates:
    def test_retry_if_exception_type_retries_only_that_type(self) -> None:
        policy = RetryPolicy(retry=tenacity.retry_if_exception_type(OSError))

        assert classify(ConnectionResetError(), 1, 5, policy).kind is OutcomeKind.RETRIED
        assert classify(ValueError(), 1, 5, policy).kind is OutcomeKind.FAILED

    def test_retry_if_not_exception_type_fails_that_type_at_once(self) -> None:
        policy = RetryPolicy(retry=tenacity.retry_if_not_exception_type(ValueError))

        assert classify(ValueError("bad"), 1, 5, policy).kind is OutcomeKind.FAILED
        assert classify(OSError("reset"), 1, 5, policy).kind is OutcomeKind.RETRIED

    def test_retry_if_exception_message_matches_the_message(self) -> None:
        policy = RetryPolicy(retry=tenacity.retry_if_exception_message(match="try again"))

        assert classify(FlakyError("try again later"), 1, 5, policy).kind is OutcomeKind.RETRIED
        assert classify(FlakyError("no such user"), 1, 5, policy).kind is OutcomeKind.FAILED

    def test_predicates_combined_with_or_retry_when_either_holds(self) -> None:
        retry = tenacity.retry_if_exception_type(OSError) | tenacity.retry_if_exception_message(
            match="try again"
        )
        policy = RetryPolicy(retry=retry)

        assert classify(OSError("x"), 1, 5, policy).kind is OutcomeKind.RETRIED
        assert classify(ValueError("try again"), 1, 5, policy).kind is OutcomeKind.RETRIED
        assert classify(ValueError("bad"), 1, 5, policy).kind is OutcomeKind.FAILED

    def test_predicates_combined_with_and_retry_only_when_both_hold(self) -> None:
        retry = tenacity.retry_if_exception_type(OSError) & tenacity.retry_if_not_exception_type(
            FileNotFoundError
        )
        policy = RetryPolicy(retry=retry)

        assert classify(ConnectionResetError(), 1, 5, policy).kind is OutcomeKind.RETRIED
        assert classify(FileNotFoundError(), 1, 5, policy).kind is OutcomeKind.FAILED
        assert classify(ValueError(), 1, 5, policy).kind is OutcomeKind.FAILED


class TestHandlerSignals:
    def test_retryable_is_retried_when_the_policy_calls_it_terminal(self) -> None:
        policy = RetryPolicy(retry=tenacity.retry_never, wait=tenacity.wait_fixed(9))

        assert classify(Retryable("rate limited"), 1, 5, policy) == Decision(OutcomeKind.RETRIED, 9)

    def test_terminal_fails_when_the_policy_retries_everything(self) -> None:
        policy = RetryPolicy(retry=tenacity.retry_always)

        assert classify(Terminal("bad input"), 1, 5, policy) == Decision(OutcomeKind.FAILED)

    def test_retryable_delay_replaces_the_policy_wait(self) -> None:
        policy = RetryPolicy(wait=tenacity.wait_fixed(60))

        assert retried(Retryable("rate limited", delay=2.5), 1, policy) == 2.5
        assert retried(Retryable("rate limited", delay=0), 1, policy) == 0.0

    def test_retryable_without_delay_uses_the_policy_wait(self) -> None:
        policy = RetryPolicy(wait=tenacity.wait_fixed(60))

        assert retried(Retryable("rate limited"), 1, policy) == 60

    def test_retryable_with_no_attempts_left_fails(self) -> None:
        assert classify(Retryable("again", delay=1), 3, 3, RetryPolicy()).kind is (
            OutcomeKind.FAILED
        )

    def test_snooze_is_snoozed_for_its_seconds(self) -> None:
        assert classify(Snooze(42), 1, 5, RetryPolicy()) == Decision(OutcomeKind.SNOOZED, 42.0)

    @pytest.mark.parametrize("attempt", [5, 6])
    def test_snooze_on_the_last_attempt_is_still_snoozed(self, attempt: int) -> None:
        assert classify(Snooze(42), attempt, 5, RetryPolicy()) == Decision(
            OutcomeKind.SNOOZED, 42.0
        )

    def test_snooze_ignores_the_policy_predicate_and_wait(self) -> None:
        policy = RetryPolicy(retry=tenacity.retry_never, wait=tenacity.wait_fixed(60))

        assert classify(Snooze(0.5), 1, 5, policy) == Decision(OutcomeKind.SNOOZED, 0.5)

    def test_snooze_does_not_use_an_attempt(self) -> None:
        assert not OutcomeKind.SNOOZED.uses_attempt
        assert OutcomeKind.RETRIED.uses_attempt

    @pytest.mark.parametrize("seconds", [-1, -0.001, math.nan])
    def test_snooze_rejects_negative_or_nan_seconds(self, seconds: float) -> None:
        with pytest.raises(ValueError, match="Snooze takes seconds >= 0"):
            Snooze(seconds)

    def test_retryable_rejects_a_negative_delay(self) -> None:
        with pytest.raises(ValueError, match="delay must be >= 0"):
            Retryable("x", delay=-1)


class TestAttemptsLeft:
    @pytest.mark.parametrize("attempt", [1, 2])
    def test_retryable_error_with_attempts_left_is_retried(self, attempt: int) -> None:
        policy = RetryPolicy(max_attempts=3, wait=tenacity.wait_fixed(5))

        assert classify(FlakyError(), attempt, 3, policy) == Decision(OutcomeKind.RETRIED, 5)

    @pytest.mark.parametrize("attempt", [3, 4])
    def test_retryable_error_with_no_attempts_left_fails(self, attempt: int) -> None:
        policy = RetryPolicy(max_attempts=3, wait=tenacity.wait_fixed(5))

        assert classify(FlakyError(), attempt, 3, policy) == Decision(OutcomeKind.FAILED)

    def test_max_attempts_argument_wins_over_the_policy(self) -> None:
        policy = RetryPolicy(max_attempts=1)

        assert classify(FlakyError(), 1, 2, policy).kind is OutcomeKind.RETRIED
        assert classify(FlakyError(), 2, 2, policy).kind is OutcomeKind.FAILED


class TestBadPolicies:
    @pytest.mark.parametrize("max_attempts", [0, -3])
    def test_max_attempts_below_one_is_refused(self, max_attempts: int) -> None:
        with pytest.raises(ConfigurationError, match=r"max_attempts must be >= 1.*use 1"):
            RetryPolicy(max_attempts=max_attempts)

    @pytest.mark.parametrize("max_attempts", ["3", True, 2.0, None])
    def test_max_attempts_that_is_not_an_int_is_refused(self, max_attempts: Any) -> None:
        with pytest.raises(ConfigurationError, match="max_attempts must be an int"):
            RetryPolicy(max_attempts=max_attempts)

    @pytest.mark.parametrize("field", ["wait", "retry"])
    @pytest.mark.parametrize("value", [5, "exponential", None])
    def test_strategy_that_is_not_callable_is_refused(self, field: str, value: Any) -> None:
        with pytest.raises(ConfigurationError, match=r"tenacity.*wait_fixed"):
            RetryPolicy(**{field: value})
