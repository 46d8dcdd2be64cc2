"""Every benchmark's ``--quick`` mode runs to the end and prints its ratio line.

Benchmarks are not tests: nothing here times anything. This only keeps ``bench/`` from rotting:
each script runs as a subprocess against the test server (``BATCHWORKS_BENCH_DSN``), must exit
0 (a benchmark exits non-zero only when the work it measures did not happen) and must print at
least one ``ratio NAME: 1.23x`` line. The peers (PgQueuer, Procrastinate) come with the ``bench``
extra, which ``make test`` does not install: a benchmark then says it skipped them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = [
    "overhead.py",
    "drain.py",
    "matrix.py",
    "enqueue.py",
    "latency.py",
    "scale.py",
    "memory.py",
    "tracing_cost.py",
    "refusal.py",
    "schedule_idle.py",
    "batches.py",
    "web_list.py",
    "wal.py",
    "retention.py",
    "server_bound.py",
    "flow.py",
]
RATIO = re.compile(r"^ratio\b.*\d+\.\d+x", re.MULTILINE)


@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmark_quick_mode_runs_and_prints_its_ratio(pg_dsn: str, script: str) -> None:
    env = {**os.environ, "BATCHWORKS_BENCH_DSN": pg_dsn}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang net: a quick mode takes seconds, more on a loaded machine
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert RATIO.search(result.stdout), output
    for peer in ("pgqueuer", "procrastinate"):
        if script in ("drain.py", "matrix.py") and f"{peer} not installed" not in result.stdout:
            assert re.search(rf"^\s+.*{peer}\b", result.stdout, re.MULTILINE), output
