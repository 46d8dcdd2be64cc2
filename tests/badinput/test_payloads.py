"""Payloads that are not plain JSON, on PostgreSQL: each is stored and comes back exactly
(from ``get_job`` and in a worker's handler), or is refused at enqueue with an error that
says what to change, and nothing is written (how fast a refusal is: ``bench/refusal.py``)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from batchworks import JobState, PayloadError, PostgresBackend
from tests.badinput.judge import refused, same
from tests.support.harness import Fleet, poll
from tests.support.ledger import Ledger

pytestmark = pytest.mark.postgres

MiB = 1024 * 1024


def nested(depth: int, *, dicts: bool = False) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": value} if dicts else [value]
    return value


REFUSED = [
    pytest.param("x" * 10 * MiB, "over the limit of 1048576", id="10MiB-string"),
    pytest.param({"rows": ["r" * 62] * (10 * MiB // 64)}, "over the limit", id="10MiB-rows"),
    pytest.param({"name": "a\x00b"}, "NUL", id="nul-in-value"),
    pytest.param({"a\x00": 1}, "NUL", id="nul-in-key"),
    pytest.param(nested(10_000), "nested too deeply", id="nested-10000-lists"),
    pytest.param(nested(10_000, dicts=True), "nested too deeply", id="nested-10000-dicts"),
    pytest.param(math.nan, "NaN or Infinity", id="nan"),
    pytest.param({"x": [math.inf]}, "NaN or Infinity", id="infinity"),
    pytest.param(-math.inf, "NaN or Infinity", id="minus-infinity"),
    pytest.param({"at": datetime.now(UTC)}, "datetime at '$.at'", id="datetime"),
    pytest.param(Decimal("1.10"), "Decimal", id="decimal"),
    pytest.param(b"raw", "bytes", id="bytes"),
    pytest.param({1, 2}, "set", id="set"),
    pytest.param(uuid.uuid4(), "UUID", id="uuid"),
    pytest.param(object(), "not JSON", id="object"),
    pytest.param(1 + 2j, "not JSON", id="complex"),
    pytest.param("\ud800", "lone surrogate", id="lone-surrogate"),
    pytest.param({"\udfff": 1}, "lone surrogate", id="lone-surrogate-key"),
    pytest.param([1, "ok", {"deep": ["\udbff"]}], "lone surrogate", id="lone-surrogate-deep"),
]

STORED = [
    pytest.param("\\u0000", id="escaped-backslash-u0000"),
    pytest.param({"text": "line\u2028sep\u2029\x01\x1f\x7f"}, id="control-and-separators"),
    pytest.param({"emoji": "😀🧪", "rtl": "\u202eabc", "bom": "\ufeff"}, id="unicode"),
    pytest.param({"": "", "sql": 'x";DROP TABLE jobs;--', "quote'": "'"}, id="sql-like"),
    pytest.param(10**4000, id="int-4000-digits"),
    pytest.param([-(2**63), 2**64, 0, -1], id="int-edges"),
    pytest.param([5e-324, 1.7976931348623157e308, 0.1, 1e16, -0.0], id="float-edges"),
    pytest.param(nested(200, dicts=True), id="nested-200"),
    pytest.param((1, (2, 3)), id="tuples-become-lists"),
    pytest.param({"bool": True, "none": None, "one": 1, "float": 1.0}, id="types-kept"),
]


@pytest.mark.parametrize(("payload", "fragment"), REFUSED)
async def test_bad_payload_is_refused_and_stores_nothing(
    pg_backend: PostgresBackend, payload: Any, fragment: str
) -> None:
    await refused(lambda: pg_backend.enqueue("q", payload), "payload", fragment)
    await refused(
        lambda: pg_backend.enqueue_many("q", [{"fine": 1}, payload]), "payload #1", fragment
    )
    assert await pg_backend.stats() == {}


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({1: "a", "1": "b"}, id="int-and-str-key-collide"),
        pytest.param({True: "a", "true": "b"}, id="bool-and-str-key-collide"),
        pytest.param({None: "a", "null": "b"}, id="none-and-str-key-collide"),
        pytest.param({7: "a"}, id="int-key"),
    ],
)
async def test_non_str_keys_are_refused_not_silently_renamed_or_merged(
    pg_backend: PostgresBackend, payload: Any
) -> None:
    # JSON keys are strings: json.dumps turns 1 into "1", and two keys that render alike
    # collapse into one, so a value disappears without a word. Refuse instead.
    await refused(lambda: pg_backend.enqueue("q", payload), "payload", "key")
    assert await pg_backend.stats() == {}


async def test_odd_but_valid_payloads_come_back_exactly_in_get_job_and_handlers(
    pg_backend: PostgresBackend, fleet: Fleet, ledger: Ledger
) -> None:
    payloads = [param.values[0] for param in STORED]
    ids = await pg_backend.enqueue_many("q", payloads)
    ledger.expect(ids)
    for job_id, payload in zip(ids, payloads, strict=True):
        record = await pg_backend.get_job(job_id)
        assert record is not None
        assert same(payload, record.payload) is None, same(payload, record.payload)
    # An echo worker's handler returns the payload it was handed: its result must match too.
    await fleet.start("echo")
    await poll(ledger.drained, within=30, what="the echo worker to run every job")
    for job_id, payload in zip(ids, payloads, strict=True):
        record = await pg_backend.get_job(job_id)
        assert record is not None and record.state is JobState.SUCCEEDED
        assert same(payload, record.result) is None, same(payload, record.result)
    assert not fleet.crashes()


async def test_10_mib_payload_is_stored_exactly_under_a_raised_limit(
    pg_dsn: str, pg_backend: PostgresBackend, fleet: Fleet, ledger: Ledger
) -> None:
    payload = {"blob": "é" * (5 * MiB), "rows": list(range(1000))}  # 10 MiB of UTF-8
    async with PostgresBackend(
        pg_dsn, schema=pg_backend.schema, max_payload_bytes=16 * MiB
    ) as roomy:
        job_id = await roomy.enqueue("q", payload)
        ledger.expect([job_id])
        record = await roomy.get_job(job_id)
        assert record is not None and record.payload == payload
    await fleet.start("echo", max_payload_bytes=32 * MiB)
    await poll(ledger.drained, within=30, what="the 10 MiB job to run")
    record = await pg_backend.get_job(job_id)
    assert record is not None and record.state is JobState.SUCCEEDED
    assert record.result == payload
    assert not fleet.crashes()


async def test_payload_limit_error_names_the_limit_and_the_fix(
    pg_dsn: str, pg_backend: PostgresBackend
) -> None:
    async with PostgresBackend(pg_dsn, schema=pg_backend.schema, max_payload_bytes=1000) as small:
        message = await refused(lambda: small.enqueue("q", "x" * 1000), "payload")
    assert "1002 bytes of JSON, over the limit of 1000" in message
    assert "max_payload_bytes" in message
    with pytest.raises(PayloadError):
        raise PayloadError(message)  # the type a caller catches
