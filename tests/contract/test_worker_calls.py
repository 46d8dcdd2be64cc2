"""Contract tests of a backend's worker side, written against the ``backend`` fixture so that
they run on every backend: register_worker, claim, settle, heartbeat, recover, cancel (as the
worker sees it), checkpoints and wait_for_work.

The calls are driven directly, the way a Runner drives them, so that each rule is checked on
its own. The memory backend's tests that move time with a fake clock are in
``tests/unit/test_memory_only.py``.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from batchworks import JobState, LeaseLost
from batchworks.backends.base import Backend, Heartbeat
from batchworks.outcome import Outcome, OutcomeKind
from tests.support.calls import (
    LEASE,
    POLICY_MAX_ATTEMPTS,
    claim,
    claim_one,
    state,
    succeeded,
)


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

        async with asyncio.timeout(15):  # a hang net, far below max_wait=60
            await waiter

    async def test_returns_at_once_when_a_job_is_due(self, backend: Backend) -> None:
        await backend.enqueue("q", {})

        async with asyncio.timeout(15):  # a hang net, far below max_wait=60
            await backend.wait_for_work(["q"], max_wait=60)

    async def test_returns_by_max_wait_without_work(self, backend: Backend) -> None:
        async with asyncio.timeout(15):  # a hang net
            await backend.wait_for_work(["q"], max_wait=0.05)

    async def test_returns_when_a_delayed_job_falls_due(self, backend: Backend) -> None:
        await backend.enqueue("q", {}, delay=0.1)

        async with asyncio.timeout(15):  # a hang net, far below max_wait=60
            await backend.wait_for_work(["q"], max_wait=60)
