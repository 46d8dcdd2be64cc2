"""The scheduler task of a Runner that carries schedules (#15).

Every runner with schedules runs one; none is a leader. Each keeps every stored schedule's
state, sleeps until the earliest next tick, and then claims that schedule's due ticks with
one backend call, which advances the schedule from the tick it read (a compare-and-set) and
enqueues the ticks' jobs in the same transaction. Of the runners that race for a tick, one
advances it and the others get the new state back from the same call: one round trip per
runner per due tick, won or lost, and a tick becomes one job whoever crashes when.

When nothing is due, the state of every schedule is read again every ``refresh`` seconds
(one statement), so that a schedule added, changed or resumed elsewhere is seen within that
bound. A pause or a removal needs no read: the claim itself sees it.

The backend's clock decides what is due (read with each answer and carried forward on the
monotonic clock), so a runner whose wall clock is off enqueues nothing early or late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

from batchworks._calls import Calls
from batchworks.backends.base import Backend, ScheduleState
from batchworks.errors import BatchworksError, ConfigurationError
from batchworks.schedule import Schedule, lateness, plan_ticks
from batchworks.tracing import Telemetry

__all__ = ["SCHEDULE_REFRESH", "Scheduler", "check_schedules"]

logger = logging.getLogger("batchworks.schedule")

SCHEDULE_REFRESH = 30.0  # seconds between reads of the schedules' state when none is due
RETRY_INITIAL = 0.2  # seconds before a failed schedule call is tried again
RETRY_MAX = 10.0  # seconds between retries at most

Clock = Callable[[], datetime]
T = TypeVar("T")


def check_schedules(
    schedules: Iterable[Schedule] | None, handlers: Mapping[str, object]
) -> tuple[Schedule, ...]:
    """The runner's schedules, each of a queue it has a handler for, no name twice."""
    if schedules is None:
        return ()
    if isinstance(schedules, (str, bytes, Schedule)):
        raise ConfigurationError("schedules must be a list of Schedule objects")
    found: dict[str, Schedule] = {}
    for schedule in schedules:
        if not isinstance(schedule, Schedule):
            raise ConfigurationError(
                f"schedules must hold Schedule objects, got {schedule!r}; use "
                "Schedule(name, cron, queue, payload)"
            )
        if schedule.name in found:
            raise ConfigurationError(
                f"two schedules are named {schedule.name!r}: give each its own name"
            )
        if schedule.queue not in handlers:
            raise ConfigurationError(
                f"schedule {schedule.name!r} enqueues into queue {schedule.queue!r}, which "
                f"this Runner has no handler for (handlers: {', '.join(sorted(handlers))}): "
                "add a handler for it or change the schedule's queue"
            )
        found[schedule.name] = schedule
    return tuple(found.values())


