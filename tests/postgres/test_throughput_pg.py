"""The dashboard's throughput chart on PostgreSQL: buckets aligned to the epoch, the ones that
are over kept by the backend and read once, so that a refresh reads the newest jobs only."""

from __future__ import annotations

import math
from datetime import timedelta

import asyncpg
import pytest

from batchworks import PostgresBackend
from batchworks.backends.base import Throughput

pytestmark = pytest.mark.postgres

WINDOW, BUCKETS = 3600.0, 60


async def _ended(
    conn: asyncpg.Connection, schema: str, ago: list[float], queue: str, state: str
) -> None:
    """Jobs of ``queue`` that ended in ``state`` that many seconds before now()."""
    await conn.execute(
        f'INSERT INTO "{schema}".jobs (queue, payload, state, attempts, finished_at) '
        "SELECT $1, '{}', $2, 1, now() - make_interval(secs => a) FROM unnest($3::float8[]) AS a",
        queue,
        state,
        ago,
    )


async def _brute_force(
    conn: asyncpg.Connection, schema: str, seen: Throughput
) -> dict[str, dict[str, list[int]]]:
    """The same buckets counted from every row, with the clock the backend read."""
    width = WINDOW / BUCKETS
    oldest = math.floor(seen.now.timestamp() / width) - BUCKETS + 1
    rows = await conn.fetch(
        f'SELECT queue, state, extract(epoch FROM finished_at)::float8 AS at FROM "{schema}".jobs '
        "WHERE finished_at IS NOT NULL AND finished_at <= $1",
        seen.now,
    )
    queues: dict[str, dict[str, list[int]]] = {}
    for row in rows:
        bucket = math.floor(row["at"] / width) - oldest
        if 0 <= bucket < BUCKETS:
            per_state = queues.setdefault(
                row["queue"], {s: [0] * BUCKETS for s in ("succeeded", "failed", "cancelled")}
            )
            per_state[row["state"]][bucket] += 1
    return queues


async def test_the_buckets_match_a_count_of_every_row_read_after_read(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        schema = pg_backend.schema
        await _ended(conn, schema, [i * 37.0 for i in range(100)], "a", "succeeded")
        await _ended(conn, schema, [i * 91.0 + 5 for i in range(30)], "a", "failed")
        await _ended(conn, schema, [i * 53.0 + 1 for i in range(40)], "b", "cancelled")
        await _ended(conn, schema, [4000.0, 7200.0], "old", "succeeded")  # before the window
        for _ in range(3):
            seen = await pg_backend.throughput(window=WINDOW, buckets=BUCKETS)
            assert seen.bucket == 60
            assert seen.queues == await _brute_force(conn, schema, seen)
            assert sum(seen.queues["a"]["succeeded"]) >= 90  # not a vacuous comparison
    finally:
        await conn.close()


async def test_a_bucket_that_is_over_is_read_once_and_a_refresh_reads_the_newest(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        schema = pg_backend.schema
        await _ended(conn, schema, [1800.0, 0.0], "q", "succeeded")
        first = await pg_backend.throughput(window=WINDOW, buckets=BUCKETS)
        assert sum(first.queues["q"]["succeeded"]) == 2
        # A job recorded later as ending half an hour ago (no settle does that; it shows that
        # the bucket, over, is not read again), and one that ended just now.
        await _ended(conn, schema, [1800.0, 0.0], "q", "succeeded")
        again = await pg_backend.throughput(window=WINDOW, buckets=BUCKETS)
        assert sum(again.queues["q"]["succeeded"]) == 3, again.queues
        assert sum(again.queues["q"]["succeeded"][-2:]) >= 2  # the newest (or one before it)
        # Another backend (another dashboard process) reads everything once.
        async with PostgresBackend(pg_dsn, schema=schema, min_size=1, max_size=1) as other:
            fresh = await other.throughput(window=WINDOW, buckets=BUCKETS)
        assert sum(fresh.queues["q"]["succeeded"]) == 4
    finally:
        await conn.close()


async def test_a_clock_gone_back_drops_what_was_kept_and_few_windows_are_kept(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _ended(conn, pg_backend.schema, [1800.0, 0.0], "q", "succeeded")
        await pg_backend.throughput(window=WINDOW, buckets=BUCKETS)
        # As if the last read had come from a server whose clock was a day ahead (before a
        # failover): the buckets kept then are not this server's.
        kept = pg_backend._kept_buckets(WINDOW, BUCKETS)
        assert kept.now is not None
        kept.now += timedelta(days=1)
        kept.buckets = {k: {("q", "succeeded"): 99} for k in kept.buckets}
        seen = await pg_backend.throughput(window=WINDOW, buckets=BUCKETS)
        assert seen.queues == await _brute_force(conn, pg_backend.schema, seen)
    finally:
        await conn.close()
    for minutes in range(1, 8):
        await pg_backend.throughput(window=60.0 * minutes, buckets=minutes)
    assert len(pg_backend.__dict__["_throughput_kept"]) <= 4
