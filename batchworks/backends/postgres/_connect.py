"""Connecting: the options a user may pass to the connections a backend opens, and the first
connection retried with backoff while the server is not up yet.

A worker started beside its database (docker compose, a Kubernetes pod) routinely comes up
before PostgreSQL accepts connections. :func:`retry_connect` keeps trying with exponential
backoff and jitter (tenacity) for ``open_timeout`` seconds, logging each failed try, and gives
up with one clear :class:`BackendError`. Only errors a server that is starting, restarting or
still unreachable gives are retried: a wrong password or database name fails at once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg
import tenacity

from batchworks.errors import BackendError, ConfigurationError

__all__ = [
    "OPEN_TIMEOUT",
    "check_connect_options",
    "connection_options",
    "redact",
    "retry_connect",
    "transient",
]

logger = logging.getLogger("batchworks.backends.postgres")

OPEN_TIMEOUT = 60.0  # seconds open() keeps retrying the first connection
RETRY_MAX = 5.0  # seconds between tries at most (1 s, 2 s, 4 s, 5 s... plus jitter)
ATTEMPT_MIN = 5.0  # seconds a single try gets at least, even when little of the wait is left

T = TypeVar("T")

# What the backend sets itself: a user's value would be overridden or would break it.
_RESERVED = {
    "dsn": "pass the DSN as PostgresBackend's first argument",
    "min_size": "pass min_size= to PostgresBackend",
    "max_size": "pass max_size= to PostgresBackend",
    "init_size": "the pool opens min_size connections",
    "reset": "batchworks leaves no session state on its connections and resets nothing",
    "loop": "the pool runs on the running event loop",
    "connect": "batchworks opens its connections itself",
}
# Options of asyncpg.connect (every connection the backend opens, the LISTEN one too) and of
# asyncpg.create_pool (the pool's connections only).
_CONNECT_KEYS = frozenset(inspect.signature(asyncpg.connect).parameters) - set(_RESERVED)
_POOL_KEYS = frozenset({"setup", "init", "max_queries", "max_inactive_connection_lifetime"}) - set(
    _RESERVED
)

# A server that is starting, restarting, overloaded or not reachable yet (OSError covers
# refused connections, unknown host names and timeouts).
_TRANSIENT = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    # every host of a multi-host DSN answered, none read-write yet (a standby being promoted)
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)


def check_connect_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``connect_options`` of a backend, validated: a mapping of asyncpg's keyword
    arguments, none of them one the backend sets itself."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"connect_options must be a mapping of asyncpg keyword arguments, got {options!r}; "
            "for example connect_options={'statement_cache_size': 0}"
        )
    checked = dict(options)
    for key in checked:
        if key in _RESERVED:
            raise ConfigurationError(
                f"connect_options may not set {key!r}: batchworks sets it ({_RESERVED[key]})"
            )
        if key not in _CONNECT_KEYS and key not in _POOL_KEYS:
            known = ", ".join(sorted(_CONNECT_KEYS | _POOL_KEYS))
            raise ConfigurationError(
                f"connect_options has {key!r}, which asyncpg does not take; use one of {known}"
            )
    return checked


def connection_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``options`` that applies to a single connection (not to a pool)."""
    return {key: value for key, value in options.items() if key in _CONNECT_KEYS}


def redact(dsn: str) -> str:
    """``dsn`` without its password, for messages and logs."""
    dsn = re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def transient(exc: BaseException | None) -> bool:
    """True for an error a server that is (re)starting or not reachable yet gives (a DSN
    asyncpg cannot parse is an InterfaceError too, and no wait mends it)."""
    return isinstance(exc, _TRANSIENT) and not isinstance(
        exc, asyncpg.exceptions.ClientConfigurationError
    )


async def retry_connect(
    connect: Callable[[], Awaitable[T]], *, open_timeout: float, where: str
) -> T:
    """``await connect()``, retried with backoff for ``open_timeout`` seconds while the server
    is not reachable; raises :class:`BackendError` when it gives up or on a lasting error.
    Cancellation is never retried: it stops the wait at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + open_timeout

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "PostgreSQL at %s is not reachable yet (try %d: %s: %s); trying again in %.1fs, "
            "for up to %.0fs in all",
            where,
            state.attempt_number,
            type(exc).__name__,
            exc,
            wait,
            open_timeout,
            extra={"action": "connect_retry", "attempt": state.attempt_number},
        )

    # tenacity's start (1 s, up to 1 s of jitter): initial= warns on tenacity 9.2 and
    # multiplier= fails before it.
    backoff = tenacity.wait_exponential_jitter(max=RETRY_MAX)

    def wait(state: tenacity.RetryCallState) -> float:
        # The last try comes at the deadline, not a whole backoff after it.
        return min(backoff(state), max(0.0, deadline - loop.time()))

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_delay(open_timeout),
        wait=wait,
        retry=tenacity.retry_if_exception(transient),
        before_sleep=log_retry,
        reraise=True,
    )
    tries = 0
    try:
        async for attempt in retrying:
            with attempt:
                tries += 1
                # A black-holed address would hold one try for asyncpg's own 60 s timeout.
                async with asyncio.timeout(max(deadline - loop.time(), ATTEMPT_MIN)):
                    return await connect()
    except _TRANSIENT as exc:
        if not transient(exc):
            raise
        waited = (
            f"gave up after {tries} tries in {open_timeout:g}s"
            if tries > 1
            else "it does not answer"
        )
        raise BackendError(
            f"could not connect to PostgreSQL at {where}: {waited} ({type(exc).__name__}: "
            f"{exc}); check that the server is up and reachable, or wait longer for it with "
            "PostgresBackend(open_timeout=...) or --open-timeout"
        ) from exc
    except asyncpg.PostgresError as exc:
        raise BackendError(
            f"could not connect to PostgreSQL at {where}: {type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover
