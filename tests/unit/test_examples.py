"""Smoke tests: every example runs to the end, and the overhead benchmark runs in CI mode.

Each runs as its own process, the way a reader runs it, from the repository root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT = 60.0  # seconds

#: What each example prints in its summary when it worked; a new example adds its own.
#: (quickstart.py itself exits 1 if any job did not reach a final state.)
SUMMARY_LINES = {
    "quickstart.py": re.compile(
        r"^Synced 2,000 customer records in \d+\.\d+s.*^Failures by reason:\n"
        r".*ValueError: email address is not valid",
        re.MULTILINE | re.DOTALL,
    ),
    "service.py": re.compile(
        r"^receipts sent: 30 of 30 orders\n^runner: succeeded 30, failed 0$", re.MULTILINE
    ),
    "cron_batch.py": re.compile(r"^invoices: succeeded 200, failed 0, retried 4 in ", re.MULTILINE),
    "tracing.py": re.compile(
        r'"name": "send jobs".*"name": "process jobs".*^traced: succeeded 2, retried 1$',
        re.MULTILINE | re.DOTALL,
    ),
    "fastapi_service.py": re.compile(
        r"^GET /healthz: 200 \{'healthy': True\}\n"
        r"^POST /quotes: 200 net 15.5 gross 18.6\n^POST /quotes: 200 net 99.99 gross 106.99\n"
        r"^after shutdown: healthy=False, succeeded 2$",
        re.MULTILINE,
    ),
    "dashboard.py": re.compile(
        r"^GET /ops/ without a token: 403\n"
        r"^GET /ops/jobs\?state=failed as a viewer: 200, jobs \['(\d+)'\]\n"
        r"^POST retry as a viewer: 403\n"
        r"^POST retry as an operator: 303 -> /ops/jobs/\1\?done=retried\n"
        r"^job \1 is queued again, attempts 0$",
        re.MULTILINE,
    ),
    "periodic.py": re.compile(
        r"^heartbeat-report: next tick .*^ticks: (\d+) jobs for \1 ticks, 0 ticks twice$",
        re.MULTILINE | re.DOTALL,
    ),
    "batches.py": re.compile(
        r"^batch 1 done: 100% of 1010 members, 1006 succeeded, 4 failed\n"
        r"^on_complete: batch 1 finished, 1006 of 1010 rows imported \(1006 results read\), 4 "
        r"failed: 1x Terminal: row 3: no such customer;.*\n^on_success enqueued: False$",
        re.MULTILINE,
    ),
    "flow_control.py": re.compile(
        r"^exports: at most [123] at once across 2 runners \(limit 3\)\n"
        r"^sync: at most 1 per customer at once \(limit 1\).*\n"
        r"^crm: at most [1-5] starts in any second \(limit 5\)\n"
        r"^emails: 0 started while paused, 5 after$",
        re.MULTILINE,
    ),
    "resumable_export.py": re.compile(
        r"^job \d+ succeeded after 1 attempts.*\n^items exported: 10,000 of 10,000; done twice: 0$",
        re.MULTILINE,
    ),
}


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    # Without BATCHWORKS_DSN the examples use the in-memory backend: no server needed.
    env = {name: value for name, value in os.environ.items() if name != "BATCHWORKS_DSN"}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_examples_are_found() -> None:
    # An empty glob would parametrize the test below away and pass silently.
    assert "quickstart.py" in [path.name for path in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs_and_prints_its_summary(example: Path) -> None:
    expected = SUMMARY_LINES.get(example.name)
    assert expected is not None, (
        f"examples/{example.name} has no expected summary line: add one to SUMMARY_LINES"
    )
    result = run_script(str(example.relative_to(ROOT)))
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert expected.search(result.stdout), result.stdout


def test_overhead_bench_quick_reports_a_ratio() -> None:
    result = run_script("bench/overhead.py", "--quick")
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert re.search(r"^ratio \(runner time / bare time\): \d+\.\d+x", result.stdout, re.M), (
        result.stdout
    )


def test_the_readme_shows_the_fastapi_lifespan_the_example_runs() -> None:
    # The README's snippet is the example's code, so what readers copy is what this suite runs.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = (ROOT / "examples" / "fastapi_service.py").read_text(encoding="utf-8")
    start = example.index("@asynccontextmanager")
    lifespan = example[start : example.index("app = FastAPI(lifespan=lifespan)", start)].strip()
    assert lifespan.count("\n") >= 5, lifespan
    assert lifespan in readme, (
        "README.md's FastAPI lifespan differs from examples/fastapi_service.py"
    )
