"""Batches (#16) where PostgreSQL's own behaviour is the point: the batch row's lock between
statements that end the last members at once, the caller's transaction, and cancel_batch
meeting member rows another transaction holds."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from batchworks import BatchState, Callback, PostgresBackend
from tests.conftest import eventually
from tests.support.calls import claim, succeeded

pytestmark = pytest.mark.postgres

HANG_NET = 15.0  # seconds


async def asyncpg_fetchval(dsn: str, query: str, *args: object) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(query, *args))
    finally:
        await conn.close()


async def _blocked_on_lock(dsn: str, schema: str, count: int) -> None:
    """Until ``count`` statements on ``schema`` wait for a lock (read outside any transaction:
    inside one, pg_stat_activity is read once)."""
    for _ in range(1500):
        waiting = await asyncpg_fetchval(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND position($1 in query) > 0",
            f'"{schema}".',  # the text is cut at 1 kB: the schema comes first
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{count} statements did not come to wait for the lock")


async def test_two_settles_ending_the_last_members_at_once_finish_it_once(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    batch = await pg_backend.enqueue_batch(
        "q", [{"n": 1}, {"n": 2}], on_complete=Callback("done", None), on_success=Callback("ok")
    )
    one = await pg_backend.register_worker("one", ["q"])
    two = await pg_backend.register_worker("two", ["q"])
    [first] = await claim(pg_backend, one, 1)
    [second] = await claim(pg_backend, two, 1)

    holder = await asyncpg.connect(pg_dsn)
    try:
        # Hold the batch row, so that both settles have ended their members and queue on it.
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            f'SELECT 1 FROM "{pg_backend.schema}".batches WHERE id = $1 FOR UPDATE', batch.id
        )
        settles = [
            asyncio.create_task(pg_backend.settle(one, [succeeded(first.id)])),
            asyncio.create_task(pg_backend.settle(two, [succeeded(second.id)])),
        ]
        await _blocked_on_lock(pg_dsn, pg_backend.schema, 2)
        await tx.rollback()
        async with asyncio.timeout(HANG_NET):
            assert await asyncio.gather(*settles) == [[], []]
    finally:
        await holder.close()

    record = await pg_backend.get_batch(batch.id)
    assert record is not None
    assert (record.state, record.succeeded, record.queued, record.running) == (
        BatchState.FINISHED,
        2,
        0,
        0,
    )
    callbacks = await pg_backend.list_jobs(queue="done") + await pg_backend.list_jobs(queue="ok")
    assert {job.id for job in callbacks} == {record.complete_job, record.success_job}
    assert len(callbacks) == 2


async def test_a_batch_in_the_callers_transaction_exists_only_if_it_commits(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():
            kept = await pg_backend.enqueue_batch("q", [{"n": 1}], connection=conn)
            empty = await pg_backend.enqueue_batch(
                "q", [], on_complete=Callback("done", None), connection=conn
            )
        tx = conn.transaction()
        await tx.start()
        dropped = await pg_backend.enqueue_batch(
            "q", [], on_complete=Callback("done", None), connection=conn
        )
        await tx.rollback()
    finally:
        await conn.close()
    assert await pg_backend.get_batch(kept.id) is not None
    assert await pg_backend.get_job(kept.job_ids[0]) is not None
    finished = await pg_backend.get_batch(empty.id)
    assert finished is not None and finished.state is BatchState.FINISHED
    assert await pg_backend.get_batch(dropped.id) is None
    [callback] = await pg_backend.list_jobs(queue="done")  # the rolled back one made none
    assert callback.id == finished.complete_job


async def test_cancel_batch_comes_back_for_a_member_another_transaction_held(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    batch = await pg_backend.enqueue_batch("q", [{"n": i} for i in range(3)])
    holder = await asyncpg.connect(pg_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(  # as a claim taking it would, for a moment
            f'SELECT 1 FROM "{pg_backend.schema}".jobs WHERE id = $1 FOR UPDATE',
            batch.job_ids[1],
        )
        cancel = asyncio.create_task(pg_backend.cancel_batch(batch.id))

        async def first_pass_done() -> bool:
            record = await pg_backend.get_batch(batch.id)
            return record is not None and record.cancelled == 2

        await eventually(first_pass_done, what="the first pass to cancel the rows it could")
        assert not cancel.done()  # it comes back for the held one
        await tx.rollback()
        async with asyncio.timeout(HANG_NET):
            record = await cancel
    finally:
        await holder.close()
    assert (record.state, record.cancelled, record.done) == (BatchState.CANCELLED, 3, True)


async def test_a_member_settled_by_a_backend_that_did_not_claim_it_is_still_counted(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    # The settle of a flush it believes has no member takes the statement without the batch
    # bookkeeping first; a member it was wrong about is left by it and counted by the other.
    batch = await pg_backend.enqueue_batch("q", [{"n": 1}], on_complete=Callback("done", None))
    worker = await pg_backend.register_worker("w", ["q"])
    [job] = await claim(pg_backend, worker, 1)
    async with PostgresBackend(pg_dsn, schema=pg_backend.schema) as other:
        assert await other.settle(worker, [succeeded(job.id, None)]) == []
    record = await pg_backend.get_batch(batch.id)
    assert record is not None
    assert (record.state, record.succeeded, record.complete_job is not None) == (
        BatchState.FINISHED,
        1,
        True,
    )
