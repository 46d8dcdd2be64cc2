"""LISTEN/NOTIFY wake-ups for idle runners, on a connection of their own.

The connection is kept up: when it drops (or stops answering a periodic probe, as after a
network partition that closes nothing) it is replaced, with backoff, and every waiter is
woken after each (re)connect, since jobs may have been enqueued while nobody listened.
Until it is back, runners fall back to polling.

Right after each LISTEN the listener sends itself a NOTIFY through the backend's pool, the way
enqueues send theirs. A connection that goes through PgBouncer in transaction pooling mode
takes LISTEN without complaint and never hears a thing: when the probe does not come back
within ``DELIVERY_TIMEOUT``, the listener logs a warning (how to fix it: ``listen_dsn=``),
drops the connection, and idle runners poll. A server stalled past that bound, or a slow
failover, fails the check the same way for a moment only: so the listener checks again on a
new connection after ``RECHECK_FIRST`` seconds, doubling up to ``RECHECK_MAX``, and listens
again (saying so once, at INFO) as soon as a check is heard. Failed rechecks log at DEBUG: a
deaf pooler stays deaf, and one warning per streak says all there is to say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

logger = logging.getLogger("batchworks.backends.postgres")

RETRY_MAX = 5.0  # seconds between reconnects, at most
PROBE_INTERVAL = 30.0  # seconds between liveness probes of an idle connection
PROBE_TIMEOUT = 5.0  # seconds a probe may take before the connection counts as dead
DELIVERY_TIMEOUT = 5.0  # seconds a NOTIFY to itself may take to come back after LISTEN
# After a check that was not heard: a stall or a failover has usually passed within half a
# minute, so a passing one costs about that much polling; behind a pooler that never delivers,
# a check every 15 minutes costs a connection and a NOTIFY four times an hour, and a server
# that took long to come back is heard again within 15 minutes.
RECHECK_FIRST = 30.0  # seconds before the first recheck of delivery
RECHECK_MAX = 900.0  # seconds between rechecks of delivery, at most

Connect = Callable[[], Awaitable[Any]]
Release = Callable[[Any], Awaitable[None]]
#: called with each NOTIFY's payload on its channel, and with None after each (re)connect
OnNotify = Callable[[str | None], None]
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
        #: whether the last check heard its NOTIFY (None before one could tell); while False,
        #: runners poll and the check is made again later
        self.delivers: bool | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._closed = False
        self._subscribers: dict[str, OnNotify] = {}
        # asyncpg's listener callbacks, by channel: the same object must be given to remove
        self._adapters: dict[str, Callable[[Any, int, str, str], None]] = {}
        #: True while the connection listens (notifications are heard)
        self.listening = False

    def subscribe(self, channel: str, callback: OnNotify) -> None:
        """Also listen on ``channel`` (from the next connect on): ``callback(payload)`` on
        each NOTIFY, ``callback(None)`` after each (re)connect."""
        self._subscribers[channel] = callback
        self._adapters[channel] = lambda _conn, _pid, _channel, payload: callback(payload)

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
            # A pool's proxy already given back (a release that went through after a cancel)
            # refuses: there is nothing left of it to cut.
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()

    async def _run(self) -> None:
        delay = 0.1
        recheck = RECHECK_FIRST
        while not self._closed:
            lost = asyncio.Event()
            try:
                conn = await self._listen(lost)
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
            self.wake()
            try:
                heard = await self._check_delivery(lost, recheck)
            except _Undelivered:
                # Each recheck on a new connection: the one that missed its NOTIFY may be
                # the one that stalled.
                await self._drop()
                await asyncio.sleep(recheck)  # polling meanwhile
                recheck = min(recheck * 2, RECHECK_MAX)
                continue
            if heard is None and self.delivers is False:
                # The check proved nothing (its NOTIFY could not be sent, or the connection
                # went), and the last one missed: this connection may be as deaf, so it is
                # not listened on; checked again on the next, after the reconnect delay.
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = 0.1
            if heard:
                recheck = RECHECK_FIRST
            self.listening = True
            for callback in self._subscribers.values():
                callback(None)  # what ended while nobody listened was not heard
            await self._watch(conn, lost)
            await self._drop()
            logger.warning("LISTEN connection lost; reconnecting", extra={"action": "listen_lost"})

    async def _listen(self, lost: asyncio.Event) -> Any:
        """Connect, and LISTEN on every channel; ``lost`` is set when the connection goes."""
        conn = await self._connect()
        self._conn = conn
        conn.add_termination_listener(lambda _conn, event=lost: event.set())
        # The runners' channel last: operators (and tests) find the listener by its last
        # query in pg_stat_activity, LISTEN "batchworks_<schema>".
        for channel, adapter in self._adapters.items():
            await conn.add_listener(channel, adapter)
        await conn.add_listener(self._channel, self._on_notify)
        return conn

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

    async def _check_delivery(self, lost: asyncio.Event, recheck: float) -> bool | None:
        """NOTIFY ourselves through the pool: True when it comes back; raise
        :class:`_Undelivered` (after a warning, or at DEBUG while earlier checks failed too)
        when it does not, the next check being in ``recheck`` seconds. None: a NOTIFY that
        could not be sent (the database is down) or a connection lost meanwhile proves
        nothing."""
        self._probe_back.clear()
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await self._notify(self._probe)
        except Exception:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DELIVERY_TIMEOUT):
                await _first(self._probe_back, lost)
        if self._probe_back.is_set():
            if self.delivers is False:
                logger.info(
                    "LISTEN hears NOTIFY again: idle runners are woken by enqueues again",
                    extra={"action": "listen_delivered"},
                )
            self.delivers = True
            return True
        if lost.is_set():
            return None
        if self.delivers is False:
            logger.debug(
                "LISTEN still hears no NOTIFY; idle runners keep polling, next check in %.0fs",
                recheck,
                extra={"action": "listen_undelivered"},
            )
            raise _Undelivered
        self.delivers = False
        logger.warning(
            "LISTEN hears no NOTIFY: one sent to itself right after LISTEN did not come back "
            "within %.0fs, so idle runners are not woken by enqueues and poll instead (every "
            "poll_interval); it checks again in %.0fs, then less and less often. A connection "
            "through PgBouncer in transaction pooling mode does this: pass "
            "PostgresBackend(listen_dsn=...) a direct connection to PostgreSQL",
            DELIVERY_TIMEOUT,
            recheck,
            extra={"action": "listen_undelivered"},
        )
        raise _Undelivered

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload == self._probe:
            self._probe_back.set()
            return
        self.wake()

    async def _drop(self) -> None:
        self.listening = False
        # self._conn is cleared only once it is released: a close cut short by its time limit
        # still finds it, to terminate it.
        conn = self._conn
        if conn is not None:
            try:
                # UNLISTEN before a connection goes back to a pool: a pool created with a
                # reset= of its own would keep it listening for its next user. Bounded: a
                # connection dropped for missing its NOTIFY may be one that stalled, and
                # the recheck must not wait on it; cut, it is not listening any more.
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await self._unlisten(conn)
            except TimeoutError:
                conn.terminate()
            with contextlib.suppress(Exception):
                await self._release(conn)
        self._conn = None

    async def _unlisten(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            await conn.remove_listener(self._channel, self._on_notify)
        for channel, adapter in self._adapters.items():
            with contextlib.suppress(Exception):
                await conn.remove_listener(channel, adapter)


async def _first(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
