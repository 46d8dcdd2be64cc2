"""Real worker processes, real signals, a real PostgreSQL: no job is lost or left running."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import asyncpg
import pytest

from batchworks import JobState, PostgresBackend
from tests.conftest import eventually

pytestmark = [pytest.mark.postgres, pytest.mark.chaos]

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """A worker subprocess (tests/postgres/worker.py) that has printed its ready line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def exit_code(self, within: float) -> int:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(None, self.proc.wait), within)
        except TimeoutError:
            pytest.fail(f"worker {self.pid} did not exit within {within}s")


class StartWorker(Protocol):
    async def __call__(self, name: str, mode: str, **options: float) -> Worker: ...


@pytest.fixture
async def start_worker(pg_dsn: str, pg_schema: str) -> AsyncIterator[StartWorker]:
    """Start worker processes on the test's schema; kill whatever is left at teardown."""
    procs: list[subprocess.Popen[str]] = []

    # Its connections carry an application_name, so a test can single them out.
    sep = "&" if "?" in pg_dsn else "?"
    dsn = f"{pg_dsn}{sep}application_name=batchworks-test-worker"

    async def start(name: str, mode: str, **options: float) -> Worker:
        args = [f"{key}={value}" for key, value in options.items()]
        proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; reads go through an executor
            [sys.executable, "-m", "tests.postgres.worker", dsn, pg_schema, name, mode, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        loop = asyncio.get_running_loop()
        assert proc.stdout is not None
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 20)
        assert line.startswith("ready"), f"worker {name} did not get ready: {line!r}"
        return Worker(proc)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture
