"""LISTEN/NOTIFY wake-ups for idle runners, on a connection of their own.

The connection is kept up: when it drops (or stops answering a periodic probe, as after a
network partition that closes nothing) it is replaced, with backoff, and every waiter is
woken after each (re)connect, since jobs may have been enqueued while nobody listened.
Until it is back, runners fall back to polling.

Right after each LISTEN the listener sends itself a NOTIFY through the backend's pool, the way
enqueues send theirs. A connection that goes through PgBouncer in transaction pooling mode
takes LISTEN without complaint and never hears a thing: when the probe does not come back
within ``DELIVERY_TIMEOUT``, the listener logs one warning (how to fix it: ``listen_dsn=``)
and stops, and idle runners poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("batchworks.backends.postgres")

RETRY_MAX = 5.0  # seconds between reconnects, at most
PROBE_INTERVAL = 30.0  # seconds between liveness probes of an idle connection
PROBE_TIMEOUT = 5.0  # seconds a probe may take before the connection counts as dead
DELIVERY_TIMEOUT = 5.0  # seconds a NOTIFY to itself may take to come back after LISTEN

Connect = Callable[[], Awaitable[Any]]
Release = Callable[[Any], Awaitable[None]]
Notify = Callable[[str], Awaitable[None]]


class _Undelivered(Exception):
    """The NOTIFY sent right after LISTEN never came back."""


class Listener:
    """Wakes :meth:`event` waiters on every NOTIFY on ``channel``."""

    def __init__(self, channel: str, connect: Connect, release: Release, notify: Notify) -> None:
        self._channel = channel
        self._connect = connect
        self._release = release
        self._notify = notify
        # The payload of the NOTIFY in flight to ourselves (no queue name has a space) and
        # the event its arrival sets.
        self._probe = f"#probe {uuid.uuid4().hex}"
        self._probe_back = asyncio.Event()
        #: False once notifications were found not to arrive (then runners poll)
        self.delivers: bool | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._closed = False

    def start(self) -> None:
        """Start listening in the background (once)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="batchworks:listen")

    @property
    def event(self) -> asyncio.Event:
        """The event the next NOTIFY (or reconnect) sets; take it before checking for work."""
        return self._wake

    def wake(self) -> None:
        # Each waiter holds the event that was current when it started waiting; a fresh one
        # takes its place, so one runner's wake-up never swallows another's.
        self._wake.set()
        self._wake = asyncio.Event()

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    def terminate(self) -> None:
        """Cut the connection without a goodbye (a close that got no answer)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _run(self) -> None:
        delay = 0.1
        while not self._closed:
            lost = asyncio.Event()
            try:
                conn = await self._connect()
                self._conn = conn
                conn.add_termination_listener(lambda _conn, event=lost: event.set())
                await conn.add_listener(self._channel, self._on_notify)
            except Exception as exc:
                await self._drop()
                logger.warning(
                    "LISTEN connection failed (%s: %s); polling until it is back, retry in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"action": "listen_failed"},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = 0.1
            self.wake()
            try:
                await self._check_delivery(lost)
            except _Undelivered:
                await self._drop()
                return  # polling from now on: reconnecting would not make it deliver
            await self._watch(conn, lost)
            await self._drop()
            logger.warning("LISTEN connection lost; reconnecting", extra={"action": "listen_lost"})

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when the connection is gone or stops answering."""
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_INTERVAL):
                    await lost.wait()
                return
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await conn.execute("SELECT 1")
            except Exception:
                return

    async def _check_delivery(self, lost: asyncio.Event) -> None:
        """NOTIFY ourselves through the pool; raise :class:`_Undelivered` (after a warning)
        when it does not come back. A NOTIFY that cannot be sent (the database is down) or a
        connection lost meanwhile proves nothing: the next connection checks again."""
        self._probe_back.clear()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await self._notify(self._probe)
        except Exception:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DELIVERY_TIMEOUT):
                await _first(self._probe_back, lost)
        if self._probe_back.is_set():
            self.delivers = True
            return
        if lost.is_set():
            return
        self.delivers = False
        logger.warning(
            "LISTEN hears no NOTIFY: one sent to itself right after LISTEN did not come back "
            "within %.0fs, so idle runners are not woken by enqueues and poll instead (every "
            "poll_interval). A connection through PgBouncer in transaction pooling mode does "
            "this: pass PostgresBackend(listen_dsn=...) a direct connection to PostgreSQL",
            DELIVERY_TIMEOUT,
            extra={"action": "listen_undelivered"},
        )
        raise _Undelivered

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload == self._probe:
            self._probe_back.set()
            return
        self.wake()

    async def _drop(self) -> None:
        # self._conn is cleared only once it is released: a close cut short by its time limit
        # still finds it, to terminate it.
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                # UNLISTEN before a connection goes back to a pool: a pool created with a
                # reset= of its own would keep it listening for its next user.
                await conn.remove_listener(self._channel, self._on_notify)
            with contextlib.suppress(Exception):
                await self._release(conn)
        self._conn = None


async def _first(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
