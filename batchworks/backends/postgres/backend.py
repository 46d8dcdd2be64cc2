"""The PostgreSQL backend, on asyncpg: durable jobs shared by many processes on many hosts.

Every worker-side operation is one statement for a whole batch (see :mod:`.queries`). All
lease and prune arithmetic runs on the database's clock. Idle runners are woken by
LISTEN/NOTIFY on a dedicated connection that reconnects when it drops; polling is the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Self, cast

import asyncpg
import tenacity

from batchworks import _json
from batchworks._checks import (
    check_queue,
    duration,
    positive_int,
    seconds,
)
from batchworks.backends._base import BackendBase, payload_label
from batchworks.backends._flow import FLOW_RECHECK, lookahead, queue_state
from batchworks.backends._waiters import BatchWaiters, JobWaiters
from batchworks.backends.base import (
    ClaimedJob,
    EnqueueOptions,
    Heartbeat,
    Limits,
    QueueState,
    Schedules,
    ScheduleState,
    TickClaim,
    WorkerRecord,
    WorkerToken,
)
from batchworks.backends.postgres import queries
from batchworks.backends.postgres._batches import PostgresBatchCalls, member_args
from batchworks.backends.postgres._connect import (
    OPEN_TIMEOUT,
    check_connect_options,
    connection_options,
    redact,
    retry_connect,
    transient,
)
from batchworks.backends.postgres._listener import Listener
from batchworks.backends.postgres._reads import OperatorReads, record
from batchworks.errors import (
    BackendError,
    ConfigurationError,
    LeaseLost,
    LifecycleError,
    SchemaNotMigrated,
)
from batchworks.job import JobRecord, JobState
from batchworks.outcome import Outcome, OutcomeKind

__all__ = ["PostgresBackend"]

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 60.0  # seconds: asyncpg's default time limit on a statement of our own pool
CLOSE_TIMEOUT = 2.0  # seconds closing the pool may wait for its connections, then they are cut

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,49}")
WAIT_RECHECK = 30.0  # seconds between reads of a waited job while notifications are heard
WAIT_RECHECK_UNHEARD = 1.0  # seconds between reads while the LISTEN connection is down
_SUCCEEDED = OutcomeKind.SUCCEEDED
UNREGISTER_TRIES = 3  # a clean stop marks its worker row stopped, trying this many times
_MIGRATION_FILE = re.compile(r"(\d{4})_(\w+)\.sql")
_NOT_MIGRATED = (
    asyncpg.UndefinedTableError,
    asyncpg.InvalidSchemaNameError,
    asyncpg.UndefinedFunctionError,
    asyncpg.UndefinedColumnError,
)

# What a statement cache gives through a pooler that moves a session between servers.
_PREPARED = (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError)


@dataclass(frozen=True, slots=True, kw_only=True)
class Queries:
    """The statements of :mod:`.queries` with the schema and channels filled in, one field a
    statement: the field ``claim_one`` holds ``queries.CLAIM_ONE``. A statement added to
    :mod:`.queries` needs its line here (tests/postgres/test_queries.py fails until it has one,
    and mypy rejects ``self._q.<name>`` for a name that has none)."""

    channel: str
    finished_channel: str

    migrations_table: str
    applied_migrations: str
    record_migration: str
    enqueue_plain: str
    enqueue: str
    live_dedupe: str
    get_job: str
    overview: str
    overview_live: str
    overview_size: str
    overview_finished: str
    overview_finished_sample: str
    workers: str
    list_jobs: str
    list_job_summaries: str
    count_jobs: str
    cancel_jobs: str
    queue_position: str
    throughput: str
    purge_workers: str
    stats: str
    retry_failed: str
    cancel: str
    mark_waited: str
    purge: str
    purge_batch: str
    purge_plan: str
    purgeable: str
    policy_max_attempts: str
    register_worker: str
    unregister_worker: str
    claim_one: str
    claim: str
    settle_succeeded: str
    settle: str
    settle_succeeded_unbatched: str
    settle_unbatched: str
    heartbeat: str
    recover: str
    save_checkpoint: str
    next_due: str
    configure_queue: str
    pause_queue: str
    queues: str
    schedules: str
    put_schedule: str
    claim_ticks: str
    pause_schedule: str
    remove_schedule: str
    run_schedule: str
    enqueue_batch: str
    add_to_batch: str
    batch_queue: str
    close_batch: str
    cancel_batch: str
    get_batch: str
    list_batches: str
    batch_page: str
    batch_failures: str
    open_batches: str

    @classmethod
    def fill(cls, schema: str) -> Queries:
        """The statements for ``schema``, a name :func:`_check_schema` accepted."""
        quoted = f'"{schema}"'
        channel = f"batchworks_{schema}"
        # wait_job()'s wake-ups, apart from the runners' so that they wake no idle runner.
        # Short: a channel name is an identifier of at most 63 bytes, and schema has up to 50.
        finished_channel = f"bw_done_{schema}"
        texts: dict[str, str] = {}
        for name in STATEMENTS:
            texts[name] = (
                getattr(queries, name.upper())
                .replace("__SCHEMA__", quoted)
                .replace("__CHANNEL__", f"'{channel}'")
                .replace("__FINISHED__", f"'{finished_channel}'")
            )
        return cls(
            channel=channel,
            finished_channel=finished_channel,
            **texts,
        )


#: The names of the statement fields of Queries: all but the two channels.
STATEMENTS = tuple(f.name for f in fields(Queries) if f.name not in {"channel", "finished_channel"})


def _check_schema(schema: object) -> str:
    if not isinstance(schema, str) or not _SCHEMA.fullmatch(schema):
        raise ConfigurationError(
            f"schema name {schema!r} is invalid: use 1-50 lowercase letters, digits or '_', "
            "starting with a letter or '_'"
        )
    return schema


def _lock_key(schema: str, purpose: str) -> int:
    # A stable signed 64-bit key per schema and purpose, for pg advisory locks.
    return zlib.crc32(f"batchworks:{schema}:{purpose}".encode()) - 2**31


class PostgresBackend(PostgresBatchCalls, BackendBase[str], OperatorReads):
    """Jobs in PostgreSQL.

    :param dsn: a libpq connection string or URL; the backend opens its own pool.
    :param schema: the schema holding batchworks' tables (validated, quoted).
    :param pool: an asyncpg pool of the caller's, used instead of ``dsn`` (not closed here).
    :param min_size: connections the pool keeps open.
    :param max_size: connections the pool opens at most.
    :param max_payload_bytes: the largest encoded payload, result or checkpoint accepted.
    :param connect_options: keyword arguments of ``asyncpg.create_pool``/``asyncpg.connect``
        for the connections the backend opens (``statement_cache_size``, ``server_settings``,
        ``command_timeout``, ``ssl``, ``setup``, ...); behind PgBouncer in transaction pooling
        mode pass ``{"statement_cache_size": 0}``. Those the backend sets itself (``dsn``,
        ``min_size``, ``max_size``, ``reset``) are refused.
    :param listen_dsn: where the LISTEN connection for wake-ups goes, when ``dsn`` (or the
        pool) goes through a pooler that cannot carry LISTEN: a direct connection to
        PostgreSQL. Default: ``dsn``, or a connection of ``pool``.
    :param open_timeout: seconds :meth:`open` keeps retrying, with backoff, while PostgreSQL
        does not accept connections yet (a worker started beside its database); 0 tries once.

    Open it with ``async with backend:`` (or :meth:`open`), create its tables once with
    :meth:`migrate`.

    The pool it opens gives each statement at most ``COMMAND_TIMEOUT`` seconds (asyncpg's
    ``command_timeout``; ``connect_options`` may set another). That also bounds the cancel
    request asyncpg sends for a statement cut short: without it, a cancelled call on a
    black-holed network holds its connection until TCP gives up, minutes later.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = "batchworks",
        pool: asyncpg.Pool | None = None,
        min_size: int = 2,
        max_size: int = 10,
        max_payload_bytes: int = _json.MAX_PAYLOAD_BYTES,
        connect_options: Mapping[str, Any] | None = None,
        listen_dsn: str | None = None,
        open_timeout: float = OPEN_TIMEOUT,
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ConfigurationError("pass PostgresBackend a dsn or a pool=, exactly one")
        self._options = check_connect_options(connect_options)
        if pool is not None and self._options:
            raise ConfigurationError(
                "connect_options apply to the pool PostgresBackend opens from a dsn; with "
                "pool=, set them on your own pool"
            )
        if listen_dsn is not None and (not isinstance(listen_dsn, str) or not listen_dsn):
            raise ConfigurationError(f"listen_dsn must be a non-empty str, got {listen_dsn!r}")
        self._listen_dsn = listen_dsn
        self._open_timeout = duration(open_timeout, "open_timeout", zero=True)
        self._dsn = dsn
        self._schema = _check_schema(schema)
        self._q = Queries.fill(self._schema)
        self._own_pool = pool is None
        self._pool: asyncpg.Pool | None = pool
        self._min_size, self._max_size = min_size, max_size
        self._max_bytes = max_payload_bytes
        self._listener = Listener(
            self._q.channel, self._listen_connect, self._listen_release, self._notify
        )
        self._job_waiters = JobWaiters()
        self._batch_waiters = BatchWaiters()
        # Held jobs this backend claimed that are batch members: a flush of none of them
        # takes the settles without the batch bookkeeping (see SETTLE_UNBATCHED).
        self._members: set[int] = set()
        self._listener.subscribe(self._q.finished_channel, self._on_finished)
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._pool else "not opened")
        return f"<PostgresBackend schema={self._schema!r} {state}>"

    @property
    def schema(self) -> str:
        return self._schema

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool (when given a dsn); ``async with backend`` calls this."""
        if self._closed:
            raise LifecycleError("PostgresBackend was closed; create a new one")
        if self._pool is None:
            assert self._dsn is not None
            dsn = self._dsn
            options = {"command_timeout": COMMAND_TIMEOUT, **self._options}
            options["init"] = _with_types_known(options.get("init"))
            self._pool = await retry_connect(
                lambda: asyncpg.create_pool(
                    dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    reset=_keep_session,
                    **options,
                ),
                open_timeout=self._open_timeout,
                where=redact(dsn),
            )

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def aclose(self) -> None:
        """Stop listening and close the pool (if the backend opened it).

        A graceful close waits for the server to see each connection go; over a network that
        stopped answering it would wait for TCP to give up. So it waits ``CLOSE_TIMEOUT``
        seconds at most, then cuts the connections (the server drops their sessions as for a
        client that went away).
        """
        self._closed = True
        pool = self._pool if self._own_pool else None
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._listener.aclose()
                if pool is not None:
                    await pool.close()
        except TimeoutError:
            logger.warning(
                "PostgreSQL did not answer the close within %.1fs; cutting its connections",
                CLOSE_TIMEOUT,
                extra={"action": "close_timeout"},
            )
            self._listener.terminate()
            if pool is not None:
                pool.terminate()
        self._pool = None if self._own_pool else self._pool

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise LifecycleError(
                "PostgresBackend is not open: use 'async with backend:' or 'await backend.open()'"
            )
        return self._pool

    @contextlib.asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        """Turn driver errors into batchworks errors that say what to do."""
        try:
            yield
        except _NOT_MIGRATED as exc:
            raise SchemaNotMigrated(
                f"schema {self._schema!r} has no batchworks tables, or not those of this "
                f"version ({exc}); run "
                "'await backend.migrate()' or 'batchworks migrate' first"
            ) from exc
        except _PREPARED as exc:
            raise BackendError(
                f"PostgreSQL: {type(exc).__name__}: {exc.message}: a pooler between batchworks "
                "and PostgreSQL (PgBouncer in transaction pooling mode) does not keep prepared "
                "statements; pass PostgresBackend(connect_options={'statement_cache_size': 0})"
            ) from exc
        except (
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            asyncpg.InternalClientError,
            OSError,
        ) as exc:
            raise BackendError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    async def _fetch(self, query: str, *args: Any, connection: Any = None) -> list[asyncpg.Record]:
        async with self._errors():
            if connection is not None:
                return cast(list[asyncpg.Record], await connection.fetch(query, *args))
            return cast(list[asyncpg.Record], await self._require_pool().fetch(query, *args))

    async def _fetchrow(self, query: str, *args: Any) -> asyncpg.Record:
        rows = await self._fetch(query, *args)
        return rows[0]

    # -- schema ---------------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Create or upgrade the schema; idempotent, and safe to run from many processes at
        once (an advisory lock serializes them)."""
        pool = self._require_pool()
        files = _migration_files()
        async with self._errors(), pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", _lock_key(self._schema, "migrate")
            )
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
            await conn.execute(self._q.migrations_table)
            applied = {row[0] for row in await conn.fetch(self._q.applied_migrations)}
            for version, name, sql in files:
                if version in applied:
                    continue
                filled = sql.replace("__SCHEMA__", f'"{self._schema}"').replace(
                    "__CHANNEL__", self._q.channel
                )
                await conn.execute(filled)
                await conn.execute(self._q.record_migration, version, name)
                logger.info(
                    "applied migration %04d_%s to schema %r",
                    version,
                    name,
                    self._schema,
                    extra={"action": "migrated", "version": version},
                )
                applied.add(version)

    # -- enqueue (the rest is BackendBase's) -----------------------------------------------------
    # ``connection=`` enqueues in the caller's transaction: the job (and its wake-up) exists
    # only if that transaction commits.

    def _in_transaction(self, connection: Any) -> bool:
        return connection is not None and bool(connection.is_in_transaction())

    def _encode_payloads(self, queue: str, payloads: Sequence[Any], *, numbered: bool) -> str:
        # One JSON array for the whole batch: the statement unnests it.
        return _json.dumps_array(
            payloads,
            what=lambda index: payload_label(queue, index if numbered else None),
            limit=self._max_bytes,
        )

    async def _insert(
        self,
        options: EnqueueOptions,
        payloads: str,
        dedupe_keys: list[str | None],
        concurrency_keys: list[str | None],
        connection: Any,
        trace_context: dict[str, str] | None,
    ) -> list[int]:
        """Insert the batch in one statement."""
        args = member_args(options, payloads, trace_context)
        grouped = any(key is not None for key in concurrency_keys)
        if not grouped and all(key is None for key in dedupe_keys):
            rows = await self._fetch(self._q.enqueue_plain, *args, connection=connection)
            return sorted(row[0] for row in rows if row[0] is not None)  # None: NOTIFY's row
        groups = concurrency_keys if grouped else None
        return await self._insert_deduped((*args, groups), dedupe_keys, connection)

    async def _insert_deduped(
        self, args: tuple[Any, ...], keys: list[str | None], connection: Any
    ) -> list[int]:
        """ENQUEUE with the keys: ids in payload order, a live job's id for a taken key."""
        rows = await self._fetch(self._q.enqueue, *args, keys, connection=connection)
        fresh = sorted(row["id"] for row in rows if row["inserted"] and row["dedupe_key"] is None)
        by_key = {row["dedupe_key"]: row["id"] for row in rows if row["dedupe_key"] is not None}
        missing = [key for key in keys if key is not None and key not in by_key]
        if missing:
            # A concurrent enqueue committed the key after this statement's snapshot was taken.
            queue = args[0]  # the statements' $1
            more = await self._fetch(self._q.live_dedupe, queue, missing, connection=connection)
            by_key.update({row["dedupe_key"]: row["id"] for row in more})
        plain = iter(fresh)
        ids = []
        for key in keys:
            if key is None:
                ids.append(next(plain))
            elif key in by_key:
                ids.append(by_key[key])
            else:
                raise BackendError(f"dedupe_key {key!r}: the job holding it finished meanwhile")
        return ids

    # -- inspection and operator calls --------------------------------------------------------

    async def get_job(self, job_id: int) -> JobRecord | None:
        """The job as stored, or None."""
        rows = await self._fetch(self._q.get_job, job_id)
        return record(rows[0]) if rows else None

    async def wait_job(self, job_id: int, timeout: float | None = None) -> JobRecord:
        """Return the job once it is succeeded, failed or cancelled; see
        :meth:`Backend.wait_job`.

        The job is marked (``waited``) so that the statement ending it sends a NOTIFY for it
        alone, on the backend's LISTEN connection; jobs nobody waits on cost no notification.
        While that connection is down the job is read again every
        :data:`WAIT_RECHECK_UNHEARD` seconds, and every :data:`WAIT_RECHECK` seconds anyway.
        """
        self._listener.start()
        return await self._job_waiters.wait(
            job_id, timeout, fetch=self._mark_and_get, recheck=self._wait_recheck
        )

    async def _mark_and_get(self, job_id: int) -> JobRecord | None:
        await self._fetch(self._q.mark_waited, job_id)  # first: see MARK_WAITED
        return await self.get_job(job_id)

    def _wait_recheck(self) -> float:
        return WAIT_RECHECK if self._listener.listening else WAIT_RECHECK_UNHEARD

    def _on_finished(self, payload: str | None) -> None:
        if payload is None:  # (re)connected: what ended meanwhile was not heard
            self._job_waiters.wake_all()
            self._batch_waiters.wake_all()
        elif self._batch_finished(payload):
            return
        elif self._job_waiters:
            with contextlib.suppress(ValueError):
                self._job_waiters.wake(int(payload))

    async def workers(self) -> list[WorkerRecord]:
        """The live worker incarnations, by name."""
        return [
            WorkerRecord(
                name=row["name"],
                host=row["host"],
                pid=row["pid"],
                queues=tuple(row["queues"]),
                started_at=row["started_at"],
                heartbeat_at=row["heartbeat_at"],
                silent_for=row["silent_for"],
            )
            for row in await self._fetch(self._q.workers)
        ]

    async def stats(self) -> dict[str, dict[str, int]]:
        """``{queue: {state: count}}``, every state present."""
        counts: dict[str, dict[str, int]] = {}
        for row in await self._fetch(self._q.stats):
            per_queue = counts.setdefault(row["queue"], {state.value: 0 for state in JobState})
            per_queue[row["state"]] = row["n"]
        return counts

    async def retry_failed(
        self,
        *,
        queue: str | None = None,
        ids: Sequence[int] | None = None,
        batch_id: int | None = None,
    ) -> int:
        """Queue failed jobs again, now, with their attempts reset; returns how many."""
        if queue is not None:
            check_queue(queue)
        listed = None if ids is None else list(ids)
        row = await self._fetchrow(self._q.retry_failed, queue, listed, batch_id)
        return int(row["n"])

    async def cancel(self, job_id: int) -> bool:
        """Cancel a queued job now; flag a running one for its worker's next heartbeat."""
        return bool(await self._fetch(self._q.cancel, job_id))

    async def purge(self, older_than: float | timedelta) -> int:
        """Delete jobs that reached a final state more than ``older_than`` ago."""
        age = seconds(older_than, name="older_than")
        row = await self._fetchrow(self._q.purge, age)
        await self._fetch(self._q.purge_workers, age)
        return int(row[0])

    async def purge_batch(self, older_than: float | timedelta, *, limit: int) -> int | None:
        """Delete up to ``limit`` of the jobs :meth:`purge` would delete, the longest finished
        first; None (deleting nothing) while another caller does so (one at a time)."""
        age = seconds(older_than, name="older_than")
        limit = positive_int(limit, "limit")
        key = _lock_key(self._schema, "purge")
        # PURGE_PLAN holds for this transaction only: the ordered scan, whatever the statistics.
        async with self._errors(), self._require_pool().acquire() as conn, conn.transaction():
            await conn.fetch(self._q.purge_plan)
            row = await conn.fetchrow(self._q.purge_batch, age, limit, key)
        return int(row["n"]) if row["got"] else None

    async def purgeable(self, older_than: float | timedelta) -> dict[str, dict[str, int]]:
        """What :meth:`purge` would delete now, ``{queue: {state: count}}``."""
        age = seconds(older_than, name="older_than")
        counts: dict[str, dict[str, int]] = {}
        for row in await self._fetch(self._q.purgeable, age):
            counts.setdefault(row["queue"], {})[row["state"]] = row["n"]
        return counts

    async def pending_migrations(self) -> list[str]:
        """The migrations :meth:`migrate` would apply, as ``0004_name``."""
        try:
            rows = await self._fetch(self._q.applied_migrations)
        except SchemaNotMigrated:
            rows = []
        applied = {row[0] for row in rows}
        return [
            f"{version:04d}_{name}"
            for version, name, _ in _migration_files()
            if version not in applied
        ]

    async def _check_migrated(self) -> None:
        """Refuse to start a worker on a schema older than its code: it would fail later, at a
        claim or a settle, with jobs in hand. Migrations only add, so workers of the previous
        version keep running on a migrated schema: migrate first, then roll the workers."""
        missing = await self.pending_migrations()
        if len(missing) == len(_migration_files()):
            raise SchemaNotMigrated(
                f"schema {self._schema!r} has no batchworks tables; run 'batchworks migrate' "
                "(or 'await backend.migrate()') first"
            )
        if missing:
            raise SchemaNotMigrated(
                f"schema {self._schema!r} lacks migrations {', '.join(missing)}, which this "
                "version of batchworks needs; run 'batchworks migrate' (or "
                "'await backend.migrate()') before starting its workers"
            )

    async def policy_max_attempts(self, queues: Sequence[str]) -> dict[str, int]:
        """The ``max_attempts`` the latest worker of each queue (a live one first) recorded."""
        rows = await self._fetch(self._q.policy_max_attempts, list(queues))
        return {row["queue"]: row["max_attempts"] for row in rows}

    # -- worker side ----------------------------------------------------------------------------

    async def register_worker(
        self, name: str, queues: Sequence[str], *, max_attempts: int | None = None
    ) -> WorkerToken:
        """A new incarnation of ``name``; earlier live ones are replaced, their jobs recovered."""
        token = uuid.uuid4()
        args = (token, name, socket.gethostname(), os.getpid(), list(queues))
        await self._check_migrated()
        row = await self._fetchrow(self._q.register_worker, *args, max_attempts)
        if row["recovered"]:
            logger.warning(
                "worker %r restarted: recovered %d jobs of its earlier incarnation",
                name,
                row["recovered"],
                extra={"action": "worker_restarted", "worker": name},
            )
        self._listener.start()
        return token

    async def unregister_worker(self, worker: WorkerToken) -> None:
        """Mark the incarnation stopped; jobs it still holds (none, normally) are recovered.

        A connection lost on the way is tried again a few times (a fresh one from the pool):
        a row left active after a clean stop would count as a live worker until pruned."""
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(UNREGISTER_TRIES),
            wait=tenacity.wait_random(0.05, 0.5),
            retry=tenacity.retry_if_exception(_connection_lost),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._fetch(self._q.unregister_worker, worker)

    async def claim(
        self,
        worker: WorkerToken,
        queues: Sequence[str],
        limit: int,
        *,
        lease: float,
        max_attempts: int,
        caps: Mapping[str, int] | None = None,
        ended: Sequence[Outcome] = (),
    ) -> list[ClaimedJob]:
        """Take up to ``limit`` due jobs for ``worker`` in one statement."""
        one = len(queues) == 1
        if one:
            names: str | list[str] = queues[0]
            room: int | list[int | None] | None = None if caps is None else caps.get(queues[0])
        else:
            names = list(queues)
            room = [None if caps is None else caps.get(queue) for queue in queues]
        ids = [o.job_id for o in ended if o.claimed_at is not None]
        claims = [o.claimed_at for o in ended if o.claimed_at is not None]
        args = (worker, names, limit, lease, max_attempts, room, lookahead(limit), ids, claims)
        rows = await self._fetch(self._q.claim_one if one else self._q.claim, *args)
        claimed = [_claimed(row) for row in rows]  # in claim order
        self._members.update(job.id for job in claimed if job.batch_id is not None)
        return claimed

    async def settle(self, worker: WorkerToken, outcomes: Sequence[Outcome]) -> list[int]:
        """Write outcomes in one statement, fenced; returns the ids no longer held."""
        if not outcomes:
            return []
        members = self._members
        batched = any(o.job_id in members for o in outcomes)
        settled = await self._settle(worker, outcomes, batched=batched)
        if not batched and len(settled) < len(outcomes):
            # Left by the statement for jobs of no batch: fenced out, or a member this backend
            # did not claim. The statement that keeps batches takes them (or fences them out).
            rest = [o for o in outcomes if o.job_id not in settled]
            settled |= await self._settle(worker, rest, batched=True)
        members.difference_update(o.job_id for o in outcomes)
        return [o.job_id for o in outcomes if o.job_id not in settled]

    async def _settle(
        self, worker: WorkerToken, outcomes: Sequence[Outcome], *, batched: bool
    ) -> set[int]:
        ids = [o.job_id for o in outcomes]
        attempts = [o.attempt for o in outcomes]  # the fences beside the token
        claims = [o.claimed_at for o in outcomes]
        if all(
            o.kind is _SUCCEEDED and o.result_json is None and o.error is None for o in outcomes
        ):
            query = self._q.settle_succeeded if batched else self._q.settle_succeeded_unbatched
            rows = await self._fetch(query, worker, ids, attempts, claims)
        else:
            kinds = [o.kind for o in outcomes]
            rows = await self._fetch(
                self._q.settle if batched else self._q.settle_unbatched,
                worker,
                ids,
                [kind.state.value for kind in kinds],
                [not kind.uses_attempt for kind in kinds],
                [o.delay if o.kind.requeues else None for o in outcomes],
                [kind.finishes for kind in kinds],
                [o.result_json for o in outcomes],
                [None if o.error is None else json.dumps(o.error) for o in outcomes],
                attempts,
                claims,
            )
        return {row["id"] for row in rows if row["id"] is not None}

    async def heartbeat(
        self, worker: WorkerToken, job_ids: Sequence[int], *, lease: float
    ) -> Heartbeat:
        """Extend the leases of the held jobs; report lost and cancel-requested ones."""
        row = await self._fetchrow(self._q.heartbeat, worker, list(job_ids), lease)
        held = set(row["held"])
        lost = tuple(job_id for job_id in job_ids if job_id not in held)
        self._members.difference_update(lost)  # never settled by this worker
        return Heartbeat(
            alive=row["alive"],
            lost=lost,
            cancel=tuple(row["cancel"]),
            replaced=row["replaced"],
        )

    async def recover(self, *, prune_after: float) -> int:
        """Prune silent workers, recover their jobs and expired leases (one pruner at a time)."""
        row = await self._fetchrow(self._q.recover, prune_after, _lock_key(self._schema, "prune"))
        if row["pruned"] or row["recovered"]:
            logger.warning(
                "pruned %d silent workers and recovered %d jobs",
                row["pruned"],
                row["recovered"],
                extra={"action": "pruned", "workers": row["pruned"], "jobs": row["recovered"]},
            )
        return int(row["recovered"])

    async def save_checkpoint(
        self, worker: WorkerToken, job_id: int, value: Any, *, lease: float
    ) -> Any:
        """Store a checkpoint in one statement, fenced by ``worker``; extends the job's lease."""
        text = self._encode(value, f"checkpoint of job {job_id}")
        if not await self._fetch(self._q.save_checkpoint, worker, job_id, text, lease):
            raise LeaseLost(f"job {job_id} is no longer held by this worker; nothing was saved")
        return json.loads(text)

    async def _listen_connect(self) -> asyncpg.Connection:
        dsn = self._listen_dsn or self._dsn
        if dsn is not None:
            return await asyncpg.connect(dsn, **connection_options(self._options))
        return await self._require_pool().acquire()

    async def _listen_release(self, conn: asyncpg.Connection) -> None:
        if self._listen_dsn is not None or self._dsn is not None:
            await conn.close(timeout=2)
        elif self._pool is not None:
            await self._pool.release(conn)

    async def _notify(self, payload: str) -> None:
        """A NOTIFY on the wake-up channel the way enqueues send it: through the pool."""
        await self._require_pool().execute("SELECT pg_notify($1, $2)", self._q.channel, payload)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        """Seconds until the earliest queued job of ``queues`` is due, or None (a paused
        queue's jobs are not due)."""
        due, _ = await self._next_due(queues)
        return due

    async def _next_due(self, queues: Sequence[str]) -> tuple[float | None, float | None]:
        """(due, free): :meth:`next_due`, and the same over the queues without flow control."""
        row = await self._fetchrow(self._q.next_due, list(queues))
        return tuple(None if value is None else max(0.0, float(value)) for value in row)  # type: ignore[return-value]

    async def wait_for_work(self, queues: Sequence[str], max_wait: float) -> None:
        """Return on a NOTIFY for any queue, when a delayed job falls due, or after
        ``max_wait`` seconds. Due jobs that only controlled queues hold (a limit may keep them
        back: another worker's settle frees a slot without a NOTIFY) are looked at again
        after ``FLOW_RECHECK`` seconds at most."""
        self._listener.start()
        wake = self._listener.event  # taken first: a NOTIFY during the query still counts
        due, free = await self._next_due(queues)
        if free is not None:
            max_wait = min(max_wait, free)
        if due is not None:
            max_wait = min(max_wait, max(due, FLOW_RECHECK))
        if max_wait <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_wait):
                await wake.wait()

    # -- flow control ---------------------------------------------------------------------------

    async def _configure(self, queue: str, limits: Limits) -> None:
        n, window = limits.rate if limits.rate is not None else (None, None)
        await self._fetch(
            self._q.configure_queue, queue, limits.concurrency, limits.key_concurrency, n, window
        )

    async def _pause(self, queue: str, paused: bool) -> None:
        await self._fetch(self._q.pause_queue, queue, paused)

    async def queues(self) -> list[QueueState]:
        """Every queue with settings or live jobs: settings and use, in one statement."""
        return [queue_state(row) for row in await self._fetch(self._q.queues)]

    # -- schedules ------------------------------------------------------------------------------

    async def schedules(self) -> Schedules:
        """Every stored schedule by name, with the database's clock."""
        rows = await self._fetch(self._q.schedules)
        states = tuple(_schedule(row) for row in rows if row["name"] is not None)
        return Schedules(rows[0]["now"], states)

    async def put_schedule(
        self, name: str, definition: str, *, next_tick: datetime
    ) -> tuple[ScheduleState, bool]:
        """Store a new schedule, or a changed definition (with ``next_tick``), in one
        statement."""
        for _ in range(2):
            rows = await self._fetch(self._q.put_schedule, name, definition, next_tick)
            if rows:
                return _schedule(rows[0]), bool(rows[0]["replaced"])
            # A concurrent first put committed after this statement's snapshot: the row
            # exists, but the fallback SELECT could not see it. The next statement can.
        raise BackendError(f"schedule {name!r}: could not store it; try again")

    async def claim_ticks(
        self,
        name: str,
        *,
        revision: int,
        due: datetime,
        next_tick: datetime,
        ticks: Sequence[datetime],
        skipped: int,
        trace_context: Mapping[str, str] | None = None,
    ) -> TickClaim:
        """Advance the schedule and enqueue its ticks' jobs in one statement (see
        :data:`.queries.CLAIM_TICKS`)."""
        row = await self._fetchrow(
            self._q.claim_ticks,
            name,
            revision,
            due,
            next_tick,
            list(ticks),
            skipped,
            None if trace_context is None else json.dumps(dict(trace_context)),
        )
        current = None if row["name"] is None else _schedule(row)
        return TickClaim(bool(row["won"]), tuple(row["ids"]), current, row["now"])

    async def pause_schedule(self, name: str, paused: bool, *, next_tick: datetime) -> bool:
        """Pause or resume a schedule; a resume continues from ``next_tick``."""
        return bool(await self._fetch(self._q.pause_schedule, name, paused, next_tick))

    async def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; its jobs stay."""
        return bool(await self._fetch(self._q.remove_schedule, name))

    async def run_schedule(self, name: str) -> int | None:
        """Enqueue one job of the schedule now, outside its ticks."""
        rows = await self._fetch(self._q.run_schedule, name)
        return int(rows[0]["id"]) if rows else None


Init = Callable[[asyncpg.Connection], Awaitable[None]]


def _with_types_known(init: Init | None) -> Init:
    """The pool's ``init``: teach each new connection the array types batchworks binds, then
    run the user's ``init``.

    asyncpg looks up a type it has no codec for with a catalog query, once per connection,
    after turning JIT off for the session around it. Behind PgBouncer in transaction pooling
    mode that session-level SET lands on one server and the query on another, where JIT makes
    it take a second or more: a pool of fresh connections then holds every server, and
    heartbeats wait longer than ``prune_after``. One transaction (one server) with ``SET
    LOCAL jit = off`` does the lookup up front, everywhere. (asyncpg's own SET inside it
    leaves JIT off for that session, which batchworks' short statements do not miss.)"""

    async def setup(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SET LOCAL jit = off")
            await conn.fetchval(_KNOWN_TYPES, None, None, None)
        if init is not None:
            await init(conn)

    return setup


# The array types batchworks binds that asyncpg has no built-in codec for (int8[], float8[],
# jsonb[]): a statement that mentions them makes asyncpg introspect them.
_KNOWN_TYPES = "SELECT $1::int8[] IS NULL AND $2::float8[] IS NULL AND $3::jsonb[] IS NULL"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing to do. batchworks leaves no session state on its own pool's
    connections (no SET, LISTEN or session advisory lock: those run on the listener's own
    connection or inside transactions), so asyncpg's default reset, one more round trip on
    every release, would buy nothing. An open transaction is still rolled back by the pool."""


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, BackendError) and transient(exc.__cause__)


def _schedule(row: asyncpg.Record) -> ScheduleState:
    return ScheduleState(
        name=row["name"],
        definition=row["definition"],
        revision=row["revision"],
        next_tick=row["next_tick"],
        last_tick=row["last_tick"],
        skipped=row["skipped"],
        paused=row["paused"],
    )


def _claimed(row: asyncpg.Record) -> ClaimedJob:
    values = tuple(row)
    job_id, queue, payload, attempt, most, checkpoint, timeout, context, waited, lost = values[:10]
    schedule, scheduled_for, batch_id, claimed_at = values[10:]
    return ClaimedJob(
        job_id,
        queue,
        _json.loads(payload),
        attempt,
        most,
        _json.loads_optional(checkpoint),
        timeout,
        _json.loads_optional(context),
        waited,
        lost,
        schedule,
        scheduled_for,
        batch_id,
        claimed_at,
    )


def _migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("batchworks.backends.postgres") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)
