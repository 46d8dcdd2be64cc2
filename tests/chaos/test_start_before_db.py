"""Scenario: the worker starts before its database (docker compose, a Kubernetes pod).

A real ``python -m batchworks worker`` is started against a port where nothing listens yet;
a cluster of the test's own then initializes there the way the official image does (on its
Unix socket only: schema migrated, a job enqueued), and only then opens TCP. The worker must
have been retrying all along, become ready and run the job, without a restart. And when
nothing comes up within ``--open-timeout``, ``worker`` and ``run`` exit 2 with one line.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from batchworks import JobState, PostgresBackend
from tests.conftest import IN_CI
from tests.pgcluster import Cluster, clusters, free_port
from tests.support.harness import ROOT, poll, record_figures

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(120)]

APP = "tests.postgres.cli_app:make_runner"
SCHEMA = "early"


@pytest.fixture
def root() -> Iterator[Path]:
    try:
        with clusters() as path:
            yield path
    except RuntimeError as exc:
        if IN_CI:
            raise
        pytest.skip(f"no throwaway cluster: {exc}")


class Cli:
    """A ``batchworks`` process whose stderr lines are gathered as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    async def exit_code(self, within: float) -> int:
        try:
            async with asyncio.timeout(within):
                code = await self.proc.wait()
                await self.reader
        except TimeoutError:
            pytest.fail(f"batchworks did not exit within {within}s:\n" + "\n".join(self.lines))
        return code


class StartCli(Protocol):
    async def __call__(self, dsn: str, *args: str) -> Cli: ...


@pytest.fixture
async def start_cli() -> AsyncIterator[StartCli]:
    started: list[Cli] = []

    async def start(dsn: str, *args: str) -> Cli:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "batchworks", "--dsn", dsn, "--schema", SCHEMA, *args),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        cli = Cli(proc)
        started.append(cli)
        return cli

    yield start
    for cli in started:
        if cli.proc.returncode is None:
            cli.proc.kill()
            await cli.proc.wait()


async def test_a_worker_started_before_postgres_waits_for_it_and_runs_jobs(
    root: Path, start_cli: StartCli
) -> None:
    cluster = Cluster(root, "db")
    await asyncio.to_thread(cluster.initdb)
    worker = await start_cli(cluster.dsn, "worker", APP, "--open-timeout", "60")
    await poll(
        lambda: worker.has("is not reachable yet (try 2"),
        within=30,
        what="the worker to log its second connection try",
    )
    assert worker.proc.returncode is None, "the worker exited while the database was down"

    # The database initializes off TCP, then opens it: from then on the worker may connect.
    await asyncio.to_thread(cluster.start, tcp=False)
    async with PostgresBackend(cluster.socket_dsn, schema=SCHEMA) as backend:
        await backend.migrate()
        job_id = await backend.enqueue("q", "early bird")
    await asyncio.to_thread(cluster.stop)
    await asyncio.to_thread(cluster.start)
    loop = asyncio.get_running_loop()
    up_at = loop.time()

    async with PostgresBackend(cluster.dsn, schema=SCHEMA) as backend:

        async def done() -> bool:
            record = await backend.get_job(job_id)
            return record is not None and record.state is JobState.SUCCEEDED

        await poll(done, within=60, what="the job to succeed on the worker that started early")
        resumed = loop.time() - up_at
        record = await backend.get_job(job_id)
    assert record is not None and record.result == "early bird" and record.attempts == 1
    assert worker.has("worker 'cli-worker' ready")
    tries = sum("is not reachable yet" in line for line in worker.lines)

    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.exit_code(within=20) == 0, "\n".join(worker.lines)
    record_figures(
        "start before the database",
        lost=0,
        duplicated=0,
        stuck=0,
        tries_logged=tries,
        job_done_after_tcp_up=f"{resumed:.2f} s",
    )


@pytest.mark.parametrize("command", [["worker", APP], ["run", APP, "--until-empty"]])
async def test_no_database_within_open_timeout_exits_2_with_one_line(
    start_cli: StartCli, command: list[str]
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    cli = await start_cli(dsn, *command, "--open-timeout", "2", "--log-level", "WARNING")
    code = await cli.exit_code(within=30)
    assert code == 2, "\n".join(cli.lines)
    errors = [line for line in cli.lines if line.startswith("batchworks: error:")]
    assert len(errors) == 1, cli.lines
    assert errors[0].startswith(f"batchworks: error: could not connect to PostgreSQL at {dsn}: ")
    assert "gave up after" in errors[0] and "--open-timeout" in errors[0]
    assert cli.lines[-1] == errors[0], "the error must be the last line"
    assert cli.has("is not reachable yet (try 1"), "each try must be logged"
    assert not cli.has("Traceback")


async def test_sigterm_while_waiting_for_the_database_exits_at_once(start_cli: StartCli) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    cli = await start_cli(dsn, "worker", APP, "--open-timeout", "60")
    await poll(lambda: cli.has("is not reachable yet (try 1"), within=30, what="the first try")
    cli.proc.send_signal(signal.SIGTERM)
    # Nothing is registered yet, so nothing needs cleaning up: the default action (exit) is
    # right, and the wait must not hold a deploy for the rest of --open-timeout.
    code = await cli.exit_code(within=10)
    assert code in (-signal.SIGTERM, 128 + signal.SIGTERM), "\n".join(cli.lines)
    assert not cli.has("Traceback")
