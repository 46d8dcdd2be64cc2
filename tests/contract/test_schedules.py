"""The backends' schedule calls (#15), on both backends: put, claim of ticks (exactly once,
fenced by revision), pause, remove, manual runs, and the tick a handler sees."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from batchworks import Job, Runner, Schedule
from batchworks.backends.base import Backend
from tests.support.schedules import T0, FakeClock, scheduled_jobs, scheduler


class TestBackendContract:
    async def test_put_stores_a_new_schedule_keeps_an_equal_one_and_replaces_a_changed_one(
        self, backend: Backend
    ) -> None:
        schedule = Schedule("s", "0 * * * *", "q", {"a": 1})
        state, replaced = await backend.put_schedule("s", schedule.definition(), next_tick=T0)
        assert (state.revision, state.next_tick, replaced, state.paused) == (1, T0, False, False)
        again, replaced = await backend.put_schedule(
            "s", schedule.definition(), next_tick=T0 + timedelta(hours=5)
        )
        assert (again.revision, again.next_tick, replaced) == (1, T0, False)
        changed = Schedule("s", "30 * * * *", "q", {"a": 1})
        later = T0 + timedelta(minutes=30)
        new, replaced = await backend.put_schedule("s", changed.definition(), next_tick=later)
        assert (new.revision, new.next_tick, replaced) == (2, later, True)
        assert Schedule.from_definition("s", new.definition) == changed

    async def test_a_claim_enqueues_the_ticks_and_a_stale_claim_enqueues_nothing(
        self, backend: Backend
    ) -> None:
        schedule = Schedule("s", "0 * * * *", "q", {"a": 1}, priority=4, max_attempts=2)
        await backend.put_schedule("s", schedule.definition(), next_tick=T0)
        args: dict[str, Any] = {
            "revision": 1,
            "due": T0,
            "next_tick": T0 + timedelta(hours=1),
            "ticks": [T0],
            "skipped": 0,
        }
        won = await backend.claim_ticks("s", **args)
        lost = await backend.claim_ticks("s", **args)  # a racer that read the same state
        assert won.won and len(won.job_ids) == 1
        assert not lost.won and lost.job_ids == ()
        assert lost.state == won.state  # the loser learns the state in the same call
        assert won.state is not None and won.state.last_tick == T0
        record = await backend.get_job(won.job_ids[0])
        assert record is not None
        assert (record.queue, record.payload, record.priority, record.max_attempts) == (
            "q",
            {"a": 1},
            4,
            2,
        )
        assert (record.schedule, record.scheduled_for) == ("s", T0)
        assert record.late_by is not None and record.late_by > 0  # T0 is long past

    async def test_a_claim_planned_on_an_old_revision_loses(self, backend: Backend) -> None:
        await backend.put_schedule("s", Schedule("s", "0 * * * *", "q").definition(), next_tick=T0)
        await backend.put_schedule("s", Schedule("s", "5 * * * *", "q").definition(), next_tick=T0)
        claim = await backend.claim_ticks(
            "s", revision=1, due=T0, next_tick=T0 + timedelta(hours=1), ticks=[T0], skipped=0
        )
        assert not claim.won and await scheduled_jobs(backend, "s") == []

    async def test_a_tick_never_gets_two_jobs(self, backend: Backend) -> None:
        await backend.put_schedule("s", Schedule("s", "0 * * * *", "q").definition(), next_tick=T0)
        first = await backend.claim_ticks(
            "s", revision=1, due=T0, next_tick=T0 + timedelta(hours=1), ticks=[T0], skipped=0
        )
        # A claim that (wrongly) names an enqueued tick again: the guard inserts nothing.
        second = await backend.claim_ticks(
            "s",
            revision=1,
            due=T0 + timedelta(hours=1),
            next_tick=T0 + timedelta(hours=2),
            ticks=[T0, T0 + timedelta(hours=1)],
            skipped=0,
        )
        assert first.won and second.won and len(second.job_ids) == 1
        ticks = [job.scheduled_for for job in await scheduled_jobs(backend, "s")]
        assert ticks == [T0, T0 + timedelta(hours=1)]

    async def test_pause_skips_ticks_and_resume_continues_from_the_next(
        self, backend: Backend
    ) -> None:
        schedule = Schedule("s", "0 * * * *", "q", missed="all")
        clock = FakeClock(T0 - timedelta(seconds=1))
        ticker = scheduler(backend, schedule, clock=clock)
        await ticker.start()
        assert await backend.pause_schedule("s", True, next_tick=T0)  # no read: the claim sees it
        for _ in range(3):
            clock.advance(3600)
            await ticker.step()
        [state] = (await backend.schedules()).schedules
        assert (state.paused, state.skipped) == (True, 3)
        assert await scheduled_jobs(backend, "s") == []
        resume_at = T0 + timedelta(hours=3)
        assert await backend.pause_schedule("s", False, next_tick=resume_at)  # nor here
        clock.now = resume_at
        await ticker.step()
        ticks = [job.scheduled_for for job in await scheduled_jobs(backend, "s")]
        assert ticks == [resume_at]
        assert not await backend.pause_schedule("nope", True, next_tick=T0)

    async def test_a_pause_between_read_and_claim_is_seen_by_the_claim(
        self, backend: Backend
    ) -> None:
        await backend.put_schedule("s", Schedule("s", "0 * * * *", "q").definition(), next_tick=T0)
        await backend.pause_schedule("s", True, next_tick=T0)
        claim = await backend.claim_ticks(
            "s", revision=1, due=T0, next_tick=T0 + timedelta(hours=1), ticks=[T0], skipped=2
        )
        assert claim.won and claim.job_ids == ()
        assert claim.state is not None and claim.state.skipped == 3

    async def test_remove_deletes_the_schedule_and_keeps_its_jobs(self, backend: Backend) -> None:
        await backend.put_schedule("s", Schedule("s", "0 * * * *", "q").definition(), next_tick=T0)
        await backend.claim_ticks(
            "s", revision=1, due=T0, next_tick=T0 + timedelta(hours=1), ticks=[T0], skipped=0
        )
        assert await backend.remove_schedule("s")
        assert not await backend.remove_schedule("s")
        assert (await backend.schedules()).schedules == ()
        assert len(await scheduled_jobs(backend, "s")) == 1
        claim = await backend.claim_ticks(
            "s", revision=1, due=T0 + timedelta(hours=1), next_tick=T0, ticks=[T0], skipped=0
        )
        assert (claim.won, claim.state) == (False, None)

    async def test_a_manual_run_enqueues_one_job_outside_the_ticks(self, backend: Backend) -> None:
        schedule = Schedule("s", "0 * * * *", "q", {"manual": True})
        await backend.put_schedule("s", schedule.definition(), next_tick=T0)
        job_id = await backend.run_schedule("s")
        assert job_id is not None
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.queue, record.payload, record.schedule) == ("q", {"manual": True}, "s")
        assert record.scheduled_for is None and record.late_by is None
        [state] = (await backend.schedules()).schedules
        assert (state.next_tick, state.last_tick) == (T0, None)  # the ticks are untouched
        assert await backend.run_schedule("nope") is None

    async def test_a_handler_sees_its_tick(self, backend: Backend) -> None:
        seen: list[tuple[str | None, datetime | None]] = []

        async def handler(job: Job) -> None:
            seen.append((job.schedule, job.scheduled_for))

        await backend.put_schedule("s", Schedule("s", "0 * * * *", "q").definition(), next_tick=T0)
        await backend.claim_ticks(
            "s", revision=1, due=T0, next_tick=T0 + timedelta(hours=1), ticks=[T0], skipped=0
        )
        await Runner(backend, {"q": handler}).run_until_empty()
        assert seen == [("s", T0)]
