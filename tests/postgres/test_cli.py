"""The real ``batchworks`` command, in subprocesses, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest

from batchworks import JobState, PostgresBackend
from tests.conftest import eventually

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.postgres.cli_app:make_runner"


class Cli(Protocol):
    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def cli(pg_dsn: str, pg_schema: str) -> Cli:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batchworks", "--dsn", pg_dsn, "--schema", pg_schema, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


@pytest.fixture
async def migrated(cli: Cli, pg_dsn: str, pg_schema: str) -> AsyncIterator[PostgresBackend]:
    """A backend on a schema migrated by ``batchworks migrate``."""
    result = await asyncio.to_thread(cli, "migrate")
    assert result.returncode == 0, result.stderr
    assert f"schema {pg_schema!r} is up to date" in result.stdout
    async with PostgresBackend(pg_dsn, schema=pg_schema) as backend:
        yield backend


class TestRun:
    async def test_run_until_empty_exits_0_when_no_job_failed(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        await migrated.enqueue_many("q", ["a", "b", "c"])
        result = await asyncio.to_thread(cli, "run", APP, "--until-empty")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("succeeded 3, failed 0")

    async def test_run_until_empty_exits_1_when_some_failed_and_reports_json(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        await migrated.enqueue_many("q", ["a", "bad"])
        result = await asyncio.to_thread(cli, "run", APP, "--until-empty", "--json")
        assert result.returncode == 1, result.stderr
        report = json.loads(result.stdout)
        assert (report["succeeded"], report["failed"], report["worker"]) == (1, 1, "cli-worker")

    async def test_run_shows_live_progress_on_a_terminal_and_none_in_a_pipe(
        self, cli: Cli, migrated: PostgresBackend, pg_dsn: str, pg_schema: str
    ) -> None:
        # Jobs that take 1.2 s, so the run outlasts a few progress ticks (0.5 s apart).
        await migrated.enqueue_many("q", [{"sleep": 1.2}] * 3)
        command = [sys.executable, "-m", "batchworks", "--dsn", pg_dsn, "--schema", pg_schema]
        main, child = pty.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                *command, "run", APP, "--until-empty", cwd=ROOT, stdout=PIPE, stderr=child
            )
            os.close(child)
            child = -1
            stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
            terminal = await asyncio.to_thread(_read_all, main)
        finally:
            os.close(main)
            if child != -1:
                os.close(child)
        assert process.returncode == 0, terminal
        assert stdout.decode().startswith("succeeded 3, failed 0")
        ticks = [line for line in terminal.split("\r") if "jobs/s" in line]
        assert ticks, f"no progress line on the terminal: {terminal!r}"
        assert ticks[0].startswith("succeeded 0 | failed 0 | retried 0 | ")
        assert terminal.endswith("\r\x1b[K"), "the progress line is not cleared at the end"

        await migrated.enqueue_many("q", [{"sleep": 1.2}] * 3)
        piped = await asyncio.to_thread(cli, "run", APP, "--until-empty")
        assert piped.returncode == 0, piped.stderr
        assert "\r" not in piped.stderr and "jobs/s" not in piped.stderr  # 10 s apart in a pipe


def _read_all(fd: int) -> str:
    """What a pseudo-terminal's other end wrote until it closed."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


class TestWorker:
    async def test_worker_says_ready_runs_jobs_and_exits_0_on_sigterm(
        self, pg_dsn: str, pg_schema: str, migrated: PostgresBackend
    ) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchworks",
            "--dsn",
            pg_dsn,
            "--schema",
            pg_schema,
            "worker",
            APP,
            cwd=ROOT,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(20):
                while b"ready" not in (line := await proc.stderr.readline()):
                    assert line, "the worker exited before it was ready"
            job_id = await migrated.enqueue("q", "hello")

            async def done() -> bool:
                record = await migrated.get_job(job_id)
                return record is not None and record.state is JobState.SUCCEEDED

            await eventually(done, what="the worker to run the job")
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


