"""Fixtures shared by every test directory.

PostgreSQL is found in this order: ``BATCHWORKS_TEST_DSN``; a server on 127.0.0.1:5432 (user
postgres, database test); a throwaway cluster started from PostgreSQL's installed binaries.
With none, PostgreSQL tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest

from batchworks import MemoryBackend, PostgresBackend
from batchworks.backends.base import Backend
from tests.pgserver import find_or_start_server

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A DSN of a PostgreSQL server for the whole session (see the module docstring)."""
    with find_or_start_server() as (dsn, why_not):
        if dsn is None:
            message = f"no PostgreSQL server for the tests: {why_not}"
            if IN_CI:
                pytest.fail(message + " (CI=true: PostgreSQL tests must not be skipped)")
            pytest.skip(message)
        yield dsn


@pytest.fixture
async def pg_schema(pg_dsn: str) -> AsyncIterator[str]:
    """A fresh schema name for one test, dropped at teardown."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg_backend(pg_dsn: str, pg_schema: str) -> AsyncIterator[PostgresBackend]:
    """A migrated PostgresBackend on a schema of its own."""
    async with PostgresBackend(pg_dsn, schema=pg_schema) as backend:
        await backend.migrate()
        yield backend


@pytest.fixture
async def memory_backend() -> AsyncIterator[MemoryBackend]:
    async with MemoryBackend() as memory:
        await memory.migrate()
        yield memory


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> Backend:
    """A fresh, migrated backend: contract tests take this fixture to run on every backend."""
    name = "pg_backend" if request.param == "postgres" else "memory_backend"
    backend: Backend = request.getfixturevalue(name)
    return backend


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool],
    *,
    within: float = 15.0,
    what: str,
) -> None:
    """Await ``condition`` becoming true, checking every few milliseconds, for at most
    ``within`` seconds; fail with ``what`` in the message otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)
