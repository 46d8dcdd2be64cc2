"""Contract tests of the read calls behind the web dashboard (``batchworks.web``) and
``batchworks jobs why``: filtered keyset paging, counts and cancels by filter, a job's place
in its queue, and throughput over the last hour, on every backend."""

from __future__ import annotations

import pytest

from batchworks import JobState
from batchworks.backends.base import (
    AHEAD_CAP,
    SUMMARY_MESSAGE,
    Backend,
    JobFilter,
    JobSummary,
)
from batchworks.errors import ConfigurationError
from batchworks.outcome import Outcome, OutcomeKind
from tests.support.calls import LEASE, POLICY_MAX_ATTEMPTS


async def fail(backend: Backend, queue: str, types: list[str]) -> list[int]:
    """Enqueue, claim and fail one job per error type in ``queue``."""
    ids = await backend.enqueue_many(queue, [f"job {i}" for i in range(len(types))])
    worker = await backend.register_worker(f"w-{queue}", [queue])
    claimed = await backend.claim(worker, [queue], len(ids), lease=LEASE, max_attempts=1)
    assert sorted(job.id for job in claimed) == ids
    outcomes = [
        Outcome(job_id, OutcomeKind.FAILED, error={"attempt": 1, "type": kind, "message": "no"})
        for job_id, kind in zip(ids, types, strict=True)
    ]
    assert await backend.settle(worker, outcomes) == []
    return ids


class TestListJobsPaging:
    async def test_pages_by_keyset_newest_first_without_gaps_or_repeats(
        self, backend: Backend
    ) -> None:
        ids = await backend.enqueue_many("q", list(range(7)))
        seen: list[int] = []
        before = None
        while True:
            page = await backend.list_jobs(limit=3, before=before)
            if not page:
                break
            seen += [record.id for record in page]
            before = page[-1].id
        assert seen == sorted(ids, reverse=True)

    async def test_filters_by_schedule_and_the_type_of_the_latest_error(
        self, backend: Backend
    ) -> None:
        value_errors = await fail(backend, "q", ["ValueError", "KeyError", "ValueError"])
        await backend.enqueue("q", "queued, no error")
        found = await backend.list_jobs(error_type="ValueError")
        assert [record.id for record in found] == [value_errors[2], value_errors[0]]
        assert await backend.list_jobs(error_type="ValueError", state="queued") == []
        assert await backend.count_jobs(JobFilter(error_type="ValueError")) == 2
        assert await backend.count_jobs(JobFilter(queue="q")) == 4
        assert await backend.count_jobs(JobFilter(schedule="nightly")) == 0
        assert await backend.list_jobs(schedule="nightly") == []

    async def test_a_schedules_jobs_are_found_by_its_name(self, backend: Backend) -> None:
        from datetime import UTC, datetime

        definition = '{"queue": "q", "payload": null, "priority": 0, "max_attempts": null}'
        await backend.put_schedule("nightly", definition, next_tick=datetime.now(UTC))
        job_id = await backend.run_schedule("nightly")
        await backend.enqueue("q", "other")
        assert [r.id for r in await backend.list_jobs(schedule="nightly")] == [job_id]

    @pytest.mark.parametrize(
        ("argument", "value"),
        [
            ("before", 0),
            ("before", "7"),
            ("state", "done"),
            ("queue", "no spaces"),
            ("schedule", ""),
        ],
    )
    async def test_bad_filters_are_refused_naming_them(
        self, backend: Backend, argument: str, value: object
    ) -> None:
        with pytest.raises(ConfigurationError, match=argument if argument != "state" else "state"):
            await backend.list_jobs(**{argument: value})  # type: ignore[arg-type]


