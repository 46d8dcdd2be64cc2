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


def check_filters(
    queue: object, state: object, schedule: object, error_type: object
) -> tuple[str | None, str | None, str | None, str | None]:
    """The filters of ``list_jobs``/``count_jobs``/``cancel_jobs``, checked."""
    names = [None if queue is None else check_queue(queue), check_state(state)]
    for name, value in (("schedule", schedule), ("error_type", error_type)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(f"{name} must be a non-empty str or None, got {value!r}")
        names.append(value if isinstance(value, str) else None)
    return names[0], names[1], names[2], names[3]


def check_job_id(value: object, name: str) -> int | None:
    """A job id (a keyset cursor, a bound of a filter), or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
        raise ConfigurationError(f"{name} must be a job id (a positive int) or None, got {value!r}")
    return value


def check_before(before: object) -> int | None:
    """A keyset cursor: a job id (``list_jobs`` returns the jobs below it), or None."""
    return check_job_id(before, "before")


def check_throughput(window: object, buckets: object) -> tuple[float, int]:
    """``throughput``'s window (seconds, above 0, at most a week) and bucket count (1-1440)."""
    span = duration(window, "window")
    if span > 7 * 86400:
        raise ConfigurationError(f"window must be at most a week (604800 s), got {window!r}")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= 1440:
        raise ConfigurationError(f"buckets must be an int from 1 to 1440, got {buckets!r}")
    return span, buckets


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
    return _check_key(key, "dedupe_key")


def check_dedupe_keys(keys: Sequence[str | None] | None, count: int) -> list[str | None]:
    """Dedupe keys for ``count`` payloads (all None when not given)."""
    return _check_keys(keys, count, "dedupe_keys", check_dedupe_key)


def check_concurrency_key(key: object) -> str | None:
    """Return a valid concurrency key (or None), or raise :class:`ConfigurationError`."""
    return _check_key(key, "concurrency_key")


def check_concurrency_keys(keys: Sequence[str | None] | None, count: int) -> list[str | None]:
    """Concurrency keys for ``count`` payloads (all None when not given)."""
    return _check_keys(keys, count, "concurrency_keys", check_concurrency_key)


def _check_key(key: object, name: str) -> str | None:
    key = check_label(key, name, MAX_DEDUPE_KEY)
    if key is None:
        return None
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{name} contains a lone surrogate; pass valid text") from None
    return key


def _check_keys(
    keys: Sequence[str | None] | None,
    count: int,
    name: str,
    check: Callable[[object], str | None],
) -> list[str | None]:
    if keys is None:
        return [None] * count
    if isinstance(keys, str) or len(keys) != count:
        raise ConfigurationError(f"{name} must be a sequence with one key (or None) per payload")
    return [check(key) for key in keys]


# -- a queue's flow control ---------------------------------------------------------------------

MAX_RATE = 10_000  # starts per window at most: each claim of the queue keeps that many times


def check_limit(value: object, name: str) -> int | None:
    """A queue's ``concurrency`` or ``key_concurrency``: an int >= 1, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= INT32:
        raise ConfigurationError(
            f"{name} must be an int >= 1 (or None to remove the limit), got {value!r}; "
            "to stop a queue use pause_queue()"
        )
    return value


def check_rate(rate: object) -> tuple[int, float] | None:
    """A queue's ``rate``: ``(n, seconds)``, at most n starts in any window of that many
    seconds, or None for no limit."""
    if rate is None:
        return None
    if not isinstance(rate, tuple) or len(rate) != 2:
        raise ConfigurationError(
            f"rate must be a tuple (n, seconds), for example (100, 60) for 100 starts a "
            f"minute, or None to remove it; got {rate!r}"
        )
    n, window = rate
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_RATE:
        raise ConfigurationError(f"rate's n must be an int from 1 to {MAX_RATE}, got {n!r}")
    return n, duration(window, "rate's seconds")


def check_queue_concurrency(
    caps: Mapping[str, int] | None, queues: Sequence[str], concurrency: int
) -> dict[str, int]:
    """A Runner's ``queue_concurrency``: a cap per queue it serves."""
    if caps is None:
        return {}
    if not isinstance(caps, Mapping):
        raise ConfigurationError(
            f"queue_concurrency must be a mapping of queue to cap, for example {{'emails': 5}}, "
            f"got {caps!r}"
        )
    checked = {}
    for queue, cap in caps.items():
        if queue not in queues:
            raise ConfigurationError(
                f"queue_concurrency names queue {queue!r}, which this runner does not serve "
                f"(its queues: {', '.join(queues)})"
            )
        checked[queue] = positive_int(cap, f"queue_concurrency[{queue!r}]")
        if checked[queue] > concurrency:
            raise ConfigurationError(
                f"queue_concurrency[{queue!r}] is {cap}, above the runner's concurrency "
                f"({concurrency}); lower it or raise concurrency"
            )
    return checked


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
