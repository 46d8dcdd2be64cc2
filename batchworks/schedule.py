"""Periodic jobs: :class:`Schedule`, its cron and time zone arithmetic, and the missed-tick
policies, as pure functions of an explicit ``now`` (no clock is read here).

A schedule's *ticks* are the instants its cron expression names in its time zone. A runner
that carries schedules claims each due tick and enqueues its job in one backend transaction
(see :mod:`batchworks._scheduler`); this module only decides which ticks become jobs.

Cron expressions are evaluated by ``cronsim``, which follows Debian's cron, DST included:

- a local time that does not exist (02:30 on the day clocks spring forward from 02:00 to
  03:00) runs once, at the first instant after the gap (03:00 local time);
- a local time that happens twice (02:30 on the day clocks fall back from 03:00 to 02:00)
  runs once, at its first occurrence (02:30 summer time).

That special handling applies to expressions with a fixed minute and hour (as Debian's does);
an expression that runs every minute or every hour (``*/20 * * * *``) runs by elapsed time
through a change, and a 6-field expression (seconds first) is never given it.
"""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from batchworks import _json
from batchworks.backends.base import check_queue
from batchworks.errors import ConfigurationError

__all__ = ["GRACE", "MAX_CATCH_UP", "MISSED_POLICIES", "Schedule", "TickPlan", "plan_ticks"]

#: seconds after its tick within which a tick still counts as on time (at most its period)
GRACE = 60.0
#: the most jobs ``missed="all"`` enqueues for one catch-up; older missed ticks are skipped
MAX_CATCH_UP = 100
#: the most ticks one catch-up walks through to count them (about 35 ms of CPU); beyond, the
#: skipped count is a floor
MAX_COUNTED = 10_000
MISSED_POLICIES = ("skip", "once", "all")

