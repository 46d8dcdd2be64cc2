"""The real ``batchworks`` command, in subprocesses, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import socket
import subprocess
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Protocol

import asyncpg
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
        code, stdout, terminal = await on_terminal(
            [*command, "run", APP, "--until-empty"], "stderr"
        )
        assert code == 0, terminal
        assert stdout.startswith("succeeded 3, failed 0")
        ticks = [line for line in terminal.split("\r") if "jobs/s" in line]
        assert ticks, f"no progress line on the terminal: {terminal!r}"
        assert ticks[0].startswith("succeeded 0 | failed 0 | retried 0 | ")
        assert terminal.endswith("\r\x1b[K"), "the progress line is not cleared at the end"

        await migrated.enqueue_many("q", [{"sleep": 1.2}] * 3)
        piped = await asyncio.to_thread(cli, "run", APP, "--until-empty")
        assert piped.returncode == 0, piped.stderr
        assert "\r" not in piped.stderr and "jobs/s" not in piped.stderr  # 10 s apart in a pipe


async def on_terminal(
    command: list[str], stream: str, during: Awaitable[object] | None = None
) -> tuple[int, str, str]:
    """Run ``command`` with its ``stream`` ("stdout" or "stderr") on a pseudo-terminal and the
    other in a pipe, awaiting ``during`` meanwhile; its exit code, the piped output and what the
    terminal got."""
    main, child = pty.openpty()
    try:
        streams = {"stdout": PIPE, "stderr": PIPE, stream: child}
        process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, **streams)
        os.close(child)
        child = -1
        if during is not None:
            await during
        piped, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        terminal = await asyncio.to_thread(_read_all, main)
    finally:
        os.close(main)
        if child != -1:
            os.close(child)
    assert process.returncode is not None
    return process.returncode, (piped or b"").decode(), terminal


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
            "held",
            "back",
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
        assert retried.stdout.strip() == "queued 1 failed job in queue 'q' again"
        record = await migrated.get_job(bad)
        assert record is not None and record.state is JobState.QUEUED

        cancelled = await asyncio.to_thread(cli, "cancel", str(bad))
        assert cancelled.stdout.strip() == f"job {bad} cancelled"
        again = await asyncio.to_thread(cli, "cancel", str(bad))
        assert again.returncode == 1 and "nothing to cancel" in again.stdout

        kept = await asyncio.to_thread(cli, "purge", "--older-than", "7d")
        assert kept.stdout.strip() == "purged 0 finished jobs"
        purged = await asyncio.to_thread(cli, "purge", "--older-than", "0s")
        assert purged.stdout.strip() == "purged 1 finished job"
        assert await migrated.get_job(bad) is None


class TestErrors:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["run", "nosuch.module:app", "--until-empty"], "cannot import module 'nosuch.module'"),
            (["run", "tests.postgres.cli_app:nothing", "--until-empty"], "has no attribute"),
            (["worker", "tests.postgres.cli_app:not_a_runner"], "neither a Runner nor a factory"),
            (["worker", "no-colon"], "must be module:attribute"),
            (
                ["run", "tests.postgres.cli_app:two_arguments", "--until-empty"],
                "must take the backend as its one argument, or no argument; it takes (backend, "
                "other)",
            ),
            (["stats", "--schema", "Bad-Name"], "schema name 'Bad-Name' is invalid"),
            (["stats"], "has no batchworks tables"),
            (["run", APP, "--until-empty"], "has no batchworks tables"),
            (["jobs", "list", "--queue", "q"], "has no batchworks tables"),
            (["purge", "--older-than", "soon"], "is not a duration"),
            (["purge", "--older-than", "1h30"], "is not a duration"),
            (["run", APP, "--until-empty", "--max-delay", "-1"], "is not a duration"),
            (["jobs", "list", "--limit", "-5"], "--limit must be a whole number from 1"),
            (["jobs", "list", "--limit", "0"], "--limit must be a whole number from 1"),
            (["jobs", "list", "--limit", "many"], "--limit must be a whole number from 1"),
            (["jobs", "list", "--limit", "10000000000000000000"], "--limit must be"),
            (["jobs", "show", "0"], "a job id must be a whole number from 1"),
            (["jobs", "show", "99999999999999999999"], "a job id must be a whole number"),
            (["cancel", "-3"], "a job id must be a whole number from 1"),
            (["retry", "1", "x"], "a job id must be a whole number from 1"),
            (["health", "--timeout", "later"], "is not a duration"),
            (["health", "--max-silence=-1s"], "is not a duration"),
            (["health", "--worker", "w", "--this-host"], "not allowed with argument"),
            (["worker", APP, "--log-level", "loud"], "--log-level 'loud' is not a level"),
            (["jobs"], "the following arguments are required"),
        ],
    )
    def test_user_mistakes_are_one_line_and_exit_2(
        self, cli: Cli, args: list[str], message: str
    ) -> None:
        result = cli(*args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("batchworks: error: ")

    def test_an_app_module_with_a_syntax_error_is_one_line(
        self, pg_dsn: str, tmp_path: Path
    ) -> None:
        (tmp_path / "broken_app.py").write_text("def make_runner(backend):\n    return (\n")
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        result = _batchworks(
            "--dsn", pg_dsn, "run", "broken_app:make_runner", "--until-empty", env=env
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("batchworks: error: cannot import module 'broken_app'")
        assert "broken_app.py, line 2" in result.stderr  # where to look
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr

    def test_an_unreachable_database_is_one_line(self) -> None:
        result = _batchworks("--dsn", "postgresql://x@127.0.0.1:1/x", "stats")
        assert result.returncode == 2
        assert result.stderr.startswith("batchworks: error: could not connect to PostgreSQL")
        assert len(result.stderr.strip().splitlines()) == 1

    @pytest.mark.parametrize("dsn", ["notadsn", "mysql://x@127.0.0.1/x", "postgresql://x@h:port/x"])
    def test_a_dsn_that_is_not_one_is_one_line_that_does_not_echo_it(self, dsn: str) -> None:
        for args in (["--dsn", dsn, "stats"], ["run", APP, "--until-empty", "--dsn", dsn]):
            result = _batchworks(*args)
            assert result.returncode == 2, result.stderr
            assert result.stderr.startswith("batchworks: error: --dsn is not a valid PostgreSQL")
            assert "Traceback" not in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert dsn not in result.stderr  # a DSN may hold a password

    def test_a_bad_dsn_of_the_apps_own_backend_is_one_line(self) -> None:
        result = _batchworks("run", "tests.postgres.cli_app:own_backend_runner", "--until-empty")
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("batchworks: error: the APP's backend is not a valid")
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def _batchworks(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchworks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


class TestOptionsAnywhere:
    async def test_dsn_and_schema_work_before_and_after_the_command(
        self, migrated: PostgresBackend, pg_dsn: str, pg_schema: str
    ) -> None:
        await migrated.enqueue("q", "a")
        # A DSN in the environment that does not answer: whatever is used must come from the
        # command line, wherever it stands, and a position left empty must not reset it.
        env = {**os.environ, "BATCHWORKS_DSN": "postgresql://x@127.0.0.1:1/x"}
        env.pop("BATCHWORKS_SCHEMA", None)
        for args in (
            ["--dsn", pg_dsn, "--schema", pg_schema, "stats"],
            ["stats", "--dsn", pg_dsn, "--schema", pg_schema],
            ["--dsn", pg_dsn, "stats", "--schema", pg_schema],
            ["--schema", pg_schema, "stats", "--dsn", pg_dsn],
            ["jobs", "--dsn", pg_dsn, "list", "--schema", pg_schema],
            ["jobs", "list", "--dsn", pg_dsn, "--schema", pg_schema, "--queue", "q"],
        ):
            result = await asyncio.to_thread(_batchworks, *args, env=env)
            assert result.returncode == 0, (args, result.stderr)
            assert "q" in result.stdout.split(), (args, result.stdout)

    async def test_the_value_after_the_command_wins(
        self, migrated: PostgresBackend, pg_dsn: str, pg_schema: str
    ) -> None:
        bad = "postgresql://x@127.0.0.1:1/x"
        result = await asyncio.to_thread(
            _batchworks, "--dsn", bad, "--schema", pg_schema, "stats", "--dsn", pg_dsn
        )
        assert result.returncode == 0, result.stderr
        result = await asyncio.to_thread(
            _batchworks, "--dsn", pg_dsn, "--schema", pg_schema, "stats", "--dsn", bad
        )
        assert result.returncode == 2 and "could not connect" in result.stderr


class TestUnknownQueues:
    async def test_a_queue_no_job_was_ever_in_is_named_with_the_known_ones(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        await migrated.enqueue("receipts", "a")
        await migrated.register_worker("mailer", ["emails"])
        for args in (["jobs", "list", "--queue", "recepts"], ["retry", "--queue", "recepts"]):
            result = await asyncio.to_thread(cli, *args)
            assert result.returncode == 2, (args, result.stdout)
            assert result.stderr.strip() == (
                "batchworks: error: no job is stored in queue 'recepts' and no live worker "
                "serves it (did you mean 'receipts'?); known queues: emails, receipts"
            )
        # A known queue with nothing to show or retry is not a mistake.
        for args in (["jobs", "list", "--queue", "emails"], ["retry", "--queue", "receipts"]):
            result = await asyncio.to_thread(cli, *args)
            assert result.returncode == 0, (args, result.stderr)
        listing = await asyncio.to_thread(cli, "jobs", "list", "--queue", "emails")
        assert listing.stdout.strip() == "no jobs"
        retried = await asyncio.to_thread(cli, "retry", "--queue", "receipts")
        assert retried.stdout.strip() == "queued 0 failed jobs in queue 'receipts' again"

    async def test_retry_by_id_says_which_jobs_were_not_failed(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        ok, bad = await migrated.enqueue_many("q", ["fine", "bad"])
        assert (await asyncio.to_thread(cli, "run", APP, "--until-empty")).returncode == 1
        result = await asyncio.to_thread(cli, "retry", str(bad), str(ok), "999999")
        assert result.returncode == 1, result.stderr
        assert result.stdout.splitlines() == [
            "queued 1 failed job again",
            f"not queued again: job {ok} is succeeded, no job 999999",
        ]
        record = await migrated.get_job(bad)
        assert record is not None and record.state is JobState.QUEUED


class TestPending:
    async def test_run_names_each_queue_left_with_work(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        await migrated.enqueue_many("q", ["a", "b"])
        await migrated.enqueue("q", "later", delay=3600)
        await migrated.enqueue("recepts", "typo")  # no handler of the app serves it
        await migrated.enqueue("recepts", "typo later", delay=600)
        await migrated.enqueue("emails", "theirs")  # another app's live worker serves it
        await migrated.register_worker("mailer", ["emails"])

        result = await asyncio.to_thread(cli, "run", APP, "--until-empty")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("succeeded 2, failed 0")
        assert lines[1:] == [
            "left in queue 'q': 1 queued for later, the next in 60.0m",
            "left in queue 'recepts': 1 queued now, 1 queued for later, in a queue no handler "
            "of this app serves",
        ]

        strict = await asyncio.to_thread(cli, "run", APP, "--until-empty", "--fail-on-pending")
        assert strict.returncode == 1, strict.stderr
        as_json = await asyncio.to_thread(
            cli, "run", APP, "--until-empty", "--fail-on-pending", "--json"
        )
        assert as_json.returncode == 1
        pending = json.loads(as_json.stdout)["pending"]
        assert set(pending) == {"q", "recepts"}
        assert pending["recepts"] == {
            "queued_now": 1,
            "queued_later": 1,
            "served": False,
            "next_due_seconds": None,
        }
        assert (pending["q"]["queued_now"], pending["q"]["queued_later"]) == (0, 1)
        assert 3500 < pending["q"]["next_due_seconds"] <= 3600

    async def test_fail_on_pending_exits_0_when_everything_ran(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        await migrated.enqueue_many("q", ["a", "b"])
        result = await asyncio.to_thread(cli, "run", APP, "--until-empty", "--fail-on-pending")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [result.stdout.splitlines()[0]]


class TestInterruptedRun:
    async def _interrupt(
        self,
        backend: PostgresBackend,
        dsn: str,
        app: str,
        *signals: signal.Signals,
        settled: tuple[int, ...] = (),
    ) -> tuple[int, list[str], str]:
        """Start a cron run of ``app`` with a 2-minute job, send ``signals`` once the job
        runs and the jobs ``settled`` have finished (each next signal once the run said it is
        stopping), and return its exit code, stdout lines and stderr."""
        job_id = await backend.enqueue("q", {"sleep": 120})
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "batchworks", "--dsn", dsn, "--schema", backend.schema],
            *["run", app, "--until-empty", "--log-level", "INFO"],
            cwd=ROOT,
            stdout=PIPE,
            stderr=PIPE,
        )
        assert process.stderr is not None

        async def running() -> bool:
            record = await backend.get_job(job_id)
            if record is None or record.state is not JobState.RUNNING:
                return False
            # A job claimed in the same batch is RUNNING before its handler starts: a signal
            # in that instant releases it unstarted, which is right, but not what a test of
            # "the finished job is counted" can assert.
            for other in settled:
                done = await backend.get_job(other)
                if done is None or done.state is not JobState.SUCCEEDED:
                    return False
            return True

        stderr = b""
        try:
            await eventually(running, within=30, what="the cron run to start the job")
            for index, sig in enumerate(signals):
                if index:
                    async with asyncio.timeout(20):
                        while b"again to stop now" not in (line := await process.stderr.readline()):
                            assert line, "the run exited before it said it was stopping"
                            stderr += line
                process.send_signal(sig)
            stdout, rest = await asyncio.wait_for(process.communicate(), timeout=30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        record = await backend.get_job(job_id)
        assert record is not None
        assert record.state is JobState.QUEUED
        assert record.attempts == 0, "the interrupted attempt was not given back"
        assert record.errors == (), "the job was recovered as lost instead of released"
        workers = [w.name for w in await backend.workers()]
        assert "cli-worker" not in workers, "the run left its worker row active"
        assert process.returncode is not None
        return process.returncode, stdout.decode().splitlines(), (stderr + rest).decode()

    async def test_ctrl_c_releases_running_jobs_reports_and_exits_130(
        self, migrated: PostgresBackend, pg_dsn: str
    ) -> None:
        done = await migrated.enqueue("q", "quick")
        code, lines, stderr = await self._interrupt(
            migrated, pg_dsn, APP, signal.SIGINT, settled=(done,)
        )
        assert code == 130, stderr
        assert lines[0].startswith("succeeded 1, failed 0, retried 0, snoozed 0, released 1")
        assert lines[1:] == ["left in queue 'q': 1 queued now"]
        assert "interrupted by SIGINT" in stderr
        assert "Traceback" not in stderr
        record = await migrated.get_job(done)
        assert record is not None and record.state is JobState.SUCCEEDED

    async def test_a_second_ctrl_c_stops_at_once(
        self, migrated: PostgresBackend, pg_dsn: str
    ) -> None:
        # shutdown_timeout is 60 s in this app: only the second signal can end it sooner than
        # the 30 s _interrupt waits.
        app = "tests.postgres.cli_app:make_patient_runner"
        code, lines, stderr = await self._interrupt(
            migrated, pg_dsn, app, signal.SIGINT, signal.SIGINT
        )
        assert code == 130, stderr
        assert "released 1" in lines[0]

    async def test_sigterm_stops_a_run_the_same_way_and_exits_143(
        self, migrated: PostgresBackend, pg_dsn: str
    ) -> None:
        code, lines, stderr = await self._interrupt(migrated, pg_dsn, APP, signal.SIGTERM)
        assert code == 128 + signal.SIGTERM, stderr
        assert "released 1" in lines[0]


class TestPurge:
    async def test_dry_run_counts_per_queue_and_state_and_deletes_nothing(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        ids = await migrated.enqueue_many("q", ["a", "b", "bad"])
        await migrated.enqueue("q", "waiting", delay=3600)
        assert (await asyncio.to_thread(cli, "run", APP, "--until-empty")).returncode == 1

        dry = await asyncio.to_thread(cli, "purge", "--older-than", "0s", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert [line.split() for line in dry.stdout.splitlines()[:3]] == [
            ["queue", "state", "jobs"],
            ["q", "failed", "1"],
            ["q", "succeeded", "2"],
        ]
        assert dry.stdout.splitlines()[3] == (
            "would purge 3 finished jobs older than 0.0s (dry run: nothing deleted)"
        )
        for job_id in ids:
            assert await migrated.get_job(job_id) is not None

        for spec in ("1h30m", "2d12h", "1w", "1week", "90s"):
            kept = await asyncio.to_thread(cli, "purge", "--older-than", spec, "--dry-run")
            assert kept.returncode == 0, (spec, kept.stderr)
            assert kept.stdout.startswith("would purge 0 finished jobs older than"), spec


class TestAttempts:
    async def test_jobs_list_shows_the_maximum_before_the_first_claim(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        own = await migrated.enqueue("q", "own", max_attempts=7, delay=3600)
        plain = await migrated.enqueue("q", "plain", delay=3600)
        orphan = await migrated.enqueue("nobody", "x")

        before = await asyncio.to_thread(cli, "jobs", "list")
        assert before.returncode == 0, before.stderr
        attempts = {row.split()[0]: row.split()[3] for row in before.stdout.splitlines()[1:4]}
        assert attempts == {str(own): "0/7", str(plain): "0/?", str(orphan): "0/?"}
        assert "? no max_attempts of its own and no worker registered" in before.stdout

        # A cron run of the app (its policy: 3 attempts) registers a worker for queue q.
        assert (await asyncio.to_thread(cli, "run", APP, "--until-empty")).returncode == 0
        after = await asyncio.to_thread(cli, "jobs", "list")
        attempts = {row.split()[0]: row.split()[3] for row in after.stdout.splitlines()[1:4]}
        assert attempts == {str(own): "0/7", str(plain): "0/3*", str(orphan): "0/?"}
        assert "* no max_attempts of its own: the retry policy of the last worker" in after.stdout

        as_json = json.loads((await asyncio.to_thread(cli, "jobs", "list", "--json")).stdout)
        by_id = {job["id"]: job for job in as_json}
        assert by_id[plain]["effective_max_attempts"] == 3
        assert by_id[plain]["max_attempts_from"] == "worker policy"
        assert (by_id[own]["effective_max_attempts"], by_id[own]["max_attempts_from"]) == (7, "job")
        assert by_id[orphan]["effective_max_attempts"] is None
        shown = await asyncio.to_thread(cli, "jobs", "show", str(plain))
        assert "attempts    0 of 3 (the retry policy of the last worker of its queue)" in (
            shown.stdout
        )


class TestHealth:
    async def test_healthy_database_and_schema(self, cli: Cli, migrated: PostgresBackend) -> None:
        result = await asyncio.to_thread(cli, "health")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("healthy: the database answers and schema")

    async def test_unmigrated_schema_is_unhealthy(self, cli: Cli) -> None:
        result = await asyncio.to_thread(cli, "health")
        assert result.returncode == 1
        assert "lacks migrations 0001_initial" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    def test_unreachable_database_is_unhealthy(self) -> None:
        result = _batchworks("--dsn", "postgresql://x@127.0.0.1:1/x", "health")
        assert result.returncode == 1
        assert result.stderr.startswith("batchworks: unhealthy: could not connect")

    def test_a_database_that_never_answers_fails_within_the_timeout(self) -> None:
        # A socket that accepts connections and says nothing: a hung server or a black hole.
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = silent.getsockname()[1]
            result = _batchworks(
                "--dsn", f"postgresql://x@127.0.0.1:{port}/x", "health", "--timeout", "1s"
            )
        assert result.returncode == 1
        assert result.stderr.strip() == (
            "batchworks: unhealthy: no answer from the database within 1.0s"
        )

    async def test_worker_heartbeat_fresh_stale_and_missing(
        self, cli: Cli, migrated: PostgresBackend, pg_dsn: str, pg_schema: str
    ) -> None:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "batchworks", "--dsn", pg_dsn, "--schema", pg_schema],
            *["worker", APP],
            cwd=ROOT,
            stderr=PIPE,
        )
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(20):
                while b"ready" not in (line := await proc.stderr.readline()):
                    assert line, "the worker exited before it was ready"
            for which in (["--worker", "cli-worker"], ["--this-host"]):
                live = await asyncio.to_thread(cli, "health", *which)
                assert live.returncode == 0, live.stderr
                assert live.stdout.startswith("healthy: worker 'cli-worker' last heartbeat")
            proc.send_signal(signal.SIGSTOP)  # alive, but its heartbeats stop
            try:

                async def stale() -> bool:
                    result = await asyncio.to_thread(
                        cli, "health", "--worker", "cli-worker", "--max-silence", "1s"
                    )
                    return result.returncode == 1 and "last heartbeat" in result.stderr

                await eventually(stale, within=30, what="the stopped worker to count as stale")
            finally:
                proc.send_signal(signal.SIGCONT)
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await proc.wait()
        gone = await asyncio.to_thread(cli, "health", "--worker", "cli-worker")
        assert gone.returncode == 1
        assert gone.stderr.strip() == "batchworks: unhealthy: no live worker named 'cli-worker'"
        nobody = await asyncio.to_thread(cli, "health", "--this-host")
        assert nobody.returncode == 1
        assert nobody.stderr.startswith("batchworks: unhealthy: no live worker on host")

    async def test_this_host_counts_its_freshest_worker(
        self, cli: Cli, migrated: PostgresBackend, pg_dsn: str, pg_schema: str
    ) -> None:
        # A container restarted under a new worker name leaves its old row active and silent
        # until someone prunes it: the probe must not fail the new incarnation for it.
        await migrated.register_worker("old-incarnation", ["q"])
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(
                f"UPDATE \"{pg_schema}\".workers SET heartbeat_at = now() - interval '1 hour'"
            )
        finally:
            await conn.close()
        stale = await asyncio.to_thread(cli, "health", "--this-host")
        assert stale.returncode == 1
        assert "worker 'old-incarnation' last heartbeat 1.0h ago (more than 30.0s)" in stale.stderr
        await migrated.register_worker("new-incarnation", ["q"])
        fresh = await asyncio.to_thread(cli, "health", "--this-host")
        assert fresh.returncode == 0, fresh.stderr
        assert fresh.stdout.startswith("healthy: worker 'new-incarnation'")

    async def test_a_schema_one_migration_behind(
        self, cli: Cli, migrated: PostgresBackend, pg_dsn: str, pg_schema: str
    ) -> None:
        # The schema of the previous release: a readiness probe says to migrate, and a worker
        # of this version refuses to start (one line, exit 2) rather than fail with jobs in
        # hand; the job waits, untouched, until the migrate.
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f'ALTER TABLE "{pg_schema}".workers DROP COLUMN max_attempts')
            await conn.execute(f'DELETE FROM "{pg_schema}".migrations WHERE version = 4')
        finally:
            await conn.close()
        behind = await asyncio.to_thread(cli, "health")
        assert behind.returncode == 1
        assert behind.stderr.strip() == (
            f"batchworks: unhealthy: schema {pg_schema!r} lacks migrations "
            "0004_worker_max_attempts; run 'batchworks migrate'"
        )
        job_id = await migrated.enqueue("q", "a")
        worker = await asyncio.to_thread(cli, "run", APP, "--until-empty")
        assert worker.returncode == 2, worker.stderr
        assert len(worker.stderr.strip().splitlines()) == 1, worker.stderr
        assert "lacks migrations 0004_worker_max_attempts" in worker.stderr
        assert "run 'batchworks migrate'" in worker.stderr
        record = await migrated.get_job(job_id)
        assert record is not None and record.state == "queued" and record.attempts == 0
        assert (await asyncio.to_thread(cli, "migrate")).returncode == 0
        worker = await asyncio.to_thread(cli, "run", APP, "--until-empty")
        assert worker.returncode == 0, worker.stderr
        assert worker.stdout.startswith("succeeded 1, failed 0")
        assert (await asyncio.to_thread(cli, "health")).returncode == 0


class TestSchedules:
    async def test_list_run_pause_resume_and_remove(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        from datetime import UTC, datetime

        from batchworks import Schedule

        empty = await asyncio.to_thread(cli, "schedules")
        assert (empty.returncode, empty.stdout.strip()) == (0, "no schedules")
        nightly = Schedule("nightly", "30 2 * * *", "q", {"report": True}, timezone="Europe/Berlin")
        tick = datetime(2030, 1, 2, 1, 30, tzinfo=UTC)
        await migrated.put_schedule("nightly", nightly.definition(), next_tick=tick)

        listing = await asyncio.to_thread(cli, "schedules")
        assert listing.returncode == 0, listing.stderr
        header, row = listing.stdout.strip().splitlines()
        assert header.split() == [
            "name", "cron", "timezone", "queue", "missed", "next", "tick", "last", "tick", "skipped"
        ]  # fmt: skip
        assert row.split() == [
            "nightly", "30", "2", "*", "*", "*", "Europe/Berlin", "q", "skip",
            "2030-01-02T01:30:00+00:00", "-", "0",
        ]  # fmt: skip

        run = await asyncio.to_thread(cli, "schedules", "run", "nightly")
        assert run.returncode == 0, run.stderr
        job_id = int(run.stdout.split()[2])
        record = await migrated.get_job(job_id)
        assert record is not None
        assert (record.schedule, record.scheduled_for, record.payload) == (
            "nightly",
            None,
            {"report": True},
        )
        shown = await asyncio.to_thread(cli, "jobs", "show", str(job_id))
        assert "schedule    nightly, a manual run" in shown.stdout, shown.stdout

        paused = await asyncio.to_thread(cli, "schedules", "pause", "nightly")
        assert paused.returncode == 0, paused.stderr
        [state] = json.loads((await asyncio.to_thread(cli, "schedules", "--json")).stdout)
        assert state["paused"] is True
        resumed = await asyncio.to_thread(cli, "schedules", "resume", "nightly")
        assert resumed.returncode == 0 and "resumed: next tick" in resumed.stdout
        [state] = json.loads((await asyncio.to_thread(cli, "schedules", "--json")).stdout)
        assert state["paused"] is False
        # From the first 02:30 Berlin after now, which is before the tick stored above.
        next_tick = datetime.fromisoformat(state["next_tick"])
        assert next_tick < tick and next_tick.astimezone(nightly.zone).strftime("%M") == "30"

        removed = await asyncio.to_thread(cli, "schedules", "remove", "nightly")
        assert removed.returncode == 0 and "removed" in removed.stdout
        assert (await migrated.schedules()).schedules == ()
        assert await migrated.get_job(job_id) is not None  # its jobs stay

    async def test_an_unknown_name_is_one_line_naming_the_known_ones(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        from datetime import UTC, datetime

        from batchworks import Schedule

        await migrated.put_schedule(
            "nightly",
            Schedule("nightly", "0 3 * * *", "q").definition(),
            next_tick=datetime.now(UTC),
        )
        for verb in ("run", "pause", "resume", "remove"):
            result = await asyncio.to_thread(cli, "schedules", verb, "nighty")
            assert result.returncode == 2, (verb, result.stdout)
            assert result.stderr.strip() == (
                "batchworks: error: no schedule 'nighty' (did you mean 'nightly'?); known "
                "schedules: nightly"
            )
