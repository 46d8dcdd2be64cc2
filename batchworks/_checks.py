"""The checks of every argument batchworks takes: each bad one fails where it is passed (a
Runner's at construction, an enqueue's before anything is stored), with a
:class:`ConfigurationError` that names the argument, what it got and what to pass instead.

Gathered here so that a rule (a queue name, a duration, an attempt count) is written once.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from batchworks.errors import ConfigurationError
from batchworks.job import Job, JobState

_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
INT32 = 2**31 - 1  # the largest priority or max_attempts: PostgreSQL's integer
MAX_DEDUPE_KEY = 512  # characters


# -- names and durations ------------------------------------------------------------------------


def check_queue(queue: object) -> str:
    """Return ``queue`` if it is a valid queue name, or raise :class:`ConfigurationError`."""
    if not isinstance(queue, str) or not _QUEUE.fullmatch(queue):
        raise ConfigurationError(
            f"queue name {queue!r} is invalid: use 1-128 characters of letters, digits, "
            "'_', '-', '.' or ':', starting with a letter or digit"
        )
    return queue


def check_state(state: object) -> str | None:
    """Return a valid job state name (or None), or raise :class:`ConfigurationError`."""
    if state is None:
        return None
    try:
        return JobState(str(state)).value
    except ValueError:
        names = ", ".join(member.value for member in JobState)
        raise ConfigurationError(
            f"state {state!r} is not a job state: use one of {names}"
        ) from None


def seconds(value: float | timedelta, *, name: str) -> float:
    """A non-negative, finite duration in seconds from a number or a timedelta (what the
    public calls take: ``delay``, ``older_than``, ``timeout``)."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be seconds (a number) or a timedelta, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ConfigurationError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
    return value


def duration(value: object, name: str, *, zero: bool = False) -> float:
    """A number of seconds > 0 (>= 0 with ``zero``), for settings (timedelta not taken)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if zero else '> 0'} seconds, got {value}")
    return float(value)


# -- an enqueue's options -----------------------------------------------------------------------


def check_timeout(timeout: float | timedelta | None) -> float | None:
    """A job's own handler time limit: seconds > 0, or None for no limit of its own."""
    if timeout is None:
        return None
    limit = seconds(timeout, name="timeout")
    if limit == 0:
        raise ConfigurationError("timeout must be > 0 seconds; leave it out for no limit")
    return limit


def check_due(delay: float | timedelta | None, run_at: datetime | None) -> None:
    """At most one of ``delay`` and ``run_at``, and ``run_at`` with a time zone (``delay``'s
    value is checked by :func:`seconds`)."""
    if delay is not None and run_at is not None:
        raise ConfigurationError("pass delay= or run_at=, not both")
    if run_at is not None and (not isinstance(run_at, datetime) or run_at.tzinfo is None):
        raise ConfigurationError(
            f"run_at must be a timezone-aware datetime, got {run_at!r}; "
            "use datetime.now(timezone.utc) + timedelta(...)"
        )


def check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigurationError(f"priority must be an int, got {priority!r}")
    if not -INT32 <= priority <= INT32:
        raise ConfigurationError(f"priority must be within ±{INT32}, got {priority}")
    return priority


def check_max_attempts(max_attempts: object) -> int | None:
    """A job's own ``max_attempts`` (an int >= 1), or None to take the retry policy's."""
    if max_attempts is None:
        return None
    checked = positive_int(max_attempts, "max_attempts")
    if checked > INT32:
        raise ConfigurationError(f"max_attempts must be at most {INT32}, got {checked}")
    return checked


def check_label(value: object, name: str, most: int) -> str | None:
    """A dedupe key or a batch name: None, or a non-empty str of at most ``most`` characters
    without NUL; else :class:`ConfigurationError`."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > most or "\x00" in value:
        raise ConfigurationError(
            f"{name} must be a non-empty str of at most {most} characters "
            f"without NUL, got {value!r:.80}"
        )
    return value


def check_dedupe_key(key: object) -> str | None:
    """Return a valid dedupe key (or None), or raise :class:`ConfigurationError`."""
    key = check_label(key, "dedupe_key", MAX_DEDUPE_KEY)
    if key is None:
        return None
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError("dedupe_key contains a lone surrogate; pass valid text") from None
    return key


def check_dedupe_keys(keys: Sequence[str | None] | None, count: int) -> list[str | None]:
    """Dedupe keys for ``count`` payloads (all None when not given)."""
    if keys is None:
        return [None] * count
    if isinstance(keys, str) or len(keys) != count:
        raise ConfigurationError(
            "dedupe_keys must be a sequence with one key (or None) per payload"
        )
    return [check_dedupe_key(key) for key in keys]


# -- a retry policy -----------------------------------------------------------------------------


def check_retry_policy(max_attempts: object, wait: object, retry: object) -> None:
    """The fields of a :class:`~batchworks.RetryPolicy`."""
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise ConfigurationError(f"RetryPolicy max_attempts must be an int, got {max_attempts!r}")
    if max_attempts < 1:
        raise ConfigurationError(
            f"RetryPolicy max_attempts must be >= 1, got {max_attempts}; use 1 for no retries"
        )
    if not callable(wait) or not callable(retry):
        raise ConfigurationError(
            "RetryPolicy wait and retry take tenacity strategies, for example "
            "wait=tenacity.wait_fixed(2), retry=tenacity.retry_if_exception_type(OSError)"
        )


# -- a Runner's arguments -----------------------------------------------------------------------


def is_async(handler: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    # an instance whose class defines ``async def __call__``
    return inspect.iscoroutinefunction(type(handler).__call__)


def check_handlers(
    handlers: Mapping[str, Callable[[Job], Any]], sync_in_thread: bool
) -> dict[str, Callable[[Job], Any]]:
    if not isinstance(handlers, Mapping) or not handlers:
        raise ConfigurationError(
            "handlers must be a non-empty mapping of queue name to handler, "
            "for example {'emails': send_email}"
        )
    checked = {}
    for queue, handler in handlers.items():
        check_queue(queue)
        if not callable(handler):
            raise ConfigurationError(f"handler for queue {queue!r} is not callable: {handler!r}")
        if not sync_in_thread and not is_async(handler):
            name = getattr(handler, "__name__", repr(handler))
            raise ConfigurationError(
                f"handler {name} for queue {queue!r} is not an async function: define it with "
                "'async def', or pass sync_in_thread=True to run plain functions in threads"
            )
        checked[queue] = handler
    return checked


def check_queues(queues: Iterable[str] | None, handlers: Mapping[str, object]) -> tuple[str, ...]:
    if queues is None:
        return tuple(handlers)
    if isinstance(queues, str):
        raise ConfigurationError(f"queues takes a list of names, got the str {queues!r}")
    chosen = tuple(dict.fromkeys(queues))
    if not chosen:
        raise ConfigurationError("queues is empty: name at least one queue, or leave it out")
    for queue in chosen:
        check_queue(queue)
        if queue not in handlers:
            raise ConfigurationError(
                f"queue {queue!r} has no handler: add it to handlers, or remove it from queues "
                f"(handled: {', '.join(sorted(handlers))})"
            )
    return chosen