_NAME_MAX = 128
_INT32 = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Schedule:
    """A job enqueued at every tick of a cron expression, by whichever runners are alive.

    :param name: the schedule's identity in the backend: runners carrying the same name run
        one schedule between them.
    :param cron: 5 fields (``minute hour day month weekday``), or 6 with seconds first
        (``*/10 * * * * *``: every 10 seconds).
    :param queue: the queue its jobs go to.
    :param payload: each job's payload (JSON).
    :param timezone: an IANA time zone name the cron expression is read in.
    :param missed: what becomes of ticks missed while no runner was alive (more than
        :data:`GRACE` seconds, or one period, late): ``"skip"`` runs none of them, only the
        next tick; ``"once"`` runs one job for them all; ``"all"`` runs each, at most
        :data:`MAX_CATCH_UP` (older ones are skipped).
    :param priority: each job's priority.
    :param max_attempts: each job's own maximum of attempts (None: the runner's policy's).
    :raises ConfigurationError: any of them is invalid; the message says what to change.
    """

    name: str
    cron: str
    queue: str
    payload: Any = None
    _: KW_ONLY
    timezone: str = "UTC"
    missed: str = "skip"
    priority: int = 0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name or len(name) > _NAME_MAX or not name.isprintable():
            raise ConfigurationError(
                f"schedule name {name!r} is invalid: use 1-{_NAME_MAX} printable characters"
            )
        check_queue(self.queue)
        _zone(self.timezone, name)
        _check_cron(self.cron, name, self.timezone)
        if self.missed not in MISSED_POLICIES:
            raise ConfigurationError(
                f"schedule {name!r}: missed={self.missed!r} is not a policy: use 'skip' (run "
                "only the next tick), 'once' (one job for all missed ticks) or 'all'"
            )
        priority, most = self.priority, self.max_attempts
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > _INT32:
            raise ConfigurationError(
                f"schedule {name!r}: priority must be an int within ±{_INT32}, got {priority!r}"
            )
        if most is not None and (
            isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= _INT32
        ):
            raise ConfigurationError(
                f"schedule {name!r}: max_attempts must be an int >= 1 or None, got {most!r}"
            )
        _json.dumps(self.payload, what=f"payload of schedule {name!r}")

    @property
    def zone(self) -> tzinfo:
        """The time zone the cron expression is read in."""
        return _zone(self.timezone, self.name)

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` (an aware datetime), in UTC."""
        tick = next(self.ticks_after(moment), None)
        if tick is None:  # cronsim looks 50 years ahead; _check_cron saw a tick within them
            raise ConfigurationError(
                f"schedule {self.name!r}: cron {self.cron!r} has no tick after {moment}"
            )
        return tick

    def ticks_after(self, moment: datetime, *, reverse: bool = False) -> Iterator[datetime]:
        """The ticks strictly after ``moment`` in UTC, in order (``reverse``: those strictly
        before it, latest first). One cronsim walk: far cheaper than a next_after per tick."""
        # cronsim works to the second and starts one second past its start: floor first.
        local = moment.astimezone(self.zone)
        if not reverse:
            local = local.replace(microsecond=0)
        for tick in CronSim(self.cron, local, reverse=reverse):
            yield tick.astimezone(UTC)

    def definition(self) -> str:
        """The schedule as canonical JSON text: what the backend stores and compares."""
        return json.dumps(
            {
                "cron": self.cron,
                "queue": self.queue,
                "payload": self.payload,
                "timezone": self.timezone,
                "missed": self.missed,
                "priority": self.priority,
                "max_attempts": self.max_attempts,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_definition(cls, name: str, text: str) -> Schedule:
        """The schedule a backend stored with :meth:`definition`."""
        fields = json.loads(text)
        return cls(
            name,
            fields["cron"],
            fields["queue"],
            fields.get("payload"),
            timezone=fields.get("timezone", "UTC"),
            missed=fields.get("missed", "skip"),
            priority=fields.get("priority", 0),
            max_attempts=fields.get("max_attempts"),
        )


@dataclass(frozen=True, slots=True)
class TickPlan:
    """What a claim of a schedule's due ticks does."""

    #: the ticks that become jobs (each job's ``scheduled_for``), oldest first
    ticks: tuple[datetime, ...]
    #: due ticks that become no job
    skipped: int
    #: the schedule's next tick: the first one after ``now``
    next_tick: datetime
    #: how many of ``ticks`` are past their grace (catch-ups of missed ticks)
    late: int = 0
    #: more than MAX_COUNTED ticks were due: ``skipped`` is a floor
    truncated: bool = False


def plan_ticks(schedule: Schedule, due: datetime, now: datetime) -> TickPlan:
    """Decide which ticks from ``due`` (the stored next tick) up to ``now`` become jobs.

    The latest due tick is *on time* while no more than :func:`grace` seconds have passed
    since it; every earlier due tick, and the latest past its grace, was *missed*. On-time
    ticks always run; missed ones as ``schedule.missed`` says. Whether the schedule is paused
    is not asked here: the claim itself reads it, and then counts these ticks as skipped.
    """
    if due > now:
        return TickPlan((), 0, due)
    kept: collections.deque[datetime] = collections.deque(maxlen=MAX_CATCH_UP)
    count, truncated = 0, False
    next_tick = due
    for tick in itertools.chain([due], schedule.ticks_after(due)):
        next_tick = tick
        if tick > now:
            break
        kept.append(tick)
        count += 1
        if count >= MAX_COUNTED:
            # Long downtime of a frequent schedule: stop counting, keep the latest ticks.
            truncated = True
            next_tick = schedule.next_after(now)
            latest = itertools.islice(schedule.ticks_after(next_tick, reverse=True), MAX_CATCH_UP)
            kept = collections.deque(reversed(list(latest)), maxlen=MAX_CATCH_UP)
            break
    latest_tick = kept[-1]
    on_time = lateness(latest_tick, now) <= grace(latest_tick, next_tick)  # next_tick follows it
    if schedule.missed == "all":
        ticks = tuple(kept)
    elif schedule.missed == "once" or on_time:
        ticks = (latest_tick,)
    else:
        ticks = ()
    late = len(ticks) - (1 if on_time and ticks else 0)
    return TickPlan(ticks, count - len(ticks), next_tick, late=late, truncated=truncated)


def grace(tick: datetime, following: datetime) -> float:
    """Seconds after ``tick`` within which it is on time: :data:`GRACE`, or the period up to
    ``following`` (the next tick) when that is shorter: a tick is missed once its successor
    is due."""
    return min(GRACE, (following - tick).total_seconds())


def _zone(name: object, schedule: str) -> tzinfo:
    if name == "UTC":
        return UTC  # needs no tz data, even where the system has none
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"schedule {schedule!r}: timezone must be an IANA name like 'Europe/Berlin', "
            f"got {name!r}"
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigurationError(
            f"schedule {schedule!r}: unknown timezone {name!r}: use an IANA name like "
            "'Europe/Berlin' or 'UTC' (where the system has no time zone data, "
            "`pip install tzdata`)"
        ) from None


def _check_cron(cron: object, schedule: str, timezone: str) -> None:
    hint = (
        "use 5 fields 'minute hour day month weekday' (e.g. '30 2 * * *'), or 6 with seconds "
        "first (e.g. '*/10 * * * * *')"
    )
    if not isinstance(cron, str) or not cron.strip():
        raise ConfigurationError(f"schedule {schedule!r}: cron must be a str: {hint}")
    start = datetime.now(_zone(timezone, schedule))
    try:
        next(CronSim(cron, start))
    except CronSimError as exc:
        raise ConfigurationError(
            f"schedule {schedule!r}: cron {cron!r} is invalid ({exc}): {hint}"
        ) from None
    except StopIteration:
        raise ConfigurationError(
            f"schedule {schedule!r}: cron {cron!r} never ticks (no match within 50 years): "
            "check its day and month fields"
        ) from None


def lateness(tick: datetime, now: datetime) -> float:
    """Seconds from ``tick`` to ``now`` (never below zero)."""
    return max(0.0, (now - tick).total_seconds())


def ticks_between(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """Every tick in ``(start, end]`` (for tests and tools; bounded by :data:`MAX_COUNTED`)."""
    found: list[datetime] = []
    for tick in schedule.ticks_after(start):
        if tick > end or len(found) >= MAX_COUNTED:
            break
        found.append(tick)
    return found
