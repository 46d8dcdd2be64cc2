"""Contract tests of a backend, written against the ``backend`` fixture so that they run on
every backend; the tests that move time with a fake clock are in ``TestMemoryOnly*`` classes.

The worker side (register_worker, claim, settle, heartbeat, recover) is driven directly, the
way a Runner drives it, so that each rule is checked on its own.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from batchworks import JobState, LeaseLost, MemoryBackend
from batchworks.backends.base import Backend, ClaimedJob, Heartbeat, WorkerToken
from batchworks.outcome import Outcome, OutcomeKind

LEASE = 30.0  # seconds
POLICY_MAX_ATTEMPTS = 5
ALL_STATES = {state.value for state in JobState}


class FakeClock:
    """Seconds since the epoch that move only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def claim(
    backend: Backend,
    worker: WorkerToken,
    limit: int = 10,
    *,
    queues: tuple[str, ...] = ("q",),
    lease: float = LEASE,
) -> list[ClaimedJob]:
    return await backend.claim(worker, queues, limit, lease=lease, max_attempts=POLICY_MAX_ATTEMPTS)


async def claim_one(backend: Backend, worker: WorkerToken, *, lease: float = LEASE) -> ClaimedJob:
    [job] = await claim(backend, worker, 1, lease=lease)
    return job


async def state(backend: Backend, job_id: int) -> JobState:
    record = await backend.get_job(job_id)
    assert record is not None
    return record.state


def succeeded(job_id: int, result: str | None = '"ok"') -> Outcome:
    return Outcome(job_id, OutcomeKind.SUCCEEDED, result_json=result)


class TestEnqueue:
    async def test_enqueue_returns_a_new_id_each_time(self, backend: Backend) -> None:
        ids = [await backend.enqueue("q", {"n": n}) for n in range(5)]

        assert all(isinstance(job_id, int) for job_id in ids)
        assert len(set(ids)) == 5

    async def test_enqueued_job_is_queued_with_its_payload(self, backend: Backend) -> None:
        job_id = await backend.enqueue("emails", {"to": "a@example.com"})

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.id, record.queue, record.payload) == (
            job_id,
            "emails",
            {"to": "a@example.com"},
        )
        assert (record.state, record.attempts, record.errors, record.result) == (
            JobState.QUEUED,
            0,
            (),
            None,
        )

    async def test_enqueue_many_returns_ids_in_payload_order(self, backend: Backend) -> None:
        ids = await backend.enqueue_many("q", [{"n": n} for n in range(20)])

        assert len(set(ids)) == 20
        records = [await backend.get_job(job_id) for job_id in ids]
        assert [record.payload if record else None for record in records] == [
            {"n": n} for n in range(20)
        ]

    async def test_enqueue_many_of_nothing_adds_nothing(self, backend: Backend) -> None:
        assert await backend.enqueue_many("q", []) == []
        assert await backend.stats() == {}

    async def test_max_attempts_is_stored_with_the_job(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {}, max_attempts=3)

        record = await backend.get_job(job_id)
        assert record is not None and record.max_attempts == 3

    async def test_enqueue_many_stores_max_attempts_and_priority(self, backend: Backend) -> None:
        ids = await backend.enqueue_many("q", [1, 2], max_attempts=2, priority=7)

        for job_id in ids:
            record = await backend.get_job(job_id)
            assert record is not None
            assert (record.max_attempts, record.priority) == (2, 7)

    async def test_get_job_of_an_unknown_id_is_none(self, backend: Backend) -> None:
        await backend.enqueue("q", {})

        assert await backend.get_job(987_654_321) is None

    async def test_migrate_is_idempotent(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})

        await backend.migrate()

        assert await state(backend, job_id) is JobState.QUEUED


