"""Checks of a Runner's arguments: each bad one fails at construction, saying what to change."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from batchworks.backends.base import check_queue
from batchworks.errors import ConfigurationError
from batchworks.job import Job


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


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
    return value


def duration(value: object, name: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        raise ConfigurationError(f"{name} must be {'>= 0' if zero else '> 0'} seconds, got {value}")
    return float(value)
