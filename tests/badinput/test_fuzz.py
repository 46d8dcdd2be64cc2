"""Fuzzed with hypothesis: payloads, queue names and dedupe keys, on PostgreSQL. Each is either
stored and returned exactly (by ``get_job``, then by a worker's handler) or refused at enqueue
with a clear error before anything is written (how fast: ``bench/refusal.py``); nothing else
(no SQL or driver error) ever comes out; the worker never crashes; the tables are intact
afterwards."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchworks import ConfigurationError, JobState, PostgresBackend
from tests.badinput.judge import (
    dedupe_key_ok,
    refused,
    same,
    valid_queue,
    valid_schema,
    verdict_for,
)
from tests.support.harness import FULL, Fleet, pick, poll, record_figures
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(pick(120, 600))]

EXAMPLES = pick(300, 3000)
TEXT = st.text(st.characters(blacklist_categories=()), max_size=20)  # NUL and surrogates too
NASTY = [
    'x";DROP TABLE jobs;--',
    "x';DROP TABLE jobs;--",
    "Robert'); DROP TABLE students;--",
    "$1",
    "__SCHEMA__",
    "\\",
    "\\u0000",
    "%s",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
]
ATOMS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and the infinities too
    | TEXT
    | st.sampled_from(NASTY)
)
NOT_JSON = st.sampled_from(
    [datetime.now(UTC), Decimal("0.1"), b"bytes", frozenset({1}), uuid.uuid4(), 1j, object()]
)
PAYLOADS = st.recursive(
    ATOMS | NOT_JSON,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(TEXT | st.sampled_from(NASTY), children, max_size=5)
    ),
    max_leaves=25,
)
NAMES = (
    st.text(
        st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_.:-\"';"),
        max_size=12,
    )
    | st.sampled_from(NASTY)
    | st.sampled_from(["Q", "q", "Emails", "emails", "EMAILS", "a" * 128, "a" * 129, "é" * 100])
    | st.integers(min_value=1, max_value=300).map(lambda n: "b" * n)
)

GOOD_QUEUES = st.sampled_from(["q", "Q", "emails", "Emails", "a" * 128, "a.b:c-d_e", "0"])


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """``usual`` three times in four, else ``odd``."""
    return st.integers(0, 3).flatmap(lambda n: odd if n == 0 else usual)


@dataclass
class Tally:
    """What the fuzzing stored and refused."""

    stored: dict[int, Any] = field(default_factory=dict)  # job id -> payload as sent
    live_keys: dict[tuple[str, str], int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    queues: set[str] = field(default_factory=set)

    def refusal(self, why: str) -> None:
        self.refused[why] = self.refused.get(why, 0) + 1


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name

    async def drop() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def test_fuzzed_input_is_stored_exactly_or_refused(
    pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    tally = Tally()
    with asyncio.Runner() as loop:
        backend = PostgresBackend(pg_dsn, schema=schema)
        loop.run(backend.open())
        try:
            loop.run(backend.migrate())

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=not FULL,  # the same examples on every CI run; fresh ones in full
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(
                payload=PAYLOADS,
                queue=mostly(GOOD_QUEUES, NAMES),
                dedupe=mostly(st.none(), NAMES | TEXT),
                schema_name=NAMES,
            )
            def one(payload: Any, queue: str, dedupe: str | None, schema_name: str) -> None:
                loop.run(enqueue_one(backend, tally, payload, queue, dedupe))
                check_schema_name(schema_name)

            one()
            loop.run(run_them(backend, pg_dsn, schema, tmp_path, tally))
        finally:
            loop.run(backend.aclose())


async def enqueue_one(
    backend: PostgresBackend, tally: Tally, payload: Any, queue: str, dedupe: str | None
) -> None:
    why = verdict_for(payload)
    if not valid_queue(queue):
        why = "queue name"
        await refused(lambda: backend.enqueue(queue, payload), "queue name")
    elif dedupe is not None and not dedupe_key_ok(dedupe):
        why = "dedupe_key"
        await refused(lambda: backend.enqueue(queue, {}, dedupe_key=dedupe), "dedupe_key")
    elif why is not None:
        await refused(lambda: backend.enqueue(queue, payload), "payload")
    if why is not None:
        tally.refusal(why)
        return
    # Anything but a validation error (a driver or SQL error) fails the test right here.
    job_id = await backend.enqueue(queue, payload, dedupe_key=dedupe)
    tally.queues.add(queue)
    record = await backend.get_job(job_id)
    assert record is not None
    if dedupe is not None and (queue, dedupe) in tally.live_keys:
        assert job_id == tally.live_keys[queue, dedupe], "a live dedupe key gave a new job"
        return
    if dedupe is not None:
        tally.live_keys[queue, dedupe] = job_id
    tally.stored[job_id] = payload
    assert (record.queue, record.dedupe_key) == (queue, dedupe)
    difference = same(payload, record.payload)
    assert difference is None, f"stored payload differs: {difference}"


def check_schema_name(name: str) -> None:
    if valid_schema(name):
        PostgresBackend("postgresql://unused", schema=name)  # accepted: no connection yet
        return
    with pytest.raises(ConfigurationError, match="schema name"):
        PostgresBackend("postgresql://unused", schema=name)


async def run_them(
    backend: PostgresBackend, dsn: str, schema: str, tmp_path: Path, tally: Tally
) -> None:
    """An echo worker runs every stored job; each result must be its payload."""
    ledger = await Ledger.create(dsn, schema)
    fleet = Fleet(dsn, schema, tmp_path, ledger)
    try:
        ledger.expect(tally.stored)
        ledger.expect(set(tally.live_keys.values()))
        await fleet.start("echo", echo=True, queues=sorted(tally.queues) or ["q"])
        await poll(ledger.drained, within=60, what="the echo worker to run every job")
        codes = await fleet.stop_all()
        assert codes == {"echo": 0}
        assert not fleet.crashes(), fleet.crashes()
        for job_id, payload in tally.stored.items():
            record = await backend.get_job(job_id)
            assert record is not None and record.state is JobState.SUCCEEDED, record
            difference = same(payload, record.result)
            assert difference is None, f"job {job_id}: the handler saw {difference}"
        await check_tables_intact(ledger, schema)
        record_figures(
            "bad input: fuzzed enqueues",
            examples=EXAMPLES,
            stored=len(tally.stored),
            refused=dict(sorted(tally.refused.items())),
            worker_crashes=0,
        )
    finally:
        await fleet.cleanup()
        await ledger.close()


async def check_tables_intact(ledger: Ledger, schema: str) -> None:
    tables = await ledger.pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
    )
    assert {row["table_name"] for row in tables} == {
        "jobs",
        "workers",
        "migrations",
        "schedules",
        "queues",
        "batches",
        "effects",
        "faults",
    }
    count = await ledger.pool.fetchval(f'SELECT count(*) FROM "{schema}".jobs')
    assert count == len(ledger.expected)