class TestPayloadCopies:
    async def test_mutating_the_original_after_enqueue_changes_nothing(
        self, backend: Backend
    ) -> None:
        payload: dict[str, Any] = {"items": [1, 2], "meta": {"k": "v"}}
        job_id = await backend.enqueue("q", payload)

        payload["items"].append(3)
        payload["meta"]["k"] = "changed"
        payload["new"] = True

        record = await backend.get_job(job_id)
        assert record is not None
        assert record.payload == {"items": [1, 2], "meta": {"k": "v"}}

    async def test_tuples_come_back_as_lists(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {"pair": (1, 2), "nested": [(3, (4,))]})

        record = await backend.get_job(job_id)
        assert record is not None
        assert record.payload == {"pair": [1, 2], "nested": [[3, [4]]]}
        assert type(record.payload["pair"]) is list

    async def test_mutating_a_returned_record_changes_nothing_stored(
        self, backend: Backend
    ) -> None:
        job_id = await backend.enqueue("q", {"items": [1]})
        record = await backend.get_job(job_id)
        assert record is not None

        record.payload["items"].append(2)

        again = await backend.get_job(job_id)
        assert again is not None and again.payload == {"items": [1]}

    async def test_mutating_a_claimed_payload_changes_nothing_stored(
        self, backend: Backend
    ) -> None:
        # A handler that edits job.payload and then fails must not change what its retry sees.
        job_id = await backend.enqueue("q", {"items": [1]})
        worker = await backend.register_worker("w1", ["q"])
        job = await claim_one(backend, worker)

        job.payload["items"].append(2)
        await backend.settle(worker, [Outcome(job_id, OutcomeKind.RETRIED, 0.0)])

        retry = await claim_one(backend, worker)
        assert retry.payload == {"items": [1]}


class TestClaimOrder:
    async def test_higher_priority_is_claimed_first(self, backend: Backend) -> None:
        low = await backend.enqueue("q", "low", priority=0)
        high = await backend.enqueue("q", "high", priority=10)
        negative = await backend.enqueue("q", "negative", priority=-5)
        middle = await backend.enqueue("q", "middle", priority=3)
        worker = await backend.register_worker("w1", ["q"])

        claimed = await claim(backend, worker)

        assert [job.id for job in claimed] == [high, middle, low, negative]

    async def test_equal_priority_is_claimed_by_run_at(self, backend: Backend) -> None:
        now = datetime.now(UTC)
        later = await backend.enqueue("q", "later", run_at=now - timedelta(seconds=10))
        earlier = await backend.enqueue("q", "earlier", run_at=now - timedelta(seconds=20))
        latest = await backend.enqueue("q", "latest", run_at=now - timedelta(seconds=5))
        worker = await backend.register_worker("w1", ["q"])

        claimed = await claim(backend, worker)

        assert [job.id for job in claimed] == [earlier, later, latest]

    async def test_priority_wins_over_run_at(self, backend: Backend) -> None:
        now = datetime.now(UTC)
        old = await backend.enqueue("q", "old", run_at=now - timedelta(hours=1))
        urgent = await backend.enqueue("q", "urgent", priority=1)
        worker = await backend.register_worker("w1", ["q"])

        assert [job.id for job in await claim(backend, worker)] == [urgent, old]

    async def test_claim_takes_at_most_limit_jobs(self, backend: Backend) -> None:
        ids = await backend.enqueue_many("q", list(range(5)))
        worker = await backend.register_worker("w1", ["q"])

        first = await claim(backend, worker, 3)
        second = await claim(backend, worker, 3)

        assert [job.id for job in first] == ids[:3]
        assert [job.id for job in second] == ids[3:]
        assert await claim(backend, worker, 3) == []

    async def test_claim_takes_only_the_given_queues(self, backend: Backend) -> None:
        mine = await backend.enqueue("mine", {})
        theirs = await backend.enqueue("theirs", {})
        worker = await backend.register_worker("w1", ["mine"])

        claimed = await claim(backend, worker, queues=("mine",))

        assert [job.id for job in claimed] == [mine]
        assert await state(backend, theirs) is JobState.QUEUED

    async def test_claim_uses_an_attempt_and_holds_the_job(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {"n": 1})
        worker = await backend.register_worker("w1", ["q"])

        job = await claim_one(backend, worker)

        assert (job.id, job.queue, job.payload, job.attempt) == (job_id, "q", {"n": 1}, 1)
        assert job.max_attempts == POLICY_MAX_ATTEMPTS  # the policy's: the job has none
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts, record.worker) == (JobState.RUNNING, 1, "w1")
        assert await claim(backend, worker) == []

    async def test_claim_keeps_the_jobs_own_max_attempts(self, backend: Backend) -> None:
        await backend.enqueue("q", {}, max_attempts=2)
        worker = await backend.register_worker("w1", ["q"])

        assert (await claim_one(backend, worker)).max_attempts == 2

    async def test_no_job_is_claimed_by_two_workers(self, backend: Backend) -> None:
        await backend.enqueue_many("q", list(range(10)))
        one = await backend.register_worker("w1", ["q"])
        two = await backend.register_worker("w2", ["q"])

        first, second = await asyncio.gather(claim(backend, one, 6), claim(backend, two, 6))

        # Either may claim first (on PostgreSQL they race on two connections).
        assert sorted([len(first), len(second)]) == [4, 6]
        assert not {job.id for job in first} & {job.id for job in second}


