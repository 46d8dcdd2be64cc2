"""tools/screenshots.py, which makes the README's screenshots, runs and writes real PNGs."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def test_the_screenshot_script_writes_each_page(
    tmp_path: Path,
    pg_dsn: str,
    browser: Any,  # the browser fixture: fails in CI without one
) -> None:
    result = subprocess.run(
        [sys.executable, "tools/screenshots.py", "--out", str(tmp_path), "--dsn", pg_dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,  # under the suite's 120 s per test
    )
    assert result.returncode == 0, result.stderr
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted(
        [
            "overview.png",
            "jobs.png",
            "job.png",
            "job-waiting.png",
            "workers.png",
            "schedules.png",
            "batches.png",
            "batch.png",
        ]
    )
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert data[:8] == PNG, path.name
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        assert width == 1280 and height >= 300, (path.name, width, height)
    # the README shows the committed ones
    readme = (ROOT / "README.md").read_text()
    for name in names:
        assert f"docs/screenshots/{name}" in readme or name == "job-waiting.png", name
        assert (ROOT / "docs" / "screenshots" / name).exists(), name
