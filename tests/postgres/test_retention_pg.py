"""The retention purge on PostgreSQL (#18): one purger at a time, and a batch that reads only
the history it deletes, however much there is, with or without planner statistics."""

from __future__ import annotations

import json

import asyncpg
import pytest

from batchworks import PostgresBackend
from batchworks.backends.postgres.backend import Queries, _lock_key
from tests.postgres.test_postgres_backend import _scans_of

pytestmark = pytest.mark.postgres


async def _history(conn: asyncpg.Connection, schema: str, count: int, *, days_ago: int) -> None:
    await conn.execute(
        f'INSERT INTO "{schema}".jobs (queue, payload, state, attempts, finished_at) '
        "SELECT 'q', '{}', 'succeeded', 1, now() - make_interval(days => $2) "
        "FROM generate_series(1, $1)",
        count,
        days_ago,
    )


async def test_a_second_purger_deletes_nothing_while_one_purges(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    other = await asyncpg.connect(pg_dsn)
    try:
        await _history(other, pg_backend.schema, 10, days_ago=30)
        # Another runner's purge, stopped half-way: it holds the lock of its statement.
        async with other.transaction():
            await other.execute(
                "SELECT pg_advisory_xact_lock($1)", _lock_key(pg_backend.schema, "purge")
            )
            assert await pg_backend.purge_batch(86400, limit=100) is None
            assert (await pg_backend.stats())["q"]["succeeded"] == 10
        assert await pg_backend.purge_batch(86400, limit=100) == 10
    finally:
        await other.close()


@pytest.mark.parametrize("analyzed", [False, True], ids=["no statistics", "analyzed"])
async def test_a_batch_reads_the_oldest_history_off_jobs_finished_only(
    pg_backend: PostgresBackend, pg_dsn: str, analyzed: bool
) -> None:
    await pg_backend.enqueue_many("q", list(range(5000)))
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _history(conn, pg_backend.schema, 20_000, days_ago=30)
        await _history(conn, pg_backend.schema, 5_000, days_ago=1)  # kept: within retention
        if analyzed:
            await conn.execute(f'ANALYZE "{pg_backend.schema}".jobs')
        queries = Queries.fill(pg_backend.schema)
        statement = queries.purge_batch
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.fetch(queries.purge_plan)  # as purge_batch() runs it
            [row] = await conn.fetch(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", 7 * 86400.0, 100, 1
            )
        finally:
            await transaction.rollback()  # EXPLAIN ANALYZE ran it: undo
        plan = json.loads(row[0])[0]["Plan"]
        scans = [scan for scan in _scans_of(plan, "jobs") if scan.get("Index Name") != "jobs_pkey"]
        assert scans, plan
        for scan in scans:
            assert scan["Node Type"] == "Index Scan", scan
            assert scan["Index Name"] == "jobs_finished", scan
            assert scan["Actual Rows"] * scan["Actual Loops"] <= 100, scan
    finally:
        await conn.close()
