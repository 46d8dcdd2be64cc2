"""Time bounds on the Runner's backend calls.

Nothing a network does may hold a worker hostage: a black-holed connection (sockets open,
nothing answered) hangs a call for as long as TCP keeps the socket, minutes, and asyncpg
cannot always cut such a call short from inside (a cancelled query waits for its cancel
request, which the same network swallows). So each call runs in a task of its own, and the
Runner waits for it at most ``timeout`` seconds, or until a hard stop: then the call counts as
failed (``TimeoutError``) and its task is cancelled and left to unwind in the background,
never awaited. A call still pending after ``slow_after`` seconds is logged, once, while it
waits: a stalled database is said while it happens, not after.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from batchworks._logs import log_extra

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def first_set(*events: asyncio.Event, within: float | None = None) -> None:
    """Return once one of ``events`` is set, or after ``within`` seconds (None: no limit);
    the waits on the others end with it. A stop must end every wait, so most waits of the
    runner pair what they wait for with a stop event."""
    waiters = {asyncio.ensure_future(event.wait()) for event in events}
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class Calls:
    """Runs backend calls under a time bound; see the module docstring."""

    def __init__(self, *, timeout: float, slow_after: float, hard_stop: asyncio.Event) -> None:
        self.timeout = timeout
        self._slow_after = slow_after
        self._hard_stop = hard_stop
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._cuts: dict[asyncio.Event, set[Callable[..., None]]] = {}

    def cut(self, event: asyncio.Event) -> None:
        """Wake the calls ``event`` cuts off; whoever sets the event calls this too (one
        callback per waiting call is cheaper than a task per call watching the event)."""
        for ring in list(self._cuts.get(event, ())):
            ring()

    @property
    def abandoned(self) -> int:
        """Calls that were cut off and have not finished unwinding yet."""
        return len(self._abandoned)

    async def settle_abandoned(self, within: float) -> None:
        """Give the calls that were cut off up to ``within`` seconds to end. A claim a stop
        cut off may still come back with jobs, which its ``on_abandon`` puts back; it must do
        so before the last flush, or those jobs stay running until their lease runs out."""
        if self._abandoned and within > 0:
            await asyncio.wait(set(self._abandoned), timeout=within)

    async def run(
        self,
        what: str,
        call: Awaitable[T],
        *,
        within: float | None = None,
        cut: asyncio.Event | None = None,
        on_abandon: Callable[[asyncio.Future[T]], None] | None = None,
        slow: bool = True,
    ) -> T:
        """Await ``call`` for at most ``within`` seconds (default: the runner's ``db_timeout``).

        :param cut: an event that also cuts the call off (default: the hard stop, unless it
            was already set when the call started: the final writes of a hard stop still run).
        :param on_abandon: called with the call's task once it ends, when it was cut off;
            when given, the task is left running instead of cancelled (a claim cut off by a
            stop may still return jobs, which must then be put back).
        :param slow: warn when the call takes long (not for a wait that is meant to).
        :raises TimeoutError: the call was cut off.
        """
        loop = asyncio.get_running_loop()
        limit = self.timeout if within is None else max(0.0, within)
        if cut is None and not self._hard_stop.is_set():
            cut = self._hard_stop
        task = asyncio.ensure_future(call)
        start = loop.time()
        warned = not slow
        try:
            while not task.done() and not (cut is not None and cut.is_set()):
                left = start + limit - loop.time()
                if left <= 0:
                    break
                slow_in = start + self._slow_after - loop.time()
                wait = left if warned else min(left, max(0.0, slow_in))
                await self._wait(task, cut, wait)
                if not warned and not task.done() and loop.time() - start >= self._slow_after:
                    warned = True
                    logger.warning(
                        "%s has waited %.1fs for the database (cut off after %.1fs)",
                        what,
                        loop.time() - start,
                        limit,
                        extra=log_extra("slow_call", call=what),
                    )
        finally:
            if not task.done():
                self._abandon(task, on_abandon)
        if task.done() and not task.cancelled():
            return task.result()  # or raises what the call raised
        if cut is not None and cut.is_set():
            raise TimeoutError(f"{what} was cut off by a stop")
        raise TimeoutError(f"{what} got no answer within {limit:.1f}s")

    async def _wait(
        self, task: asyncio.Future[Any], cut: asyncio.Event | None, seconds: float
    ) -> None:
        """Return when ``task`` is done, ``cut`` is set or ``seconds`` have passed."""
        loop = asyncio.get_running_loop()
        wake: asyncio.Future[None] = loop.create_future()

        def ring(_: object = None) -> None:
            if not wake.done():
                wake.set_result(None)

        task.add_done_callback(ring)
        timer = loop.call_later(seconds, ring)
        rings = None if cut is None else self._cuts.setdefault(cut, set())
        if rings is not None:
            rings.add(ring)
        try:
            await wake
        finally:
            timer.cancel()
            task.remove_done_callback(ring)
            if rings is not None:
                rings.discard(ring)

    def _abandon(
        self, task: asyncio.Future[T], on_abandon: Callable[[asyncio.Future[T]], None] | None
    ) -> None:
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        if on_abandon is not None:
            task.add_done_callback(on_abandon)
        else:
            task.cancel()

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a call cut off may fail as it unwinds, unheard