class TestDelay:
    async def test_delayed_job_is_not_claimable_before_it_is_due(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {}, delay=60)
        worker = await backend.register_worker("w1", ["q"])

        assert await claim(backend, worker) == []
        assert await state(backend, job_id) is JobState.QUEUED

    async def test_delay_takes_a_timedelta(self, backend: Backend) -> None:
        before = datetime.now(UTC)
        job_id = await backend.enqueue("q", {}, delay=timedelta(minutes=2))

        record = await backend.get_job(job_id)
        assert record is not None
        assert record.run_at >= before + timedelta(minutes=2) - timedelta(milliseconds=5)

    async def test_job_with_future_run_at_is_not_claimable(self, backend: Backend) -> None:
        run_at = datetime.now(UTC) + timedelta(hours=1)
        job_id = await backend.enqueue("q", {}, run_at=run_at)
        worker = await backend.register_worker("w1", ["q"])

        assert await claim(backend, worker) == []
        record = await backend.get_job(job_id)
        assert record is not None
        assert abs(record.run_at - run_at) < timedelta(milliseconds=1)

    async def test_next_due_reports_seconds_until_the_earliest_job(self, backend: Backend) -> None:
        await backend.enqueue("q", {}, delay=300)
        await backend.enqueue("q", {}, delay=60)

        due = await backend.next_due(["q"])

        assert due is not None and 59 < due <= 60

    async def test_next_due_looks_past_priority_order_and_across_queues(
        self, backend: Backend
    ) -> None:
        # The earliest job is neither the first in claim order (highest priority) nor in the
        # first queue named: every priority level of every queue counts.
        await backend.enqueue("q", {}, delay=500, priority=9)
        await backend.enqueue("q", {}, delay=400, priority=5)
        await backend.enqueue("q", {}, delay=300, priority=-3)
        await backend.enqueue("q", {}, delay=900, priority=-3)
        await backend.enqueue("other", {}, delay=120, priority=1)
        await backend.enqueue("other", {}, delay=200, priority=7)

        due_q = await backend.next_due(["q"])
        due_both = await backend.next_due(["q", "other"])

        assert due_q is not None and 299 < due_q <= 300
        assert due_both is not None and 119 < due_both <= 120

    async def test_next_due_is_zero_when_a_job_is_due(self, backend: Backend) -> None:
        await backend.enqueue("q", {}, delay=60)
        await backend.enqueue("q", {})

        assert await backend.next_due(["q"]) == 0

    async def test_next_due_is_none_without_queued_jobs(self, backend: Backend) -> None:
        await backend.enqueue("other", {})

        assert await backend.next_due(["q"]) is None

    async def test_next_due_ignores_cancelled_jobs(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {}, delay=60)
        await backend.cancel(job_id)

        assert await backend.next_due(["q"]) is None