async def effects(pg_backend: PostgresBackend, pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to read the effects table the worker handlers write to."""
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(
        f'CREATE TABLE "{pg_backend.schema}".effects '
        "(job_id bigint, attempt int, pid int, item int, at timestamptz DEFAULT clock_timestamp())"
    )
    yield conn
    await conn.close()


async def states(backend: PostgresBackend, ids: list[int]) -> dict[JobState, int]:
    counts: dict[JobState, int] = {}
    for job_id in ids:
        record = await backend.get_job(job_id)
        assert record is not None
        counts[record.state] = counts.get(record.state, 0) + 1
    return counts


def all_succeeded(backend: PostgresBackend, ids: list[int]) -> Callable[[], object]:
    async def check() -> bool:
        return (await states(backend, ids)).get(JobState.SUCCEEDED, 0) == len(ids)

    return check


async def executions(conn: asyncpg.Connection, schema: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(f'SELECT job_id, attempt, pid FROM "{schema}".effects'))


class TestSigkill:
    async def test_restart_under_the_same_name_recovers_jobs_at_once(
        self, pg_backend: PostgresBackend, start_worker: StartWorker, effects: asyncpg.Connection
    ) -> None:
        ids = await pg_backend.enqueue_many("q", list(range(5)))
        # prune_after is long: only the restart can bring the jobs back quickly.
        first = await start_worker("w1", "hang", prune_after=60, heartbeat_interval=1)
        await eventually(lambda: _count(effects, pg_backend.schema, 5), what="all 5 jobs started")
        first.signal(signal.SIGKILL)
        await first.exit_code(within=15)
        assert (await states(pg_backend, ids)) == {JobState.RUNNING: 5}

        await start_worker("w1", "sleep:1", prune_after=60, heartbeat_interval=1)
        # A hang net, far below prune_after (60 s, also the lease): only the restart can have
        # brought them back (the WorkerLost entries below say how).
        await eventually(all_succeeded(pg_backend, ids), within=30, what="jobs done after restart")
        for job_id in ids:
            record = await pg_backend.get_job(job_id)
            assert record is not None
            assert record.attempts == 2
            assert [error["type"] for error in record.errors] == ["WorkerLost"]

    async def test_another_worker_recovers_a_dead_workers_jobs_after_prune_after(
        self, pg_backend: PostgresBackend, start_worker: StartWorker, effects: asyncpg.Connection
    ) -> None:
        ids = await pg_backend.enqueue_many("q", list(range(3)))
        doomed = await start_worker("doomed", "hang", prune_after=1.5, heartbeat_interval=0.2)
        await eventually(lambda: _count(effects, pg_backend.schema, 3), what="3 jobs started")
        doomed.signal(signal.SIGKILL)
        await start_worker("rescuer", "sleep:1", prune_after=1.5, heartbeat_interval=0.2)
        # A hang net: nothing but the rescuer's pruning can bring them back; how soon after
        # prune_after it does is a figure of the chaos suite (tests/chaos/README.md).
        await eventually(all_succeeded(pg_backend, ids), within=30, what="jobs recovered")
        rows = await executions(effects, pg_backend.schema)
        assert len({row["pid"] for row in rows}) == 2

    async def test_a_job_that_kills_its_worker_ends_failed_after_max_attempts(
        self, pg_backend: PostgresBackend, start_worker: StartWorker, effects: asyncpg.Connection
    ) -> None:
        job_id = await pg_backend.enqueue("q", None, max_attempts=2)
        for round_ in range(2):
            worker = await start_worker("w", "hang", prune_after=60)
            await eventually(
                lambda n=round_ + 1: _count(effects, pg_backend.schema, n),
                what=f"attempt {round_ + 1} started",
            )
            worker.signal(signal.SIGKILL)  # the job "kills" its worker
            await worker.exit_code(within=15)
        # The restart recovers the second attempt's job: no attempts left, so it fails.
        await start_worker("w", "sleep:1", prune_after=60)
        record = await pg_backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.attempts) == (JobState.FAILED, 2)
        assert [error["type"] for error in record.errors] == ["WorkerLost", "WorkerLost"]


class TestCheckpoints:
    async def test_killed_export_resumes_from_its_last_checkpoint(
        self, pg_backend: PostgresBackend, start_worker: StartWorker, effects: asyncpg.Connection
    ) -> None:
        schema = pg_backend.schema
        job_id = await pg_backend.enqueue("q", "export")
        first = await start_worker("w", "export:2000:100", prune_after=60)

        async def some_progress() -> bool:
            record = await pg_backend.get_job(job_id)
            return record is not None and (record.checkpoint or {}).get("offset", 0) >= 500

        await eventually(some_progress, what="the export to checkpoint past item 500")
        first.signal(signal.SIGKILL)
        await first.exit_code(within=15)
        killed_at = await pg_backend.get_job(job_id)
        assert killed_at is not None and killed_at.checkpoint is not None
        resumed_from = killed_at.checkpoint["offset"]

        await start_worker("w", "export:2000:100", prune_after=60)
        await eventually(all_succeeded(pg_backend, [job_id]), what="the export to finish")

        done = await pg_backend.get_job(job_id)
        assert done is not None and (done.result, done.attempts) == (2000, 2)
        rows = await effects.fetch(
            f'SELECT item, count(*) AS n FROM "{schema}".effects GROUP BY item ORDER BY item'
        )
        assert [row["item"] for row in rows] == list(range(2000))  # nothing skipped
        twice = [row["item"] for row in rows if row["n"] > 1]
        # Only the chunk in flight when the worker died runs twice: at most one chunk.
        assert len(twice) <= 100
        assert all(item >= resumed_from for item in twice)
        second = await effects.fetchval(
            f'SELECT min(item) FROM "{schema}".effects WHERE attempt = 2'
        )
        assert second == resumed_from


class TestSigterm:
    async def test_sigterm_exits_0_and_puts_jobs_back_without_using_an_attempt(
        self, pg_backend: PostgresBackend, start_worker: StartWorker, effects: asyncpg.Connection
    ) -> None:
        ids = await pg_backend.enqueue_many("q", list(range(4)))
        worker = await start_worker("w", "hang", shutdown_timeout=1.0)
        await eventually(lambda: _count(effects, pg_backend.schema, 4), what="4 jobs started")
        worker.signal(signal.SIGTERM)
        # The handler hangs forever: only shutdown_timeout (1 s) ends it; the bound is a hang net.
        assert await worker.exit_code(within=1.0 + 15.0) == 0
        for job_id in ids:
            record = await pg_backend.get_job(job_id)
            assert record is not None
            assert (record.state, record.attempts, record.errors) == (JobState.QUEUED, 0, ())


class TestFencing:
    async def test_a_blocked_worker_cannot_overwrite_the_new_owners_outcome(
        self, pg_backend: PostgresBackend, start_worker: StartWorker, effects: asyncpg.Connection
    ) -> None:
        job_id = await pg_backend.enqueue("q", "x")
        # Its handler blocks the event loop for 4 s: no heartbeat, so it is presumed dead.
        blocked = await start_worker("blocked", "block:4", prune_after=1.0, heartbeat_interval=0.2)
        await eventually(lambda: _count(effects, pg_backend.schema, 1), what="first attempt")
        await start_worker("healthy", "sleep:1", prune_after=1.0, heartbeat_interval=0.2)
        await eventually(all_succeeded(pg_backend, [job_id]), within=10, what="takeover")
        record = await pg_backend.get_job(job_id)
        assert record is not None
        owner = record.result
        assert owner != blocked.pid
        # The blocked worker wakes, settles, and is fenced out: the result stays the owner's.
        blocked.signal(signal.SIGTERM)
        assert await blocked.exit_code(within=10) == 0
        record = await pg_backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.result) == (JobState.SUCCEEDED, owner)


class TestConnectionLoss:
    async def test_terminated_connections_lose_no_job(
        self,
        pg_backend: PostgresBackend,
        start_worker: StartWorker,
        effects: asyncpg.Connection,
        pg_dsn: str,
    ) -> None:
        ids = await pg_backend.enqueue_many("q", list(range(300)))
        worker = await start_worker("w", "sleep:50", concurrency=10, batch_size=10)
        for round_ in range(5):
            await eventually(
                lambda n=(round_ + 1) * 20: _done_at_least(pg_backend, n),
                within=10,
                what="progress between terminations",
            )
            killed = await effects.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'batchworks-test-worker'"
            )
            assert killed >= 1
        await eventually(all_succeeded(pg_backend, ids), within=30, what="all 300 jobs done")
        assert worker.proc.poll() is None, "the worker must survive its connections dying"


async def _count(conn: asyncpg.Connection, schema: str, n: int) -> bool:
    return bool(await conn.fetchval(f'SELECT count(*) >= $1 FROM "{schema}".effects', n))


async def _done_at_least(backend: PostgresBackend, n: int) -> bool:
    return (await backend.stats())["q"]["succeeded"] >= n