class Scheduler:
    """Claims the due ticks of every stored schedule (see the module docstring).

    :param clock: the current time (aware); tests pass a fake one. Default: the backend's
        clock, carried forward on the monotonic clock between its answers.
    :param calls: the Runner's time bounds on backend calls (its ``db_timeout``): a call hung
        on a dead connection is cut off and retried, and a hard stop cuts it off at once.
    """

    def __init__(
        self,
        backend: Backend,
        schedules: tuple[Schedule, ...],
        telemetry: Telemetry,
        *,
        refresh: float = SCHEDULE_REFRESH,
        clock: Clock | None = None,
        calls: Calls | None = None,
    ) -> None:
        self._backend = backend
        self._calls = calls
        self._schedules = schedules
        self._telemetry = telemetry
        self._refresh = refresh
        self._clock = clock
        self._states: dict[str, ScheduleState] = {}
        # by (name, definition): a schedule removed and stored again starts at revision 1
        self._parsed: dict[tuple[str, str], Schedule | None] = {}
        self._seen: tuple[datetime, float] | None = None  # (backend clock, monotonic) of a read
        self._read_at = -float("inf")  # _elapsed() at the last read of every state

    def now(self) -> datetime:
        """The current time on the backend's clock (or the injected one)."""
        if self._clock is not None:
            return self._clock()
        if self._seen is None:
            return datetime.now().astimezone()
        backend_now, monotonic = self._seen
        return backend_now + timedelta(seconds=time.monotonic() - monotonic)

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        if self._calls is None:
            return await call
        return await self._calls.run(f"schedules: {what}", call)

    def _saw(self, backend_now: datetime) -> None:
        self._seen = (backend_now, time.monotonic())

    def _elapsed(self) -> float:
        """Seconds on a clock that only moves forward: the monotonic one, or the injected."""
        return time.monotonic() if self._clock is None else self._clock().timestamp()

    async def start(self) -> None:
        """Store this runner's schedules (new ones, and changed definitions: the last writer
        wins), then read every stored schedule's state."""
        await self.refresh()
        now = self.now()
        for schedule in self._schedules:
            state, replaced = await self._call(
                "put",
                self._backend.put_schedule(
                    schedule.name, schedule.definition(), next_tick=schedule.next_after(now)
                ),
            )
            self._states[state.name] = state
            if replaced:
                # Two deploys (or two hosts) with different code race here: each start stores
                # its own definition, and all runners then follow the one stored last.
                logger.warning(
                    "schedule %r: this runner's definition replaced the stored one (another "
                    "deploy or host defines it differently: the last one started wins); it "
                    "takes effect from %s",
                    schedule.name,
                    state.next_tick.isoformat(),
                    extra={"action": "schedule_changed", "schedule": schedule.name},
                )
        ours = {schedule.name for schedule in self._schedules}
        others = sorted(set(self._states) - ours)
        if others:
            logger.info(
                "stored schedules not defined in this runner keep running: %s (remove one "
                "with 'batchworks schedules remove NAME')",
                ", ".join(others),
                extra={"action": "schedules_foreign", "schedules": others},
            )

    async def refresh(self) -> None:
        """Read every stored schedule's state (one call)."""
        listing = await self._call("read", self._backend.schedules())
        self._saw(listing.now)
        self._states = {state.name: state for state in listing.schedules}
        self._read_at = self._elapsed()

    async def step(self) -> float:
        """Claim every due tick; return the seconds until one is due again (at most the time
        until the next read of every state)."""
        if self._elapsed() - self._read_at >= self._refresh:
            await self.refresh()
        now = self.now()
        for state in list(self._states.values()):
            if state.next_tick <= now:
                await self._claim(state, now)
        until_read = self._refresh - (self._elapsed() - self._read_at)
        earliest = min((state.next_tick for state in self._states.values()), default=None)
        if earliest is None:
            return max(0.0, until_read)
        return max(0.0, min(until_read, (earliest - self.now()).total_seconds()))

    def _definition(self, state: ScheduleState) -> Schedule | None:
        key = (state.name, state.definition)
        if key not in self._parsed:
            try:
                self._parsed[key] = Schedule.from_definition(state.name, state.definition)
            except (BatchworksError, ValueError, KeyError, TypeError) as exc:
                # Stored by another version, or naming a zone this host has no data for.
                logger.error(
                    "schedule %r: cannot read its stored definition (%s); this runner leaves "
                    "its ticks to the others",
                    state.name,
                    exc,
                    extra={"action": "schedule_unreadable", "schedule": state.name},
                )
                self._parsed[key] = None
        return self._parsed[key]

    async def _claim(self, state: ScheduleState, now: datetime) -> None:
        schedule = self._definition(state)
        if schedule is None:
            # Unreadable here: wait for the next read rather than spin on it.
            self._states.pop(state.name)
            return
        # Planned as if running: this state may be stale, and a schedule paused (or resumed)
        # since it was read is seen by the claim, which then skips (or enqueues) these ticks.
        plan = plan_ticks(schedule, state.next_tick, now)
        telemetry = self._telemetry
        telemetry.refresh()
        with telemetry.tick_span(state.name, schedule.queue) as (span, carrier):
            claim = await self._call(
                "claim",
                self._backend.claim_ticks(
                    state.name,
                    revision=state.revision,
                    due=state.next_tick,
                    next_tick=plan.next_tick,
                    ticks=plan.ticks,
                    skipped=plan.skipped,
                    trace_context=carrier,
                ),
            )
            if self._clock is None:
                self._saw(claim.now)
            if claim.state is None:
                self._states.pop(state.name, None)
            else:
                self._states[state.name] = claim.state
            if not claim.won:
                return
            paused = claim.state is not None and claim.state.paused
            made = plan.ticks[: len(claim.job_ids)] if not paused else ()
            skipped = plan.skipped + (len(plan.ticks) if paused else 0)
            late = plan.late if made else 0
            telemetry.ticks(
                span,
                state.name,
                {tick.isoformat(): lateness(tick, now) for tick in made},
                late=late,
                skipped=skipped,
            )
        self._log(state.name, made, late, skipped, plan.truncated)

    def _log(
        self, name: str, made: tuple[datetime, ...], late: int, skipped: int, truncated: bool
    ) -> None:
        extra = {"action": "schedule_ticked", "schedule": name, "late": late, "skipped": skipped}
        if late or skipped:
            logger.warning(
                "schedule %r: enqueued %d ticks (%d late, caught up), skipped %s%d ticks",
                name,
                len(made),
                late,
                "at least " if truncated else "",
                skipped,
                extra=extra,
            )
        elif made:
            logger.debug("schedule %r: enqueued the tick of %s", name, made[-1], extra=extra)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim ticks until ``stop`` is set; errors are logged and retried with backoff."""
        delay = RETRY_INITIAL
        started = False
        while not stop.is_set():
            try:
                # Each backend call is bounded (``calls``): one hung on a dead connection is
                # cut off and retried. A claim cut short is atomic: whole or not at all.
                if not started:
                    await self.start()
                    started = True
                wait = await self.step()
                delay = RETRY_INITIAL
            except Exception as exc:
                logger.warning(
                    "schedules: %s: %s; trying again in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"action": "schedule_failed"},
                )
                wait, delay = delay, min(delay * 2, RETRY_MAX)
                self._read_at = -float("inf")  # read everything again after a failure
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
