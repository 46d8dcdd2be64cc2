"""The least-privilege worker role of docs/postgres-roles.md: a Runner works under it, and
it cannot change the schema."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest

from batchworks import BackendError, Job, JobState, PostgresBackend, Runner, Schedule
from tests.conftest import eventually

pytestmark = pytest.mark.postgres

DOC = Path(__file__).resolve().parents[2] / "docs" / "postgres-roles.md"


def role_sql(role: str, password: str, schema: str) -> str:
    """The first SQL block of the doc, for this role and schema."""
    match = re.search(r"```sql\n(.*?)```", DOC.read_text(), re.S)
    assert match is not None, f"{DOC} has no sql block"
    sql = match[1].replace("batchworks_worker", role).replace("'change-me'", f"'{password}'")
    return sql.replace("SCHEMA batchworks", f'SCHEMA "{schema}"')


def as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{role}:{quote(password)}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
async def worker_dsn(pg_backend: PostgresBackend, pg_dsn: str) -> AsyncIterator[str]:
    """A DSN for a fresh least-privilege role on the test's migrated schema; dropped after."""
    role = f"bw_worker_{uuid.uuid4().hex[:12]}"
    password = secrets.token_hex(8)
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(role_sql(role, password, pg_backend.schema))
        yield as_role(pg_dsn, role, password)
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{pg_backend.schema}" CASCADE')
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


async def test_runner_under_the_worker_role_runs_jobs(
    pg_backend: PostgresBackend, worker_dsn: str
) -> None:
    async def handler(job: Job) -> int:
        if job.payload == 3 and job.attempt == 1:
            raise RuntimeError("once")
        return int(job.payload) * 2

    async with PostgresBackend(worker_dsn, schema=pg_backend.schema) as backend:
        ids = await backend.enqueue_many("q", list(range(10)))
        runner = Runner(
            backend,
            {"q": handler},
            heartbeat_interval=0.05,  # heartbeats, pruning and recovery run under the role too
            prune_after=1.0,
            retry=None,
        )
        report = await runner.run_until_empty(max_delay=5)
        assert (report.succeeded, report.retried) == (10, 1)
        for job_id, value in zip(ids, range(10), strict=True):
            record = await backend.get_job(job_id)
            assert record is not None
            assert (record.state, record.result) == (JobState.SUCCEEDED, value * 2)
        assert await backend.purge(older_than=0) == 10


async def test_schedules_run_under_the_worker_role(
    pg_backend: PostgresBackend, worker_dsn: str
) -> None:
    async def handler(job: Job) -> None: ...

    async with PostgresBackend(worker_dsn, schema=pg_backend.schema) as backend:
        schedule = Schedule("tick", "* * * * * *", "q", missed="all")
        async with Runner(backend, {"q": handler}, schedules=[schedule]):

            async def ticked() -> bool:
                return any(r.scheduled_for for r in await backend.list_jobs())

            await eventually(ticked, within=10, what="a tick under the worker role")
        assert await backend.run_schedule("tick") is not None
        assert await backend.pause_schedule("tick", True, next_tick=datetime.now(UTC))
        assert await backend.remove_schedule("tick")


async def test_flow_control_works_under_the_worker_role(
    pg_backend: PostgresBackend, worker_dsn: str
) -> None:
    async def handler(job: Job) -> None: ...

    async with PostgresBackend(worker_dsn, schema=pg_backend.schema) as backend:
        await backend.configure_queue("q", concurrency=2, key_concurrency=1, rate=(50, 1.0))
        await backend.pause_queue("p")
        await backend.enqueue_many("q", list(range(6)), concurrency_keys=["a", "b"] * 3)
        await backend.enqueue("p", 1)
        report = await Runner(backend, {"q": handler, "p": handler}).run_until_empty()
        assert report.succeeded == 6
        states = {state.name: state for state in await backend.queues()}
        assert states["p"].held_back == {"paused": 1}
        await backend.resume_queue("p")


@pytest.mark.parametrize(
    "ddl",
    [
        'CREATE TABLE "{s}".intruder (id int)',
        'DROP TABLE "{s}".jobs',
        'ALTER TABLE "{s}".jobs ADD COLUMN intruder int',
        'TRUNCATE "{s}".jobs',
        'CREATE INDEX intruder ON "{s}".jobs (queue)',
        'DROP INDEX "{s}".jobs_claim',
        "CREATE SCHEMA intruder",
    ],
)
async def test_worker_role_is_refused_ddl(
    pg_backend: PostgresBackend, worker_dsn: str, ddl: str
) -> None:
    conn = await asyncpg.connect(worker_dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(ddl.format(s=pg_backend.schema))
    finally:
        await conn.close()
    assert await pg_backend.stats() == {}  # the tables are intact


async def test_migrate_under_the_worker_role_fails_clearly(
    pg_backend: PostgresBackend, worker_dsn: str
) -> None:
    async with PostgresBackend(worker_dsn, schema=pg_backend.schema) as backend:
        with pytest.raises(BackendError, match="permission denied"):
            await backend.migrate()