class TestMemoryOnlyTime:
    """MemoryBackend with a fake clock: a delayed job falls due when time moves."""

    async def test_delayed_job_is_claimable_once_due(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {}, delay=60)
        worker = await backend.register_worker("w1", ["q"])

        clock.advance(59.9)
        assert await claim(backend, worker) == []
        assert await backend.next_due(["q"]) == pytest.approx(0.1)
        clock.advance(0.1)
        assert [job.id for job in await claim(backend, worker)] == [job_id]

    async def test_run_at_job_is_claimable_once_due(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        run_at = datetime.fromtimestamp(clock.now, UTC) + timedelta(seconds=30)
        job_id = await backend.enqueue("q", {}, run_at=run_at)
        worker = await backend.register_worker("w1", ["q"])

        assert await backend.next_due(["q"]) == pytest.approx(30)
        clock.advance(30)
        assert [job.id for job in await claim(backend, worker)] == [job_id]

    async def test_retried_job_is_due_after_its_delay(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        await backend.settle(worker, [Outcome(job_id, OutcomeKind.RETRIED, 10.0)])

        assert await claim(backend, worker) == []
        clock.advance(10)
        assert (await claim_one(backend, worker)).attempt == 2


class TestDedupe:
    async def test_key_of_a_queued_job_returns_its_id(self, backend: Backend) -> None:
        first = await backend.enqueue("q", {"v": 1}, dedupe_key="order-1")

        second = await backend.enqueue("q", {"v": 2}, dedupe_key="order-1")

        assert second == first
        assert (await backend.stats())["q"]["queued"] == 1
        record = await backend.get_job(first)
        assert record is not None
        assert (record.payload, record.dedupe_key) == ({"v": 1}, "order-1")

    async def test_key_of_a_running_job_returns_its_id(self, backend: Backend) -> None:
        first = await backend.enqueue("q", {}, dedupe_key="order-1")
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        assert await backend.enqueue("q", {}, dedupe_key="order-1") == first
        assert (await backend.stats())["q"]["queued"] == 0

    async def test_key_of_a_finished_job_adds_a_new_job(self, backend: Backend) -> None:
        first = await backend.enqueue("q", {}, dedupe_key="order-1")
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        await backend.settle(worker, [succeeded(first)])

        second = await backend.enqueue("q", {}, dedupe_key="order-1")

        assert second != first
        assert await state(backend, second) is JobState.QUEUED

    async def test_key_of_a_cancelled_job_adds_a_new_job(self, backend: Backend) -> None:
        first = await backend.enqueue("q", {}, dedupe_key="order-1")
        await backend.cancel(first)

        assert await backend.enqueue("q", {}, dedupe_key="order-1") != first

    async def test_same_key_in_another_queue_adds_a_new_job(self, backend: Backend) -> None:
        first = await backend.enqueue("a", {}, dedupe_key="k")

        assert await backend.enqueue("b", {}, dedupe_key="k") != first

    async def test_enqueue_many_dedupes_per_payload(self, backend: Backend) -> None:
        existing = await backend.enqueue("q", "x", dedupe_key="x")

        ids = await backend.enqueue_many("q", ["x", "y", None], dedupe_keys=["x", "y", None])

        assert ids[0] == existing
        assert len(set(ids)) == 3
        assert (await backend.stats())["q"]["queued"] == 3


class TestStats:
    async def test_stats_of_an_empty_backend_is_empty(self, backend: Backend) -> None:
        assert await backend.stats() == {}

    async def test_stats_counts_every_state_per_queue(self, backend: Backend) -> None:
        done, running, failed, queued = await backend.enqueue_many("a", [1, 2, 3, 4])
        cancelled = await backend.enqueue("a", 5)
        await backend.enqueue("b", 6)
        worker = await backend.register_worker("w1", ["a"])
        await claim(backend, worker, 3, queues=("a",))
        await backend.settle(worker, [succeeded(done), Outcome(failed, OutcomeKind.FAILED)])
        await backend.cancel(cancelled)

        stats = await backend.stats()

        assert stats == {
            "a": {"queued": 1, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 1},
            "b": {"queued": 1, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0},
        }
        assert all(set(counts) == ALL_STATES for counts in stats.values())
        assert (await state(backend, running), await state(backend, queued)) == (
            JobState.RUNNING,
            JobState.QUEUED,
        )


class TestSettle:
    async def test_succeeded_keeps_the_result(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        assert await backend.settle(worker, [succeeded(job_id, '{"sent":3}')]) == []

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.result, record.attempts) == (
            JobState.SUCCEEDED,
            {"sent": 3},
            1,
        )
        assert record.finished_at is not None

    async def test_retried_keeps_the_error_and_the_attempt(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        error = {"attempt": 1, "type": "OSError", "message": "reset", "traceback": "..."}

        await backend.settle(worker, [Outcome(job_id, OutcomeKind.RETRIED, 60.0, error=error)])

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.QUEUED, 1)
        assert [(e["attempt"], e["type"], e["message"]) for e in record.errors] == [
            (1, "OSError", "reset")
        ]

    @pytest.mark.parametrize("kind", [OutcomeKind.SNOOZED, OutcomeKind.RELEASED])
    async def test_snoozed_and_released_give_the_attempt_back(
        self, backend: Backend, kind: OutcomeKind
    ) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        await backend.settle(worker, [Outcome(job_id, kind)])

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.QUEUED, 0)
        assert (await claim_one(backend, worker)).attempt == 1


class TestFencing:
    async def test_settle_by_a_worker_that_does_not_hold_the_job_is_lost(
        self, backend: Backend
    ) -> None:
        job_id = await backend.enqueue("q", {})
        holder = await backend.register_worker("w1", ["q"])
        other = await backend.register_worker("w2", ["q"])
        await claim_one(backend, holder)

        lost = await backend.settle(other, [succeeded(job_id)])

        assert lost == [job_id]
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts, record.result, record.worker) == (
            JobState.RUNNING,
            1,
            None,
            "w1",
        )

    async def test_settle_of_a_job_that_moved_on_changes_nothing(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        old = await backend.register_worker("w1", ["q"])
        await claim_one(backend, old)
        new = await backend.register_worker("w1", ["q"])  # a restart takes the job over
        retry = await claim_one(backend, new)

        lost = await backend.settle(old, [Outcome(job_id, OutcomeKind.FAILED)])

        assert lost == [job_id]
        assert retry.attempt == 2
        assert await state(backend, job_id) is JobState.RUNNING
        assert await backend.settle(new, [succeeded(job_id)]) == []
        assert await state(backend, job_id) is JobState.SUCCEEDED

    # A flush of plain successes (no result) takes a statement of its own on PostgreSQL.
    @pytest.mark.parametrize("result", ['"ok"', None], ids=["with-result", "plain"])
    async def test_settle_reports_only_the_lost_ids(
        self, backend: Backend, result: str | None
    ) -> None:
        mine, theirs = await backend.enqueue_many("q", [1, 2])
        one = await backend.register_worker("w1", ["q"])
        two = await backend.register_worker("w2", ["q"])
        await claim_one(backend, one)
        await claim_one(backend, two)

        lost = await backend.settle(one, [succeeded(mine, result), succeeded(theirs, result)])

        assert lost == [theirs]
        record = await backend.get_job(mine)
        assert record is not None
        assert (record.state, record.result, record.worker) == (
            JobState.SUCCEEDED,
            None if result is None else "ok",
            "w1",
        )
        assert await state(backend, theirs) is JobState.RUNNING
        assert await backend.heartbeat(one, [mine], lease=LEASE) == Heartbeat(
            alive=True, lost=(mine,)
        )

    async def test_second_settle_of_the_same_job_is_lost(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        await backend.settle(worker, [succeeded(job_id, '"first"')])

        assert await backend.settle(worker, [succeeded(job_id, '"second"')]) == [job_id]
        record = await backend.get_job(job_id)
        assert record is not None and record.result == "first"


class TestHeartbeat:
    async def test_heartbeat_of_a_live_worker_reports_nothing_lost(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        beat = await backend.heartbeat(worker, [job_id], lease=LEASE)

        assert (beat.alive, beat.lost, beat.cancel) == (True, (), ())

    async def test_heartbeat_reports_jobs_the_worker_no_longer_holds(
        self, backend: Backend
    ) -> None:
        held, taken = await backend.enqueue_many("q", [1, 2])
        worker = await backend.register_worker("w1", ["q"])
        other = await backend.register_worker("w2", ["q"])
        await claim_one(backend, worker)
        await claim_one(backend, other)

        beat = await backend.heartbeat(worker, [held, taken, 987_654], lease=LEASE)

        assert beat.alive
        assert sorted(beat.lost) == sorted([taken, 987_654])

    async def test_heartbeat_reports_jobs_an_operator_cancelled(self, backend: Backend) -> None:
        keep, stop = await backend.enqueue_many("q", [1, 2])
        worker = await backend.register_worker("w1", ["q"])
        await claim(backend, worker)
        assert await backend.cancel(stop)

        beat = await backend.heartbeat(worker, [keep, stop], lease=LEASE)

        assert beat.cancel == (stop,)
        assert beat.lost == ()

    async def test_heartbeat_of_a_replaced_worker_is_not_alive(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        old = await backend.register_worker("w1", ["q"])
        await claim_one(backend, old)
        await backend.register_worker("w1", ["q"])

        beat = await backend.heartbeat(old, [job_id], lease=LEASE)

        assert not beat.alive
        assert beat.lost == (job_id,)
        assert beat.replaced, "a replaced worker must be told apart from a pruned one"

    async def test_heartbeat_of_a_pruned_worker_is_not_alive_nor_replaced(
        self, backend: Backend
    ) -> None:
        worker = await backend.register_worker("w1", ["q"])
        await asyncio.sleep(0.01)  # its heartbeat is older than the prune_after below
        await backend.recover(prune_after=0.001)

        beat = await backend.heartbeat(worker, [], lease=LEASE)

        assert (beat.alive, beat.replaced) == (False, False)


class TestMemoryOnlyHeartbeat:
    """MemoryBackend with a fake clock: leases, pruning and purging move with time."""

    async def test_heartbeat_extends_the_lease(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker, lease=10)

        clock.advance(8)
        await backend.heartbeat(worker, [job_id], lease=10)
        clock.advance(8)  # past the first lease, within the extended one

        assert await backend.recover(prune_after=100) == 0
        assert await state(backend, job_id) is JobState.RUNNING

    async def test_expired_lease_is_recovered_though_the_worker_heartbeats(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker, lease=10)

        clock.advance(11)
        beat = await backend.heartbeat(worker, [], lease=10)  # alive, but not for this job
        recovered = await backend.recover(prune_after=100)

        assert beat.alive
        assert recovered == 1
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.QUEUED, 1)
        assert [(e["attempt"], e["type"]) for e in record.errors] == [(1, "WorkerLost")]
        assert "lease" in record.errors[0]["message"]
        assert await backend.settle(worker, [succeeded(job_id)]) == [job_id]

    async def test_recover_prunes_a_silent_worker_and_recovers_its_jobs(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        silent = await backend.register_worker("w1", ["q"])
        await claim_one(backend, silent, lease=1000)

        clock.advance(31)
        recovered = await backend.recover(prune_after=30)

        assert recovered == 1
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.QUEUED, 1)
        assert record.run_at == datetime.fromtimestamp(clock.now, UTC)
        assert [(e["attempt"], e["type"]) for e in record.errors] == [(1, "WorkerLost")]
        assert not (await backend.heartbeat(silent, [job_id], lease=LEASE)).alive
        assert await claim(backend, silent) == []

    async def test_recover_leaves_a_worker_that_heartbeats(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker, lease=30)

        for _ in range(4):
            clock.advance(20)
            await backend.heartbeat(worker, [job_id], lease=30)
            assert await backend.recover(prune_after=30) == 0

        assert await state(backend, job_id) is JobState.RUNNING

    async def test_recovered_job_with_no_attempts_left_fails(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        job_id = await backend.enqueue("q", {}, max_attempts=1)
        silent = await backend.register_worker("w1", ["q"])
        await claim_one(backend, silent)

        clock.advance(31)
        await backend.recover(prune_after=30)

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.FAILED, 1)
        assert [e["type"] for e in record.errors] == ["WorkerLost"]

    async def test_purge_deletes_only_jobs_finished_longer_ago(self) -> None:
        clock = FakeClock()
        backend = MemoryBackend(clock=clock)
        old, recent, waiting = await backend.enqueue_many("q", [1, 2, 3])
        cancelled_old = await backend.enqueue("q", 4)
        worker = await backend.register_worker("w1", ["q"])
        await claim(backend, worker, 2)
        await backend.settle(worker, [succeeded(old)])
        await backend.cancel(cancelled_old)
        clock.advance(3600)
        await backend.settle(worker, [Outcome(recent, OutcomeKind.FAILED)])
        clock.advance(60)

        purged = await backend.purge(timedelta(minutes=30))

        assert purged == 2
        assert await backend.get_job(old) is None
        assert await backend.get_job(cancelled_old) is None
        assert await state(backend, recent) is JobState.FAILED
        assert await state(backend, waiting) is JobState.QUEUED
        assert await backend.stats() == {
            "q": {"queued": 1, "running": 0, "succeeded": 0, "failed": 1, "cancelled": 0}
        }


class TestRegisterWorker:
    async def test_same_name_replaces_the_earlier_incarnation(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        old = await backend.register_worker("w1", ["q"])
        await claim_one(backend, old)

        new = await backend.register_worker("w1", ["q"])

        assert new != old
        assert await claim(backend, old) == []
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.QUEUED, 1)
        assert [(e["attempt"], e["type"]) for e in record.errors] == [(1, "WorkerLost")]
        assert "w1" in record.errors[0]["message"]
        assert [job.id for job in await claim(backend, new)] == [job_id]

    async def test_restart_fails_a_job_with_no_attempts_left(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {}, max_attempts=1)
        old = await backend.register_worker("w1", ["q"])
        await claim_one(backend, old)

        await backend.register_worker("w1", ["q"])

        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.FAILED, 1)
        assert [(e["attempt"], e["type"]) for e in record.errors] == [(1, "WorkerLost")]

    async def test_another_name_leaves_the_worker_alone(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        first = await backend.register_worker("w1", ["q"])
        await claim_one(backend, first)

        await backend.register_worker("w2", ["q"])

        assert await state(backend, job_id) is JobState.RUNNING
        assert (await backend.heartbeat(first, [job_id], lease=LEASE)).alive

    async def test_unregistered_worker_claims_nothing(self, backend: Backend) -> None:
        await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])

        await backend.unregister_worker(worker)

        assert await claim(backend, worker) == []

    async def test_recover_leaves_live_workers_and_leases_alone(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        assert await backend.recover(prune_after=30) == 0
        assert await state(backend, job_id) is JobState.RUNNING


class TestCancel:
    async def test_cancelling_a_queued_job_cancels_it_now(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])

        assert await backend.cancel(job_id) is True

        record = await backend.get_job(job_id)
        assert record is not None
        assert record.state is JobState.CANCELLED
        assert record.finished_at is not None
        assert await claim(backend, worker) == []

    async def test_cancelling_a_running_job_flags_it_for_its_worker(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        assert await backend.cancel(job_id) is True

        assert await state(backend, job_id) is JobState.RUNNING
        beat = await backend.heartbeat(worker, [job_id], lease=LEASE)
        assert beat.cancel == (job_id,)
        await backend.settle(worker, [Outcome(job_id, OutcomeKind.CANCELLED)])
        assert await state(backend, job_id) is JobState.CANCELLED

    async def test_cancel_request_does_not_outlive_the_attempt_it_was_for(
        self, backend: Backend
    ) -> None:
        # The attempt failed before its worker's heartbeat saw the cancel; an operator then
        # retries the job on purpose: the new attempt must not be cancelled by the old request.
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        await backend.cancel(job_id)
        await backend.settle(worker, [Outcome(job_id, OutcomeKind.FAILED)])
        assert await backend.retry_failed(ids=[job_id]) == 1
        await claim_one(backend, worker)

        beat = await backend.heartbeat(worker, [job_id], lease=LEASE)

        assert beat.cancel == ()

    async def test_cancelling_a_finished_or_unknown_job_does_nothing(
        self, backend: Backend
    ) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        await backend.settle(worker, [succeeded(job_id)])

        assert await backend.cancel(job_id) is False
        assert await backend.cancel(987_654_321) is False
        assert await state(backend, job_id) is JobState.SUCCEEDED


class TestRetryFailed:
    @staticmethod
    async def _failed(backend: Backend, queue: str, count: int) -> list[int]:
        ids = await backend.enqueue_many(queue, list(range(count)))
        worker = await backend.register_worker(f"failer-{queue}", [queue])
        await claim(backend, worker, count, queues=(queue,))
        await backend.settle(worker, [Outcome(job_id, OutcomeKind.FAILED) for job_id in ids])
        return ids

    async def test_failed_jobs_are_queued_again_with_fresh_attempts(self, backend: Backend) -> None:
        ids = await self._failed(backend, "q", 2)
        done = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        await backend.settle(worker, [succeeded(done)])

        assert await backend.retry_failed() == 2

        for job_id in ids:
            record = await backend.get_job(job_id)
            assert record is not None
            assert (record.state, record.attempts) == (JobState.QUEUED, 0)
        assert await state(backend, done) is JobState.SUCCEEDED
        assert sorted(job.id for job in await claim(backend, worker)) == sorted(ids)

    async def test_retry_failed_of_one_queue(self, backend: Backend) -> None:
        mine = await self._failed(backend, "a", 1)
        theirs = await self._failed(backend, "b", 1)

        assert await backend.retry_failed(queue="a") == 1

        assert await state(backend, mine[0]) is JobState.QUEUED
        assert await state(backend, theirs[0]) is JobState.FAILED

    async def test_retry_failed_by_ids(self, backend: Backend) -> None:
        first, second = await self._failed(backend, "q", 2)

        assert await backend.retry_failed(ids=[second]) == 1

        assert await state(backend, first) is JobState.FAILED
        assert await state(backend, second) is JobState.QUEUED

    async def test_retry_failed_with_nothing_failed_is_zero(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})

        assert await backend.retry_failed() == 0
        assert await state(backend, job_id) is JobState.QUEUED


class TestPurge:
    async def test_purge_keeps_recent_and_unfinished_jobs(self, backend: Backend) -> None:
        done, waiting = await backend.enqueue_many("q", [1, 2])
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)
        await backend.settle(worker, [succeeded(done)])

        assert await backend.purge(timedelta(hours=1)) == 0
        assert await backend.purge(3600.0) == 0

        assert await state(backend, done) is JobState.SUCCEEDED
        assert await state(backend, waiting) is JobState.QUEUED


