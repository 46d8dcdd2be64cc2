"""Fencing after a failover to a standby that lagged (asynchronous replication), at the level
of the backend's statements: the new primary holds a prefix of the old one's commits, so an
enqueue and a claim can both be gone while the worker that claimed the job still runs it, and
the sequence draws the lost job's id again for another job (``tests/chaos/test_failover_async.py``
sees it happen: most lost ids are drawn again)."""

from __future__ import annotations

import asyncpg

from batchworks import PostgresBackend
from batchworks.outcome import Outcome, OutcomeKind
from tests.support.calls import claim_one


async def test_an_outcome_of_a_lost_job_cannot_land_on_the_job_that_reuses_its_id(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    worker = await pg_backend.register_worker("w", ["q"])
    lost = await pg_backend.enqueue("q", {"job": "lost in the failover"})
    first = await claim_one(pg_backend, worker)
    assert first.id == lost
    # The failover: neither the enqueue nor the claim reached the standby, and the sequence's
    # WAL record past the prefix is gone too, so it draws the lost id again.
    conn = await asyncpg.connect(pg_dsn)
    try:
        schema = pg_backend.schema
        await conn.execute(f'DELETE FROM "{schema}".jobs WHERE id = $1', lost)
        await conn.execute(f"SELECT setval('\"{schema}\".jobs_id_seq', $1, false)", lost)
    finally:
        await conn.close()
    reused = await pg_backend.enqueue("q", {"job": "enqueued after the failover"})
    assert reused == lost
    second = await claim_one(pg_backend, worker)  # the same worker, the same attempt number
    assert (second.id, second.attempt) == (first.id, first.attempt)

    # The outcome of the lost job's execution, written once the new primary answers.
    stale = Outcome(
        first.id,
        OutcomeKind.SUCCEEDED,
        result_json='"the lost job\'s"',
        attempt=first.attempt,
        claimed_at=first.claimed_at,
    )
    refused = await pg_backend.settle(worker, [stale])
    record = await pg_backend.get_job(reused)
    assert record is not None
    assert refused == [first.id], f"the lost job's outcome landed on job {reused}: {record}"