class TestJobSummaries:
    async def test_the_same_page_as_list_jobs_without_what_jobs_carry(
        self, backend: Backend
    ) -> None:
        await fail(backend, "q", ["ValueError", "KeyError"])
        await backend.enqueue("q", {"big": "x" * 1000})
        long = await backend.enqueue("r", "long message")
        worker = await backend.register_worker("w-r", ["r"])
        await backend.claim(worker, ["r"], 1, lease=LEASE, max_attempts=1)
        message = {"attempt": 1, "type": "OSError", "message": "m" * 500}
        await backend.settle(worker, [Outcome(long, OutcomeKind.FAILED, error=message)])

        for where, before in (
            (JobFilter(), None),
            (JobFilter(queue="q"), None),
            (JobFilter(error_type="KeyError"), None),
            (JobFilter(), long),
        ):
            summaries = await backend.list_job_summaries(where, before=before, limit=3)
            records = await backend.list_jobs(
                queue=where.queue, error_type=where.error_type, before=before, limit=3
            )
            assert summaries == [JobSummary.of(record) for record in records], where
        assert [s.id for s in await backend.list_job_summaries(JobFilter(up_to=long - 1))] == [
            r.id for r in await backend.list_jobs(before=long)
        ]
        [summary] = await backend.list_job_summaries(JobFilter(queue="r"))
        assert (summary.error_type, summary.error_message) == ("OSError", "m" * SUMMARY_MESSAGE)
        assert summary.state is JobState.FAILED and summary.worker == "w-r"


class TestCancelJobs:
    async def test_cancels_queued_and_marks_running_jobs_of_the_filter_only(
        self, backend: Backend
    ) -> None:
        queued = await backend.enqueue_many("q", ["a", "b"])
        other = await backend.enqueue("r", "other queue")
        running = await backend.enqueue("q", "c")
        worker = await backend.register_worker("w", ["q"])
        # the claim takes the oldest due first: a and b, then c; claim all three, settle none
        claimed = await backend.claim(worker, ["q"], 3, lease=LEASE, max_attempts=5)
        assert {job.id for job in claimed} == {*queued, running}
        await backend.settle(worker, [Outcome(queued[0], OutcomeKind.RELEASED)])
        await backend.settle(worker, [Outcome(queued[1], OutcomeKind.RELEASED)])

        assert await backend.count_jobs(JobFilter(queue="q", state="queued")) == 2
        assert await backend.cancel_jobs(JobFilter(queue="q")) == 3
        assert [(await backend.get_job(i)).state for i in queued] == [JobState.CANCELLED] * 2  # type: ignore[union-attr]
        record = await backend.get_job(running)
        assert record is not None and record.state is JobState.RUNNING
        assert record.cancel_requested
        assert record.lease_until is not None and record.lease_until > record.started_at  # type: ignore[operator]
        assert (await backend.get_job(other)).state is JobState.QUEUED  # type: ignore[union-attr]
        assert (await backend.heartbeat(worker, [running], lease=LEASE)).cancel == (running,)

    async def test_up_to_leaves_jobs_enqueued_after_the_count_alone(self, backend: Backend) -> None:
        counted = await backend.enqueue_many("q", ["a", "b"])
        where = JobFilter(queue="q", up_to=max(counted))
        later = await backend.enqueue("q", "enqueued after the count was shown")
        assert await backend.count_jobs(where) == 2
        assert await backend.cancel_jobs(where) == 2
        assert (await backend.get_job(later)).state is JobState.QUEUED  # type: ignore[union-attr]
        with pytest.raises(ConfigurationError, match="up_to"):
            await backend.count_jobs(JobFilter(up_to=0))
        with pytest.raises(ConfigurationError, match="state"):
            await backend.cancel_jobs(JobFilter(state="done"))