class TestCheckpoint:
    async def test_holder_saves_a_checkpoint_the_next_attempt_sees(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])
        await claim_one(backend, worker)

        await backend.save_checkpoint(worker, job_id, {"offset": 4000}, lease=LEASE)
        await backend.settle(worker, [Outcome(job_id, OutcomeKind.RETRIED, 0.0)])

        record = await backend.get_job(job_id)
        assert record is not None and record.checkpoint == {"offset": 4000}
        retry = await claim_one(backend, worker)
        assert (retry.attempt, retry.checkpoint) == (2, {"offset": 4000})

    async def test_checkpoint_survives_a_lost_worker(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        old = await backend.register_worker("w1", ["q"])
        await claim_one(backend, old)
        await backend.save_checkpoint(old, job_id, [1, 2], lease=LEASE)

        new = await backend.register_worker("w1", ["q"])

        assert (await claim_one(backend, new)).checkpoint == [1, 2]

    async def test_checkpoint_by_a_worker_that_does_not_hold_the_job_is_refused(
        self, backend: Backend
    ) -> None:
        job_id = await backend.enqueue("q", {})
        holder = await backend.register_worker("w1", ["q"])
        other = await backend.register_worker("w2", ["q"])
        await claim_one(backend, holder)
        await backend.save_checkpoint(holder, job_id, "mine", lease=LEASE)

        with pytest.raises(LeaseLost, match=str(job_id)):
            await backend.save_checkpoint(other, job_id, "theirs", lease=LEASE)

        record = await backend.get_job(job_id)
        assert record is not None and record.checkpoint == "mine"

    async def test_checkpoint_of_a_queued_job_is_refused(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {})
        worker = await backend.register_worker("w1", ["q"])

        with pytest.raises(LeaseLost):
            await backend.save_checkpoint(worker, job_id, 1, lease=LEASE)

        record = await backend.get_job(job_id)
        assert record is not None and record.checkpoint is None


class TestWaitForWork:
    async def test_returns_promptly_when_a_job_is_enqueued(self, backend: Backend) -> None:
        # The first wait may return early while a backend sets up its wake-up (PostgreSQL's
        # LISTEN connection); the wait below must then be woken by the enqueue itself.
        await backend.wait_for_work(["q"], max_wait=0.2)
        waiter = asyncio.create_task(backend.wait_for_work(["q"], max_wait=60))
        for _ in range(5):  # let it reach its wait
            await asyncio.sleep(0)
        assert not waiter.done()

        await backend.enqueue("q", {})

        async with asyncio.timeout(2):
            await waiter

    async def test_returns_at_once_when_a_job_is_due(self, backend: Backend) -> None:
        await backend.enqueue("q", {})

        async with asyncio.timeout(2):
            await backend.wait_for_work(["q"], max_wait=60)

    async def test_returns_by_max_wait_without_work(self, backend: Backend) -> None:
        async with asyncio.timeout(2):
            await backend.wait_for_work(["q"], max_wait=0.05)

    async def test_returns_when_a_delayed_job_falls_due(self, backend: Backend) -> None:
        await backend.enqueue("q", {}, delay=0.1)

        async with asyncio.timeout(2):
            await backend.wait_for_work(["q"], max_wait=60)


class TestMemoryOnlyWaitForWork:
    async def test_waits_for_max_wait_without_work(self) -> None:
        backend = MemoryBackend()
        loop = asyncio.get_running_loop()
        start = loop.time()

        await backend.wait_for_work(["q"], max_wait=0.05)

        assert loop.time() - start >= 0.04
