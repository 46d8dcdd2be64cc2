"""The examples that do more on PostgreSQL, run on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


async def test_resumable_export_survives_sigkill_on_postgres(pg_dsn: str) -> None:
    env = {**os.environ, "BATCHWORKS_DSN": pg_dsn}
    try:
        result = subprocess.run(  # noqa: ASYNC221 - the example runs its own event loop
            [sys.executable, "examples/resumable_export.py"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute("DROP SCHEMA IF EXISTS batchworks_export_example CASCADE")
        await conn.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIGKILL to the worker at checkpoint" in result.stdout
    assert "attempt 2: resuming at item" in result.stdout
    assert "succeeded after 2 attempts: {'exported': 10000}" in result.stdout


@pytest.mark.parametrize(
    ("example", "schema", "expected"),
    [
        ("service.py", "batchworks_service_example", "receipts sent: 30 of 30 orders"),
        ("cron_batch.py", "batchworks_cron_example", "invoices: succeeded 200, failed 0"),
        ("fastapi_service.py", "batchworks_fastapi_example", "after shutdown: healthy=False"),
    ],
)
async def test_examples_run_on_postgres(
    pg_dsn: str, example: str, schema: str, expected: str
) -> None:
    env = {**os.environ, "BATCHWORKS_DSN": pg_dsn}
    try:
        result = subprocess.run(  # noqa: ASYNC221 - the example runs its own event loop
            [sys.executable, f"examples/{example}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout
