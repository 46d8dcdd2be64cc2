"""The systems a drain benchmark compares, seen from the benchmark's side: each one prepares a
fresh queue of N no-op jobs with its own API (untimed), names the worker processes that drain
it (see ``_workers.py``), and checks afterwards that every job really ended.

- ``floor``: a minimal job table in schema ``bench_<tag>_floor_p<pid>`` of the benchmark's
  database;
- ``batchworks``: a migrated schema ``bench_<tag>_bw_p<pid>``;
- ``pgqueuer`` and ``procrastinate``: their own schema installs, in a database of their own
  (``bench_<tag>_peers_p<pid>``) that the benchmark creates and drops.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
from _common import (
    PEERS,
    QUEUE,
    Drain,
    installed,
    run_workers,
    scratch_database,
    scratch_schema,
    summarize,
    worker_command,
)

CHUNK = 10_000  # jobs per enqueue call while preparing a queue


class System:
    name = ""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema

    #: the tables that ANALYZE refreshes statistics of (``drain_once(analyze=True)``)
    tables: tuple[str, ...] = ()

    async def prepare(self, jobs: int) -> None:
        raise NotImplementedError

    async def analyze(self) -> None:
        """Refresh the planner's statistics of this system's tables, as autovacuum would in
        time (it is off on some servers, and runs a minute or more after a bulk enqueue)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            for table in self.tables:
                await conn.execute(
                    f"ANALYZE {table.replace('__S__', f'{chr(34)}{self.schema}{chr(34)}')}"
                )
        finally:
            await conn.close()

    async def verify(self, drain: Drain) -> str | None:
        """None when every job ended as it should, else what went wrong."""
        raise NotImplementedError

    def commands(
        self, processes: int, *, batch_size: int, concurrency: int, use_uvloop: bool
    ) -> list[list[str]]:
        options = {
            "schema": self.schema,
            "batch_size": batch_size,
            "concurrency": concurrency,
            "uvloop": use_uvloop,
        }
        return [worker_command(self.name, self.dsn, **options) for _ in range(processes)]

    @staticmethod
    def payloads(start: int, stop: int) -> list[dict[str, int]]:
        return [{"n": i} for i in range(start, stop)]


class Floor(System):
    """A minimal job table and the raw asyncpg loop of ``_workers.floor``."""

    name = "floor"
    # Not analyzed: statistics taken while every row is queued make the planner walk the primary
    # key instead of the partial index, so each claim rereads the rows already done (measured:
    # 40k jobs/s fell to 14k). The floor stands for the best PostgreSQL allows, so it keeps the
    # partial-index plan it has without statistics.
    tables = ()

    async def prepare(self, jobs: int) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
            await conn.execute(f'CREATE SCHEMA "{self.schema}"')
            await conn.execute(FLOOR_TABLE.replace("__S__", f'"{self.schema}"'))
            await conn.execute(
                f'INSERT INTO "{self.schema}".floor_jobs (queue, payload) '
                "SELECT $1, jsonb_build_object('n', g) FROM generate_series(1, $2) AS g",
                QUEUE,
                jobs,
            )
        finally:
            await conn.close()

    async def verify(self, drain: Drain) -> str | None:
        conn = await asyncpg.connect(self.dsn)
        try:
            done = await conn.fetchval(
                f"SELECT count(*) FROM \"{self.schema}\".floor_jobs WHERE state = 'succeeded'"
            )
        finally:
            await conn.close()
        return None if done == drain.jobs == drain.done else f"{done} of {drain.jobs} succeeded"


FLOOR_TABLE = """
CREATE TABLE __S__.floor_jobs (
    id       bigserial PRIMARY KEY,
    queue    text  NOT NULL,
    payload  jsonb NOT NULL,
    state    text  NOT NULL DEFAULT 'queued',
    attempts integer NOT NULL DEFAULT 0
);
CREATE INDEX floor_jobs_queued ON __S__.floor_jobs (queue, id) WHERE state = 'queued';
"""


class Batchworks(System):
    name = "batchworks"
    tables = ("__S__.jobs", "__S__.workers")

    async def prepare(self, jobs: int) -> None:
        from batchworks import PostgresBackend

        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()
        async with PostgresBackend(self.dsn, schema=self.schema) as backend:
            await backend.migrate()
            for start in range(0, jobs, CHUNK):
                await backend.enqueue_many(QUEUE, self.payloads(start, min(start + CHUNK, jobs)))

    async def verify(self, drain: Drain) -> str | None:
        from batchworks import PostgresBackend

        async with PostgresBackend(self.dsn, schema=self.schema, min_size=1) as backend:
            counts = (await backend.stats()).get(QUEUE, {})
        done = counts.get("succeeded", 0)
        if done == drain.jobs == drain.done:
            return None
        return f"{done} of {drain.jobs} succeeded (workers ran {drain.done}): {counts}"


class PgQueuer(System):
    """PgQueuer's tables in the peers' database; K consumers per process (``consumers``)."""

    name = "pgqueuer"
    tables = ("pgqueuer", "pgqueuer_log")
    consumers = 1

    def __init__(self, dsn: str, schema: str) -> None:
        super().__init__(dsn, schema)
        self._installed = False

    async def _queries(self, conn: Any) -> Any:
        from pgqueuer.db import AsyncpgDriver
        from pgqueuer.queries import Queries

        queries = Queries(AsyncpgDriver(conn))
        if not self._installed:
            await queries.install()
            self._installed = True
        return queries

    async def prepare(self, jobs: int) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            queries = await self._queries(conn)
            await queries.clear_queue()
            await queries.clear_queue_log()
            await queries.clear_statistics_log()
            for start in range(0, jobs, CHUNK):
                count = min(start + CHUNK, jobs) - start
                await queries.enqueue(
                    [QUEUE] * count,
                    [json.dumps(p).encode() for p in self.payloads(start, start + count)],
                    [0] * count,
                )
        finally:
            await conn.close()

    def commands(
        self, processes: int, *, batch_size: int, concurrency: int, use_uvloop: bool
    ) -> list[list[str]]:
        options = {"batch_size": batch_size, "consumers": self.consumers, "uvloop": use_uvloop}
        return [worker_command(self.name, self.dsn, **options) for _ in range(processes)]

    async def verify(self, drain: Drain) -> str | None:
        conn = await asyncpg.connect(self.dsn)
        try:
            queries = await self._queries(conn)
            left = sum(row.count for row in await queries.queue_size())
        finally:
            await conn.close()
        if left == 0 and drain.done == drain.jobs:
            return None
        return f"handler ran {drain.done} of {drain.jobs}; {left} left in the queue"


class Procrastinate(System):
    """Procrastinate slows down as its backlog grows (its fetch query does more per job), so
    its drain is bounded by ``max_seconds``: the rate is then over the jobs it ran by then."""

    name = "procrastinate"
    tables = ("procrastinate_jobs", "procrastinate_workers")
    max_seconds = 120.0

    def __init__(self, dsn: str, schema: str) -> None:
        super().__init__(dsn, schema)
        self._installed = False

    async def prepare(self, jobs: int) -> None:
        import procrastinate as pc

        app = pc.App(connector=pc.PsycopgConnector(conninfo=self.dsn, min_size=1, max_size=2))

        @app.task(queue=QUEUE, name="noop")
        async def noop(n: int) -> None:
            """Never run here: deferring needs the task declared."""

        async with app.open_async():
            if not self._installed:
                await app.schema_manager.apply_schema_async()
                self._installed = True
            conn = await asyncpg.connect(self.dsn)
            try:
                await conn.execute(
                    "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers "
                    "RESTART IDENTITY CASCADE"
                )
            finally:
                await conn.close()
            for start in range(0, jobs, CHUNK):
                await noop.batch_defer_async(*self.payloads(start, min(start + CHUNK, jobs)))

    def commands(
        self, processes: int, *, batch_size: int, concurrency: int, use_uvloop: bool
    ) -> list[list[str]]:
        options = {
            "concurrency": concurrency,
            "max_seconds": self.max_seconds,
            "uvloop": use_uvloop,
        }
        return [worker_command(self.name, self.dsn, **options) for _ in range(processes)]

    async def verify(self, drain: Drain) -> str | None:
        conn = await asyncpg.connect(self.dsn)
        try:
            done = await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            )
        finally:
            await conn.close()
        if any(worker.extra.get("stopped") for worker in drain.workers):
            # Stopped at max_seconds: what it ran must be what it wrote, and more than nothing.
            if 0 < drain.done == done:
                drain.jobs = done  # the rate is over the jobs it ran
                return None
        elif done == drain.jobs == drain.done:
            return None
        return f"{done} of {drain.jobs} succeeded (workers ran {drain.done})"


KINDS: dict[str, type[System]] = {
    "floor": Floor,
    "batchworks": Batchworks,
    "pgqueuer": PgQueuer,
    "procrastinate": Procrastinate,
}


@contextlib.asynccontextmanager
async def open_systems(
    dsn: str, tag: str, names: Sequence[str]
) -> AsyncIterator[dict[str, System]]:
    """The systems named, each in scratch space of its own, dropped at the end. A peer whose
    package is not installed is left out, with a line saying so."""
    wanted = []
    for name in names:
        if name in PEERS and not installed(name):
            print(f"{name} not installed: skipped (pip install -e '.[bench]')")
            continue
        wanted.append(name)
    async with contextlib.AsyncExitStack() as stack:
        systems: dict[str, System] = {}
        peers_dsn = None
        for name in wanted:
            if name in PEERS:
                if peers_dsn is None:
                    peers_dsn = await stack.enter_async_context(
                        scratch_database(dsn, f"bench_{tag}_peers")
                    )
                systems[name] = KINDS[name](peers_dsn, "public")
            else:
                suffix = "bw" if name == "batchworks" else name
                schema = await stack.enter_async_context(
                    scratch_schema(dsn, f"bench_{tag}_{suffix}")
                )
                systems[name] = KINDS[name](dsn, schema)
        yield systems


class NotAllRun(Exception):
    """A drain ended without every job having run: the benchmark must exit non-zero."""


async def drain_once(
    system: System,
    jobs: int,
    *,
    processes: int = 1,
    batch_size: int = 100,
    concurrency: int = 100,
    use_uvloop: bool = False,
    within: float = 900.0,
    sample_rss: float | None = None,
    analyze: bool = False,
) -> Drain:
    """Prepare ``jobs`` jobs, drain them with ``processes`` worker processes, check them.

    :param analyze: refresh the planner's statistics after the enqueue, before the drain.
    """
    await system.prepare(jobs)
    if analyze:
        await system.analyze()
    commands = system.commands(
        processes, batch_size=batch_size, concurrency=concurrency, use_uvloop=use_uvloop
    )
    results, samples = await run_workers(commands, within=within, sample_rss=sample_rss)
    drain = summarize(system.name, jobs, results)
    drain.rss_samples = samples
    problem = await system.verify(drain)
    if problem is not None:
        raise NotAllRun(f"{system.name}: {problem}")
    return drain
