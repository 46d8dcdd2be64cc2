"""The examples that do more on PostgreSQL, run on PostgreSQL.

Each run gets a schema of its own (``BATCHWORKS_SCHEMA``, which every example reads): two runs
of the suite on one server must not share an example's tables and jobs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, dsn: str, schema: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHWORKS_DSN": dsn, "BATCHWORKS_SCHEMA": schema}
    return subprocess.run(
        [sys.executable, f"examples/{name}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_resumable_export_survives_sigkill_on_postgres(pg_dsn: str, pg_schema: str) -> None:
    result = run_example("resumable_export.py", pg_dsn, pg_schema)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIGKILL to the worker at checkpoint" in result.stdout
    assert "attempt 2: resuming at item" in result.stdout
    assert "succeeded after 2 attempts: {'exported': 10000}" in result.stdout


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("service.py", "receipts sent: 30 of 30 orders"),
        ("cron_batch.py", "invoices: succeeded 200, failed 0"),
        ("fastapi_service.py", "after shutdown: healthy=False"),
        ("dashboard.py", "is queued again, attempts 0"),
    ],
)
def test_examples_run_on_postgres(pg_dsn: str, pg_schema: str, example: str, expected: str) -> None:
    result = run_example(example, pg_dsn, pg_schema)
    assert result.returncode == 0, result.stdout + result.stderr
    assert expected in result.stdout


def test_flow_control_holds_its_limits_across_two_runners_on_postgres(
    pg_dsn: str, pg_schema: str
) -> None:
    result = run_example("flow_control.py", pg_dsn, pg_schema)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "emails: 0 started while paused, 5 after" in result.stdout
    assert "sync: at most 1 per customer at once (limit 1)" in result.stdout
