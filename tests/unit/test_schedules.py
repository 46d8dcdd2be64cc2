"""Periodic jobs (#15): Schedule's checks and cron arithmetic, DST, the missed-tick policies
with an injected clock, and the scheduler's cost. The backends' schedule calls:
tests/contract/test_schedules.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from opentelemetry.trace import SpanKind

from batchworks import ConfigurationError, Job, PayloadError, Runner, Schedule
from batchworks._calls import Calls
from batchworks._scheduler import SCHEDULE_REFRESH, Scheduler
from batchworks.backends.base import Backend
from batchworks.schedule import GRACE, MAX_CATCH_UP, MAX_COUNTED, plan_ticks, ticks_between
from batchworks.tracing import Telemetry
from tests.conftest import eventually
from tests.support.schedules import T0, FakeClock, scheduled_jobs, scheduler
from tests.unit.test_tracing import Otel, installed, sdk

BERLIN = ZoneInfo("Europe/Berlin")


class TestSchedule:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            pytest.param({"cron": "61 * * * *"}, "cron '61 * * * *' is invalid", id="bad-minute"),
            pytest.param({"cron": "* * *"}, "use 5 fields", id="fields"),
            pytest.param({"cron": "0 0 30 2 *"}, "is invalid", id="never-ticks"),
            pytest.param({"timezone": "Europe/Berln"}, "unknown timezone 'Europe/Berln'", id="tz"),
            pytest.param({"missed": "later"}, "missed='later' is not a policy", id="missed"),
            pytest.param({"priority": 1.5}, "priority must be an int", id="priority"),
            pytest.param({"max_attempts": 0}, "max_attempts must be an int >= 1", id="attempts"),
            pytest.param({"queue": "bad queue"}, "queue name 'bad queue' is invalid", id="queue"),
            pytest.param({"name": ""}, "schedule name '' is invalid", id="name"),
        ],
    )
    def test_bad_definitions_fail_at_construction_saying_what_to_change(
        self, kwargs: dict[str, Any], message: str
    ) -> None:
        fields: dict[str, Any] = {"name": "s", "cron": "*/5 * * * *", "queue": "q"} | kwargs
        with pytest.raises(ConfigurationError) as caught:
            Schedule(fields.pop("name"), fields.pop("cron"), fields.pop("queue"), **fields)
        assert message in str(caught.value)

    def test_a_payload_that_is_not_json_fails_at_construction(self) -> None:
        with pytest.raises(PayloadError, match="payload of schedule 'nightly'"):
            Schedule("nightly", "0 3 * * *", "q", {"at": datetime.now()})

    def test_next_after_is_strictly_after_and_in_utc(self) -> None:
        every_10s = Schedule("s", "*/10 * * * * *", "q")
        assert every_10s.next_after(T0) == T0 + timedelta(seconds=10)
        assert every_10s.next_after(T0 + timedelta(seconds=9.5)) == T0 + timedelta(seconds=10)
        assert every_10s.next_after(T0).tzinfo is UTC

    def test_the_definition_round_trips(self) -> None:
        schedule = Schedule(
            "s", "30 2 * * *", "q", {"a": [1]}, timezone="Europe/Berlin", missed="all",
            priority=3, max_attempts=2,
        )  # fmt: skip
        assert Schedule.from_definition("s", schedule.definition()) == schedule

    def test_a_runner_refuses_a_schedule_of_a_queue_it_has_no_handler_for(
        self, memory_backend: Backend
    ) -> None:
        async def handler(job: Job) -> None: ...

        with pytest.raises(ConfigurationError, match=r"no handler for .*handlers: emails"):
            Runner(memory_backend, {"emails": handler}, schedules=[Schedule("s", "* * * * *", "q")])
        with pytest.raises(ConfigurationError, match="two schedules are named 's'"):
            Runner(
                memory_backend,
                {"q": handler},
                schedules=[Schedule("s", "* * * * *", "q"), Schedule("s", "0 * * * *", "q")],
            )


class TestDaylightSaving:
    """02:30 Europe/Berlin: it does not exist on 2026-03-29 (02:00 -> 03:00) and happens twice
    on 2026-10-25 (03:00 -> 02:00)."""

    schedule = Schedule("night", "30 2 * * *", "q", timezone="Europe/Berlin")

    def test_a_nonexistent_time_runs_once_at_the_first_instant_after_the_gap(self) -> None:
        ticks = ticks_between(
            self.schedule,
            datetime(2026, 3, 27, 12, tzinfo=BERLIN),
            datetime(2026, 3, 31, 12, tzinfo=BERLIN),
        )
        local = [tick.astimezone(BERLIN) for tick in ticks]
        assert [(t.day, t.hour, t.minute) for t in local] == [
            (28, 2, 30),
            (29, 3, 0),  # 02:30 does not exist: 03:00 CEST, the end of the gap
            (30, 2, 30),
            (31, 2, 30),
        ]
        assert local[1] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)

    def test_a_repeated_time_runs_once_at_its_first_occurrence(self) -> None:
        ticks = ticks_between(
            self.schedule,
            datetime(2026, 10, 23, 12, tzinfo=BERLIN),
            datetime(2026, 10, 27, 12, tzinfo=BERLIN),
        )
        assert ticks == [
            datetime(2026, 10, 24, 0, 30, tzinfo=UTC),  # CEST
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # the first 02:30 (CEST); not 01:30 UTC
            datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # CET
            datetime(2026, 10, 27, 1, 30, tzinfo=UTC),
        ]

    async def test_a_runner_enqueues_one_job_on_each_change_day(self, backend: Backend) -> None:
        clock = FakeClock(datetime(2026, 3, 28, 12, tzinfo=UTC))
        ticker = scheduler(backend, self.schedule, clock=clock)
        await ticker.start()
        for _ in range(2 * 24 * 6):  # two days in 10-minute steps, injected: no waiting
            clock.advance(600)
            await ticker.step()
        clock.now = datetime(2026, 10, 24, 12, tzinfo=UTC)
        await ticker.step()  # downtime until then: missed="skip" skips the ticks meanwhile
        for _ in range(2 * 24 * 6):
            clock.advance(600)
            await ticker.step()
        ticks = [job.scheduled_for for job in await scheduled_jobs(backend, "night")]
        assert ticks == [
            datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 03:00 CEST
            datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST, once
            datetime(2026, 10, 26, 1, 30, tzinfo=UTC),
        ]


class TestMissedTicks:
    """All runners stopped across 10 hourly ticks, restarted 5 minutes after the 10th."""

    restart = T0 + timedelta(hours=10, minutes=5)

    def plan(self, missed: str, now: datetime | None = None) -> Any:
        schedule = Schedule("s", "0 * * * *", "q", missed=missed)
        # The last claimed tick was T0: the stored next tick is T0 + 1h.
        return plan_ticks(schedule, T0 + timedelta(hours=1), now or self.restart)

    def test_skip_enqueues_none_of_the_missed_ticks(self) -> None:
        plan = self.plan("skip")
        assert (plan.ticks, plan.skipped, plan.late) == ((), 10, 0)
        assert plan.next_tick == T0 + timedelta(hours=11)

    def test_once_enqueues_one_job_for_all_of_them(self) -> None:
        plan = self.plan("once")
        assert (plan.ticks, plan.skipped, plan.late) == ((T0 + timedelta(hours=10),), 9, 1)

    def test_all_enqueues_every_missed_tick(self) -> None:
        plan = self.plan("all")
        assert plan.ticks == tuple(T0 + timedelta(hours=h) for h in range(1, 11))
        assert (plan.skipped, plan.late) == (0, 10)

    def test_all_is_bounded_and_counts_the_oldest_beyond_the_bound_as_skipped(self) -> None:
        plan = self.plan("all", now=T0 + timedelta(hours=MAX_CATCH_UP + 50, minutes=5))
        assert len(plan.ticks) == MAX_CATCH_UP
        assert plan.skipped == 50
        assert plan.ticks[-1] == T0 + timedelta(hours=MAX_CATCH_UP + 50)

    def test_a_day_of_missed_seconds_keeps_the_latest_and_counts_a_floor(self) -> None:
        schedule = Schedule("s", "* * * * * *", "q", missed="all")
        now = T0 + timedelta(days=1, microseconds=500_000)
        plan = plan_ticks(schedule, T0, now)
        latest = T0 + timedelta(days=1)
        assert plan.ticks == tuple(
            latest - timedelta(seconds=n) for n in reversed(range(MAX_CATCH_UP))
        )
        assert plan.next_tick == latest + timedelta(seconds=1)
        assert plan.truncated and plan.skipped >= MAX_COUNTED - MAX_CATCH_UP

    @pytest.mark.parametrize("missed", ["skip", "once", "all"])
    def test_a_tick_within_its_grace_is_on_time_under_every_policy(self, missed: str) -> None:
        plan = self.plan(missed, now=T0 + timedelta(hours=1, seconds=GRACE - 1))
        assert (plan.ticks, plan.skipped, plan.late) == ((T0 + timedelta(hours=1),), 0, 0)

    @pytest.mark.parametrize(
        ("missed", "expected", "skipped"),
        [
            ("skip", [], 10),
            ("once", [10], 9),
            ("all", list(range(1, 11)), 0),
        ],
    )
    async def test_a_restart_after_downtime_gives_what_the_policy_promises(
        self, backend: Backend, missed: str, expected: list[int], skipped: int
    ) -> None:
        schedule = Schedule("s", "0 * * * *", "q", {"n": 1}, missed=missed)
        clock = FakeClock(T0 - timedelta(seconds=1))
        first = scheduler(backend, schedule, clock=clock)
        await first.start()
        clock.advance(1)
        await first.step()  # T0, on time
        clock.now = self.restart  # every runner was down across 10 ticks
        second = scheduler(backend, schedule, clock=clock)
        await second.start()  # the same definition: the stored state stands
        await second.step()
        ticks = [job.scheduled_for for job in await scheduled_jobs(backend, "s")]
        assert ticks == [T0] + [T0 + timedelta(hours=h) for h in expected]
        [state] = (await backend.schedules()).schedules
        assert state.skipped == skipped
        assert state.next_tick == T0 + timedelta(hours=11)


class TestRunner:
    async def test_runners_with_the_same_schedule_enqueue_each_tick_once_in_real_time(
        self, backend: Backend
    ) -> None:
        """Three runners, one tick a second, one restarted after a downtime of 2 s or more:
        with missed='all' every tick from the first to the last has exactly one job."""

        async def handler(job: Job) -> None: ...

        schedule = Schedule("tick", "* * * * * *", "q", missed="all")

        def runner(name: str) -> Runner:
            return Runner(backend, {"q": handler}, worker_name=name, schedules=[schedule])

        async def count() -> int:
            return len(await scheduled_jobs(backend, "tick"))

        async with runner("a"), runner("b"), runner("c"):
            await eventually(lambda: _at_least(count, 2), within=10, what="two ticks")
        stopped = await count()
        await asyncio.sleep(2.5)  # downtime: every runner is stopped across two ticks or more
        async with runner("a"):
            await eventually(lambda: _at_least(count, stopped + 4), within=10, what="catch-up")
        ticks = [job.scheduled_for for job in await scheduled_jobs(backend, "tick")]
        assert len(set(ticks)) == len(ticks), "a tick got two jobs"
        steps = {later - earlier for earlier, later in itertools.pairwise(ticks)}
        assert steps == {timedelta(seconds=1)}, f"ticks missing: {ticks}"

    async def test_a_runner_changing_a_definition_wins_and_logs_it(
        self, backend: Backend, caplog: pytest.LogCaptureFixture
    ) -> None:
        clock = FakeClock(T0 + timedelta(minutes=1))
        await scheduler(backend, Schedule("s", "0 * * * *", "q"), clock=clock).start()
        changed = scheduler(backend, Schedule("s", "*/10 * * * *", "q"), clock=clock)
        await changed.start()
        [state] = (await backend.schedules()).schedules
        assert state.next_tick == T0 + timedelta(minutes=10)  # from now, by the new cron
        assert "replaced the stored one" in caplog.text

    async def test_an_idle_scheduler_makes_one_call_per_due_tick_and_a_read_per_refresh(
        self, backend: Backend
    ) -> None:
        """The idle cost, counted by the scheduler over 10 injected minutes of a per-minute
        schedule: it sleeps until the next tick and makes one call per tick."""
        clock = FakeClock(T0)
        counted = Counting(backend)
        ticker = scheduler(counted, Schedule("s", "* * * * *", "q"), clock=clock)  # type: ignore[arg-type]
        await ticker.start()
        counted.calls.clear()
        wakeups = 0
        while clock.now <= T0 + timedelta(minutes=10):
            wait = await ticker.step()
            assert wait > 0
            clock.advance(wait)
            wakeups += 1
        assert counted.calls["claim_ticks"] == 10
        assert counted.calls["schedules"] <= 600 / SCHEDULE_REFRESH
        assert wakeups <= 10 + 600 / SCHEDULE_REFRESH
        assert len(await scheduled_jobs(backend, "s")) == 10


class Counting:
    """A backend that counts the calls made to it (a fake around the real one)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await attribute(*args, **kwargs)

        return call


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


class TestTelemetry:
    @pytest.fixture
    def otel(self) -> Iterator[Otel]:
        found, tracer_provider, meter_provider = sdk()
        with installed(tracer_provider, meter_provider):
            yield found

    async def test_a_claim_is_a_send_span_with_an_event_per_tick_and_counts_late_and_skipped(
        self, backend: Backend, otel: Otel
    ) -> None:
        clock = FakeClock(T0 - timedelta(seconds=1))
        ticker = scheduler(backend, Schedule("s", "0 * * * *", "q", missed="once"), clock=clock)
        await ticker.start()
        clock.now = T0 + timedelta(hours=2, minutes=5)  # 3 ticks due, the latest past grace
        await ticker.step()
        [send] = otel.finished("send q")
        assert send.kind is SpanKind.PRODUCER
        assert send.attributes is not None
        assert send.attributes["batchworks.schedule.name"] == "s"
        [event] = send.events
        assert event.name == "tick enqueued" and event.attributes is not None
        assert event.attributes["batchworks.schedule.scheduled_for"] == (
            (T0 + timedelta(hours=2)).isoformat()
        )
        assert event.attributes["batchworks.schedule.late_by"] == 300.0
        counts = {
            name: sum(point.value for point in otel.points(f"batchworks.schedule.ticks.{name}"))
            for name in ("enqueued", "late", "skipped")
        }
        assert counts == {"enqueued": 1, "late": 1, "skipped": 2}
        [lateness] = otel.points("batchworks.schedule.tick.lateness")
        assert lateness.sum == 300.0

        async def handler(job: Job) -> None: ...

        await Runner(backend, {"q": handler}).run_until_empty()
        [process] = otel.finished("process q")
        assert [link.context.span_id for link in process.links] == [send.context.span_id]


class Hanging(Counting):
    """Its first tick claim never answers (a call stuck on a dead connection)."""

    def __getattr__(self, name: str) -> Any:
        call = super().__getattr__(name)
        if name != "claim_ticks":
            return call

        async def claim(*args: Any, **kwargs: Any) -> Any:
            if not self.calls.get("hung"):
                self.calls["hung"] = 1
                await asyncio.Event().wait()
            return await call(*args, **kwargs)

        return claim


async def test_a_hung_claim_is_cut_off_and_retried(
    memory_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    hanging = Hanging(memory_backend)
    ticker = Scheduler(
        hanging,  # type: ignore[arg-type]
        (Schedule("s", "* * * * * *", "q", missed="all"),),
        Telemetry("test"),
        calls=Calls(timeout=0.3, slow_after=10.0, hard_stop=asyncio.Event()),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(ticker.run(stop))
    try:
        await eventually(
            lambda: _has_jobs(memory_backend), within=10, what="a tick after the hung claim"
        )
    finally:
        stop.set()
        await task
    assert hanging.calls["hung"] == 1
    assert "TimeoutError" in caplog.text


async def _has_jobs(backend: Backend) -> bool:
    return bool(await scheduled_jobs(backend, "s"))
