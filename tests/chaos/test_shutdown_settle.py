"""Found by scenario 3: a graceful stop must write the outcomes it has in flight. A settle that
waits on a row lock when SIGTERM arrives is written once the lock goes, not dropped (which made
finished jobs come back as WorkerLost and run a second time)."""

from __future__ import annotations

import asyncio
import signal

import asyncpg
import pytest

from batchworks import JobState, PostgresBackend
from tests.support.harness import Fleet, poll
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]


async def test_sigterm_while_a_settle_waits_on_a_lock_still_writes_the_outcomes(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet, pg_dsn: str
) -> None:
    schema = pg_backend.schema
    worker = await fleet.start(
        "w", runner={"concurrency": 5, "heartbeat_interval": 0.5, "prune_after": 30.0}
    )
    ids = await pg_backend.enqueue_many("q", [{"ms": 300}] * 3)
    ledger.expect(ids)

    async def all_running() -> bool:
        return await ledger.count("id = ANY($1) AND state = 'running'", ids) == 3

    await poll(all_running, within=10, what="3 running jobs")
    blocker = await asyncpg.connect(pg_dsn)
    try:
        # An operator's transaction (a report, a migration...) holds the rows for a while.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(f'SELECT id FROM "{schema}".jobs WHERE id = ANY($1) FOR UPDATE', ids)
        await poll(
            lambda: _settle_waits_on_a_lock(ledger, worker.pid),
            within=10,
            what="the worker's settle to wait on the row locks",
        )
        worker.send(signal.SIGTERM)
        await asyncio.sleep(0.5)  # the stop is under way while the rows are still locked
        await tx.commit()
    finally:
        await blocker.close()
    assert await worker.exit_code(within=20) == 0

    for job_id in ids:
        record = await pg_backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts, record.errors) == (JobState.SUCCEEDED, 1, ()), (
            f"job {job_id} finished before the stop, yet ended {record.state} after "
            f"{record.attempts} attempts with errors {record.errors}"
        )


async def _settle_waits_on_a_lock(ledger: Ledger, pid: int) -> bool:
    # Not on the blocker's connection: pg_stat_activity is a snapshot held per transaction.
    return bool(
        await ledger.pool.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = $1 "
            "AND wait_event_type = 'Lock' AND query LIKE '%unnest($2::bigint[], $3::text[]%'",
            f"chaos-bw-w-{pid}",
        )
    )
