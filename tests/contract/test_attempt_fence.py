"""A settle is fenced by the attempt as well as the worker token.

A worker whose lease ran out while it still ran a job may claim that same job again (the
recovery put it back in the queue) before it learns of the loss. The first attempt's outcome
must then not settle the second attempt: both carry the same worker token.
"""

from __future__ import annotations

from datetime import timedelta

from batchworks.backends.base import Backend
from batchworks.job import JobState
from batchworks.outcome import Outcome, OutcomeKind
from tests.conftest import eventually

LEASE = 0.3  # seconds


async def test_an_earlier_attempts_outcome_cannot_settle_a_later_one(backend: Backend) -> None:
    job_id = await backend.enqueue("fence", {"n": 1}, max_attempts=5)
    token = await backend.register_worker("w1", ["fence"])
    [first] = await backend.claim(token, ["fence"], 1, lease=LEASE, max_attempts=5)
    assert first.attempt == 1

    async def back_in_queue() -> bool:
        await backend.recover(prune_after=60.0)  # the worker itself is alive: only the lease
        record = await backend.get_job(job_id)
        return record is not None and record.state is JobState.QUEUED

    await eventually(back_in_queue, within=15.0, what="the expired lease to be recovered")
    [second] = await backend.claim(token, ["fence"], 1, lease=60.0, max_attempts=5)
    assert (second.id, second.attempt) == (job_id, 2)

    stale = Outcome(job_id, OutcomeKind.SUCCEEDED, queue="fence", attempt=first.attempt)
    assert await backend.settle(token, [stale]) == [job_id]  # reported lost, nothing written
    record = await backend.get_job(job_id)
    assert record is not None and record.state is JobState.RUNNING

    stale_failure = Outcome(
        job_id,
        OutcomeKind.FAILED,
        queue="fence",
        attempt=first.attempt,
        error={"attempt": 1, "type": "ValueError", "message": "late", "traceback": None},
    )
    assert await backend.settle(token, [stale_failure]) == [job_id]

    current = Outcome(job_id, OutcomeKind.SUCCEEDED, queue="fence", attempt=second.attempt)
    assert await backend.settle(token, [current]) == []
    record = await backend.get_job(job_id)
    assert record is not None and record.state is JobState.SUCCEEDED
    assert [entry["type"] for entry in record.errors] == ["WorkerLost"]


async def test_an_outcome_of_another_claim_at_the_same_attempt_cannot_settle_it(
    backend: Backend,
) -> None:
    # Token and attempt alike, claims apart: what a failover to a lagging standby can leave (a
    # lost job's id drawn again, tests/postgres/test_failover_fencing.py). The claim's time
    # tells them apart, in both settle statements' shapes.
    job_id = await backend.enqueue("fence", {"n": 1})
    token = await backend.register_worker("w1", ["fence"])
    [claim] = await backend.claim(token, ["fence"], 1, lease=60.0, max_attempts=5)
    assert claim.claimed_at is not None
    other = claim.claimed_at - timedelta(seconds=1)
    for kind in (OutcomeKind.SUCCEEDED, OutcomeKind.FAILED):
        stale = Outcome(job_id, kind, queue="fence", attempt=claim.attempt, claimed_at=other)
        assert await backend.settle(token, [stale]) == [job_id], kind
    record = await backend.get_job(job_id)
    assert record is not None and record.state is JobState.RUNNING
    own = Outcome(
        job_id,
        OutcomeKind.SUCCEEDED,
        queue="fence",
        attempt=claim.attempt,
        claimed_at=claim.claimed_at,
    )
    assert await backend.settle(token, [own]) == []
    record = await backend.get_job(job_id)
    assert record is not None and record.state is JobState.SUCCEEDED
