"""Queue, schema and dedupe values that try SQL, run long or differ only in case, on
PostgreSQL: refused with a clear error before anything is written, or stored exactly and kept
apart."""

from __future__ import annotations

import asyncpg
import pytest

from batchworks import ConfigurationError, JobState, PostgresBackend
from tests.badinput.judge import refused
from tests.support.harness import Fleet, poll
from tests.support.ledger import Ledger

pytestmark = pytest.mark.postgres

INJECTION = 'x";DROP TABLE jobs;--'


@pytest.mark.parametrize(
    "queue",
    [INJECTION, "x';DROP TABLE jobs;--", "b" * 200, "é" * 100, "", " q", "q\x00", "a" * 129],
    ids=[
        "double-quote",
        "single-quote",
        "200-bytes",
        "200-bytes-utf8",
        "empty",
        "space",
        "nul",
        "129",
    ],
)
async def test_bad_queue_names_are_refused(pg_backend: PostgresBackend, queue: str) -> None:
    await refused(lambda: pg_backend.enqueue(queue, {}), "queue name", "use 1-128")
    await refused(lambda: pg_backend.enqueue_many(queue, [{}]), "queue name")
    assert await pg_backend.stats() == {}


@pytest.mark.parametrize(
    "schema",
    [INJECTION, "s" * 200, "Batchworks", "BATCHWORKS", "1abc", "a-b", "", "a" * 51, "sch\x00"],
)
def test_bad_schema_names_are_refused_at_construction(schema: str) -> None:
    with pytest.raises(ConfigurationError, match=r"schema name .* is invalid: use 1-50 lowercase"):
        PostgresBackend("postgresql://unused", schema=schema)


@pytest.mark.parametrize("schema", ["_", "a" * 50, "x_1"])
async def test_odd_valid_schema_names_work(pg_dsn: str, schema: str) -> None:
    async with PostgresBackend(pg_dsn, schema=schema) as backend:
        try:
            await backend.migrate()
            job_id = await backend.enqueue("q", {"in": schema})
            record = await backend.get_job(job_id)
            assert record is not None and record.payload == {"in": schema}
        finally:
            conn = await asyncpg.connect(pg_dsn)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()


@pytest.mark.parametrize(
    "key", ["", "k" * 513, "a\x00b", "\ud800"], ids=["empty", "513", "nul", "surrogate"]
)
async def test_bad_dedupe_keys_are_refused(pg_backend: PostgresBackend, key: str) -> None:
    await refused(lambda: pg_backend.enqueue("q", {}, dedupe_key=key), "dedupe_key")
    assert await pg_backend.stats() == {}


async def test_queue_names_differing_in_case_are_different_queues(
    pg_backend: PostgresBackend, fleet: Fleet, ledger: Ledger
) -> None:
    names = ["emails", "Emails", "EMAILS", "a" * 128]
    ids = {name: await pg_backend.enqueue(name, {"for": name}) for name in names}
    assert len(set(ids.values())) == len(names)
    stats = await pg_backend.stats()
    assert {name: stats[name]["queued"] for name in names} == dict.fromkeys(names, 1)
    # A worker of "emails" takes only its own job.
    ledger.expect([ids["emails"]])
    await fleet.start("lower", queues=["emails"])
    await poll(ledger.drained, within=20, what="the 'emails' job to run")
    await fleet.stop_all()
    for name, job_id in ids.items():
        record = await pg_backend.get_job(job_id)
        assert record is not None and record.queue == name
        expected = JobState.SUCCEEDED if name == "emails" else JobState.QUEUED
        assert record.state is expected, (name, record.state)


async def test_dedupe_keys_are_stored_exactly_and_compared_exactly(
    pg_backend: PostgresBackend, pg_dsn: str
) -> None:
    keys = [INJECTION, "x';DROP TABLE jobs;--", "k" * 200, "é" * 200, "😀" * 512, "K", "k", "$1"]
    ids = [await pg_backend.enqueue("q", {"key": key}, dedupe_key=key) for key in keys]
    assert len(set(ids)) == len(keys), "keys that differ (even only in case) are different jobs"
    for key, job_id in zip(keys, ids, strict=True):
        record = await pg_backend.get_job(job_id)
        assert record is not None and (record.dedupe_key, record.payload) == (key, {"key": key})
        assert await pg_backend.enqueue("q", {"again": True}, dedupe_key=key) == job_id
    assert (await pg_backend.stats())["q"]["queued"] == len(keys)
    conn = await asyncpg.connect(pg_dsn)
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
        pg_backend.schema,
    )
    await conn.close()
    assert {row["table_name"] for row in tables} == {
        "jobs",
        "workers",
        "migrations",
        "schedules",
        "queues",
        "batches",
    }