class TestInspection:
    async def test_stats_shows_queues_by_state_and_live_workers(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        await migrated.enqueue_many("q", ["a", "b"])
        await migrated.enqueue("other", "c")
        worker = await migrated.register_worker("ops-1", ["q"])
        await migrated.claim(worker, ["q"], 1, lease=30, max_attempts=5)

        result = await asyncio.to_thread(cli, "stats")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split() == [
            "queue",
            "queued",
            "running",
            "succeeded",
            "failed",
            "cancelled",
            "oldest",
            "ready",
            "checkpointed",
        ]
        assert lines[1].split()[:6] == ["other", "1", "0", "0", "0", "0"]
        assert lines[2].split()[:6] == ["q", "1", "1", "0", "0", "0"]
        assert "1 live workers" in result.stdout
        assert "ops-1" in result.stdout

        as_json = json.loads((await asyncio.to_thread(cli, "stats", "--json")).stdout)
        assert as_json["queues"]["q"]["running"] == 1
        assert [w["name"] for w in as_json["workers"]] == ["ops-1"]

    async def test_jobs_list_and_show_print_state_errors_and_checkpoint(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        ok, bad = await migrated.enqueue_many("q", ["fine", "bad"])
        assert (await asyncio.to_thread(cli, "run", APP, "--until-empty")).returncode == 1
        worker = await migrated.register_worker("w", ["q"])
        hung = await migrated.enqueue("q", "later")
        await migrated.claim(worker, ["q"], 1, lease=30, max_attempts=5)
        await migrated.save_checkpoint(worker, hung, {"offset": 4000}, lease=30)

        listing = await asyncio.to_thread(cli, "jobs", "list", "--state", "failed")
        assert listing.returncode == 0, listing.stderr
        rows = listing.stdout.splitlines()
        assert rows[1].split()[:3] == [str(bad), "q", "failed"]
        assert "Terminal: bad record" in rows[1]
        assert len(rows) == 2

        shown = await asyncio.to_thread(cli, "jobs", "show", str(bad))
        assert shown.returncode == 0, shown.stderr
        assert "state       failed" in shown.stdout
        assert "attempt 1 at" in shown.stdout and "Terminal: bad record" in shown.stdout
        running = await asyncio.to_thread(cli, "jobs", "show", str(hung))
        assert 'checkpoint  {"offset": 4000}' in running.stdout
        as_json = json.loads(
            (await asyncio.to_thread(cli, "jobs", "show", str(ok), "--json")).stdout
        )
        assert (as_json["state"], as_json["result"]) == ("succeeded", "fine")

    async def test_retry_cancel_and_purge(self, cli: Cli, migrated: PostgresBackend) -> None:
        [bad] = await migrated.enqueue_many("q", ["bad"])
        assert (await asyncio.to_thread(cli, "run", APP, "--until-empty")).returncode == 1
        retried = await asyncio.to_thread(cli, "retry", "--queue", "q")
        assert retried.stdout.strip() == "queued 1 failed jobs again"
        record = await migrated.get_job(bad)
        assert record is not None and record.state is JobState.QUEUED

        cancelled = await asyncio.to_thread(cli, "cancel", str(bad))
        assert cancelled.stdout.strip() == f"job {bad} cancelled"
        again = await asyncio.to_thread(cli, "cancel", str(bad))
        assert again.returncode == 1 and "nothing to cancel" in again.stdout

        kept = await asyncio.to_thread(cli, "purge", "--older-than", "7d")
        assert kept.stdout.strip() == "purged 0 finished jobs"
        purged = await asyncio.to_thread(cli, "purge", "--older-than", "0s")
        assert purged.stdout.strip() == "purged 1 finished jobs"
        assert await migrated.get_job(bad) is None


class TestErrors:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["run", "nosuch.module:app", "--until-empty"], "cannot import module 'nosuch.module'"),
            (["run", "tests.postgres.cli_app:nothing", "--until-empty"], "has no attribute"),
            (["worker", "tests.postgres.cli_app:not_a_runner"], "neither a Runner nor a factory"),
            (["worker", "no-colon"], "must be module:attribute"),
            (["stats"], "has no batchworks tables"),
            (["purge", "--older-than", "soon"], "is not a duration"),
        ],
    )
    def test_user_mistakes_are_one_line_and_exit_2(
        self, cli: Cli, args: list[str], message: str
    ) -> None:
        result = cli(*args)
        assert result.returncode == 2
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2  # argparse adds its usage line

    def test_an_unreachable_database_is_one_line(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "batchworks", "--dsn", "postgresql://x@127.0.0.1:1/x", "stats"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert result.stderr.startswith("batchworks: error: could not connect to PostgreSQL")
        assert len(result.stderr.strip().splitlines()) == 1