class TestBatchFilter:
    async def test_lists_counts_and_cancels_a_batchs_members_only(self, backend: Backend) -> None:
        before = await backend.enqueue("q", "before the batch")
        first = await backend.enqueue_batch("q", ["a", "b"], close=False)
        between = await backend.enqueue("q", "inside the batch's span of ids, not a member")
        other = await backend.enqueue_batch("q", ["x"])
        added = await backend.add_to_batch(first.id, ["c"])
        members = [*first.job_ids, *added.job_ids]
        where = JobFilter(batch_id=first.id)

        listed = await backend.list_job_summaries(where)
        assert [job.id for job in listed] == sorted(members, reverse=True)
        page = await backend.list_job_summaries(where, before=members[-1], limit=1)
        assert [job.id for job in page] == [members[1]]
        assert await backend.count_jobs(where) == 3
        assert await backend.count_jobs(JobFilter(batch_id=first.id + other.id + 100)) == 0
        assert await backend.cancel_jobs(where) == 3
        states = {i: (await backend.get_job(i)).state for i in [before, between, *other.job_ids]}  # type: ignore[union-attr]
        assert set(states.values()) == {JobState.QUEUED}
        with pytest.raises(ConfigurationError, match="batch_id"):
            await backend.count_jobs(JobFilter(batch_id=0))


class TestQueuePosition:
    async def test_counts_due_jobs_a_claim_takes_first(self, backend: Backend) -> None:
        low = await backend.enqueue_many("q", ["a", "b"], priority=0)
        high = await backend.enqueue("q", "urgent", priority=5)
        await backend.enqueue("q", "later", priority=9, delay=3600)  # not due: not ahead
        await backend.enqueue("r", "other queue", priority=9)

        first, second = [await backend.queue_position(job_id) for job_id in low]
        top = await backend.queue_position(high)
        assert first is not None and second is not None and top is not None
        assert (top.ahead, first.ahead, second.ahead) == (0, 1, 2)
        assert first.state is JobState.QUEUED and first.due_in <= 0

    async def test_a_job_due_later_says_when_and_a_missing_one_is_none(
        self, backend: Backend
    ) -> None:
        later = await backend.enqueue("q", "later", delay=600)
        position = await backend.queue_position(later)
        assert position is not None
        assert 500 < position.due_in <= 600
        assert await backend.queue_position(10**9) is None

    async def test_a_running_job_has_nothing_ahead(self, backend: Backend) -> None:
        await backend.enqueue_many("q", ["a", "b"])
        worker = await backend.register_worker("w", ["q"])
        [job] = await backend.claim(worker, ["q"], 1, lease=LEASE, max_attempts=5)
        position = await backend.queue_position(job.id)
        assert position is not None
        assert (position.state, position.ahead) == (JobState.RUNNING, 0)

    def test_the_cap_is_a_figure_an_operator_can_read(self) -> None:
        assert AHEAD_CAP == 10_000


class TestThroughput:
    async def test_counts_jobs_that_ended_within_the_window_by_state(
        self, backend: Backend
    ) -> None:
        await fail(backend, "q", ["ValueError"])
        ids = await backend.enqueue_many("q", ["a", "b"])
        worker = await backend.register_worker("w2", ["q"])
        claimed = await backend.claim(
            worker, ["q"], 2, lease=LEASE, max_attempts=POLICY_MAX_ATTEMPTS
        )
        assert {job.id for job in claimed} == set(ids)
        await backend.settle(worker, [Outcome(i, OutcomeKind.SUCCEEDED) for i in ids])
        await backend.enqueue("quiet", "never ran")

        seen = await backend.throughput(window=3600, buckets=12)
        assert seen.bucket == 300
        assert set(seen.queues) == {"q"}
        per_state = seen.queues["q"]
        assert [len(counts) for counts in per_state.values()] == [12, 12, 12]
        assert sum(per_state["succeeded"]) == 2 and per_state["succeeded"][-1] == 2
        assert sum(per_state["failed"]) == 1 and sum(per_state["cancelled"]) == 0

    @pytest.mark.parametrize(("window", "buckets"), [(0, 10), (3600, 0), (10**7, 10)])
    async def test_bad_windows_are_refused(
        self, backend: Backend, window: float, buckets: int
    ) -> None:
        with pytest.raises(ConfigurationError):
            await backend.throughput(window=window, buckets=buckets)
