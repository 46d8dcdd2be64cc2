"""What only the PostgreSQL backend has: migrations, schemas, transactions, NOTIFY, plans."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Iterator
from typing import Any

import asyncpg
import pytest

from batchworks import (
    ConfigurationError,
    Job,
    JobState,
    LifecycleError,
    PostgresBackend,
    Runner,
    SchemaNotMigrated,
    Terminal,
)
from batchworks.backends.postgres import _listener
from batchworks.backends.postgres import backend as backend_module
from batchworks.backends.postgres.backend import Queries, _migration_files
from batchworks.outcome import Outcome, OutcomeKind
from tests.chaos.proxy import Proxy
from tests.conftest import eventually

pytestmark = pytest.mark.postgres


class TestMigrate:
    async def test_migrate_is_idempotent_and_records_its_version(
        self, pg_backend: PostgresBackend, pg_dsn: str
    ) -> None:
        await pg_backend.migrate()
        await pg_backend.migrate()
        conn = await asyncpg.connect(pg_dsn)
        try:
            versions = await conn.fetch(
                f'SELECT version FROM "{pg_backend.schema}".migrations ORDER BY version'
            )
        finally:
            await conn.close()
        shipped = [version for version, _, _ in _migration_files()]
        assert shipped[:6] == [1, 2, 3, 4, 5, 6] and 9 in shipped
        assert [row["version"] for row in versions] == shipped

    async def test_upgrade_from_version_2_keeps_jobs_in_flight(
        self, pg_dsn: str, pg_schema: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A schema at version 2, as 0.1 left it, with a job running and one queued; then the
        # upgrade. The running job still settles (fenced), the queued one is still claimed,
        # and an enqueue after the upgrade still wakes a listening runner.
        every_migration = backend_module._migration_files()
        monkeypatch.setattr(
            backend_module,
            "_migration_files",
            lambda: [migration for migration in every_migration if migration[0] <= 2],
        )
        async with PostgresBackend(pg_dsn, schema=pg_schema) as backend:
            await backend.migrate()
            running, queued = await backend.enqueue_many("q", [1, 2])
            # A worker of the version before the upgrade holds the first job, as its claim
            # left it (written here in that version's columns: this version's workers refuse
            # an older schema).
            worker = uuid.uuid4()
            conn = await asyncpg.connect(pg_dsn)
            try:
                await conn.execute(
                    f'INSERT INTO "{pg_schema}".workers (token, name, host, pid, queues) '
                    "VALUES ($1, 'w', 'h', 1, ARRAY['q'])",
                    worker,
                )
                await conn.execute(
                    f"UPDATE \"{pg_schema}\".jobs SET state = 'running', attempts = 1, "
                    "worker_token = $1, worker_name = 'w', started_at = now(), "
                    "lease_until = now() + interval '30 seconds' WHERE id = $2",
                    worker,
                    running,
                )
            finally:
                await conn.close()
            monkeypatch.undo()

            await backend.migrate()

            outcome = Outcome(running, OutcomeKind.SUCCEEDED, queue="q", attempt=1)
            assert await backend.settle(worker, [outcome]) == []
            assert (await backend.get_job(running)).state == "succeeded"  # type: ignore[union-attr]
            worker = await backend.register_worker("w2", ["q"])
            [next_job] = await backend.claim(worker, ["q"], 5, lease=30.0, max_attempts=5)
            assert next_job.id == queued
            conn = await asyncpg.connect(pg_dsn)
            try:
                await backend.wait_for_work(["q"], max_wait=0.001)  # starts its listener
                listen = f'LISTEN "batchworks_{pg_schema}"'

                async def listening() -> bool:
                    return bool(
                        await conn.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE query = $1", listen
                        )
                    )

                await eventually(listening, what="the backend to LISTEN")
                waiter = asyncio.create_task(backend.wait_for_work(["q"], max_wait=30))
                await backend.enqueue("q", 3)
                try:
                    async with asyncio.timeout(15):  # a hang net, far below max_wait=30
                        await waiter
                except TimeoutError:
                    pytest.fail("an enqueue after the upgrade did not wake the idle backend")
                versions = await conn.fetch(f'SELECT version FROM "{pg_schema}".migrations')
                indexes = await conn.fetch(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = $1", pg_schema
                )
            finally:
                await conn.close()
        assert sorted(row["version"] for row in versions) == [v for v, _, _ in _migration_files()]
        assert not {"jobs_due", "jobs_lease"} & {row["indexname"] for row in indexes}

    async def test_concurrent_migrations_from_many_processes_serialize(
        self, pg_dsn: str, pg_schema: str
    ) -> None:
        backends = [PostgresBackend(pg_dsn, schema=pg_schema, min_size=1) for _ in range(4)]
        for backend in backends:
            await backend.open()
        try:
            await asyncio.gather(*(backend.migrate() for backend in backends))
            job_id = await backends[0].enqueue("q", 1)
            assert await backends[3].get_job(job_id) is not None
        finally:
            for backend in backends:
                await backend.aclose()

    async def test_using_the_backend_before_migrate_says_to_run_it(
        self, pg_dsn: str, pg_schema: str
    ) -> None:
        async with PostgresBackend(pg_dsn, schema=pg_schema) as backend:
            with pytest.raises(SchemaNotMigrated, match=r"backend\.migrate\(\)"):
                await backend.enqueue("q", 1)
            with pytest.raises(SchemaNotMigrated, match="batchworks migrate"):
                await backend.stats()


class TestConfiguration:
    @pytest.mark.parametrize("schema", ["", "Upper", 'x";DROP TABLE jobs;--', "1abc", "a" * 51])
    def test_invalid_schema_names_are_refused(self, schema: str) -> None:
        with pytest.raises(ConfigurationError, match="schema name"):
            PostgresBackend("postgresql://localhost/x", schema=schema)

    def test_dsn_or_pool_exactly_one(self) -> None:
        with pytest.raises(ConfigurationError, match="exactly one"):
            PostgresBackend()

    async def test_using_an_unopened_backend_says_to_open_it(self) -> None:
        backend = PostgresBackend("postgresql://localhost/x")
        with pytest.raises(LifecycleError, match="async with backend"):
            await backend.get_job(1)

    async def test_a_callers_pool_is_used_and_left_open(
        self, pg_dsn: str, pg_backend: PostgresBackend
    ) -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
        try:
            async with PostgresBackend(pool=pool, schema=pg_backend.schema) as backend:
                job_id = await backend.enqueue("q", {"via": "pool"})
            assert await pool.fetchval("SELECT 1") == 1  # still open
            record = await pg_backend.get_job(job_id)
            assert record is not None and record.payload == {"via": "pool"}
        finally:
            await pool.close()

    async def test_a_callers_pool_gets_its_listen_connection_back_unlistened(
        self, pg_dsn: str, pg_backend: PostgresBackend
    ) -> None:
        # A pool with a reset of its own (one that does not UNLISTEN): the backend must not
        # hand it back a connection still listening on batchworks' channel.
        async def keep_session(conn: asyncpg.Connection) -> None:
            pass

        listen = f'LISTEN "batchworks_{pg_backend.schema}"'
        watcher = await asyncpg.connect(pg_dsn)
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1, reset=keep_session)
        try:

            async def listening() -> bool:
                return bool(
                    await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE query = $1", listen
                    )
                )

            async with PostgresBackend(pool=pool, schema=pg_backend.schema) as backend:
                await backend.wait_for_work(["q"], max_wait=0.001)  # starts its listener
                await eventually(listening, what="the listener to LISTEN")
            # The pool's only connection, the listener's, must be back and usable.
            async with pool.acquire(timeout=5) as conn:
                channels = await conn.fetch("SELECT pg_listening_channels()")
        finally:
            pool.terminate()  # close() would wait for a connection that never came back
            await watcher.close()
        assert channels == []


class TestTransactionalEnqueue:
    async def test_job_exists_only_if_the_callers_transaction_commits(
        self, pg_backend: PostgresBackend, pg_dsn: str
    ) -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            with pytest.raises(RuntimeError, match="business rule"):
                async with conn.transaction():
                    rolled_back = await pg_backend.enqueue("q", "a", connection=conn)
                    raise RuntimeError("business rule broke")
            async with conn.transaction():
                committed = await pg_backend.enqueue_many("q", ["b", "c"], connection=conn)
        finally:
            await conn.close()
        assert await pg_backend.get_job(rolled_back) is None
        assert [await pg_backend.get_job(job_id) is not None for job_id in committed] == [
            True,
            True,
        ]

    async def test_runner_is_woken_at_commit_not_before(
        self, pg_backend: PostgresBackend, pg_dsn: str
    ) -> None:
        started = asyncio.Event()

        async def handler(job: Job) -> None:
            started.set()

        conn = await asyncpg.connect(pg_dsn)
        try:
            async with Runner(pg_backend, {"q": handler}, poll_interval=60):
                tx = conn.transaction()
                await tx.start()
                await pg_backend.enqueue("q", None, connection=conn)
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):
                        await started.wait()
                await tx.commit()
                async with asyncio.timeout(15):  # a hang net, far below the 60 s poll
                    await started.wait()
        finally:
            await conn.close()


class TestWaitJobNotify:
    async def test_only_the_jobs_someone_waits_on_send_a_notify(
        self, pg_backend: PostgresBackend, pg_dsn: str
    ) -> None:
        # A NOTIFY takes the global notify lock at commit: a flush of jobs nobody waits on
        # must send none, on the fast path (plain successes) and on the general one alike.
        async def handler(job: Job) -> object:
            if job.payload % 5 == 0:
                raise Terminal("multiple of five")
            return None if job.payload % 2 else job.payload

        heard: list[str] = []
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.add_listener(
                f"bw_done_{pg_backend.schema}", lambda *args: heard.append(args[-1])
            )
            ids = await pg_backend.enqueue_many("q", list(range(1, 41)))
            waited = [ids[6], ids[9]]  # payload 7 (a plain success) and 10 (fails)
            waiters = [asyncio.create_task(pg_backend.wait_job(job_id)) for job_id in waited]

            async def marked() -> bool:
                count = await conn.fetchval(
                    f'SELECT count(*) FROM "{pg_backend.schema}".jobs WHERE waited'
                )
                return bool(count == 2)

            await eventually(marked, what="both waiters to mark their job")
            report = await Runner(pg_backend, {"q": handler}, batch_size=10).run_until_empty()
            async with asyncio.timeout(15):  # a hang net, far below the 30 s re-read
                records = await asyncio.gather(*waiters)
            await conn.execute("SELECT 1")  # what was sent has arrived by its answer
        finally:
            await conn.close()

        assert (report.succeeded, report.failed) == (32, 8)
        assert [record.state for record in records] == [JobState.SUCCEEDED, JobState.FAILED]
        assert sorted(heard) == sorted(str(job_id) for job_id in waited)

    async def test_without_notifications_a_waiter_still_returns_by_reading_again(
        self, pg_backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The LISTEN connection cannot be opened (a pooler that drops LISTEN, say): a waiter
        # falls back to reading the job every second.
        async def refuse() -> Any:
            raise OSError("LISTEN is not available here")

        monkeypatch.setattr(pg_backend._listener, "_connect", refuse)
        job_id = await pg_backend.enqueue("q", 5)
        waiter = asyncio.create_task(pg_backend.wait_job(job_id))
        await asyncio.sleep(0.05)
        assert not waiter.done()

        worker = await pg_backend.register_worker("w", ["q"])
        await pg_backend.claim(worker, ["q"], 1, lease=30.0, max_attempts=5)
        outcome = Outcome(job_id, OutcomeKind.SUCCEEDED, result_json="10", queue="q")
        assert await pg_backend.settle(worker, [outcome]) == []

        assert not pg_backend._listener.listening
        async with asyncio.timeout(15):  # a hang net; the re-read is every second
            record = await waiter
        assert (record.state, record.result) == (JobState.SUCCEEDED, 10)


class TestListener:
    async def test_wake_up_survives_the_listen_connection_dying(
        self, pg_backend: PostgresBackend, pg_dsn: str
    ) -> None:
        started = asyncio.Event()

        async def handler(job: Job) -> None:
            started.set()

        conn = await asyncpg.connect(pg_dsn)
        try:
            async with Runner(pg_backend, {"q": handler}, poll_interval=60):
                listen = f'LISTEN "batchworks_{pg_backend.schema}"'

                async def listener_pid() -> int | None:
                    pid: int | None = await conn.fetchval(
                        "SELECT pid FROM pg_stat_activity WHERE query = $1", listen
                    )
                    return pid

                await eventually(lambda: _is_not_none(listener_pid()), what="a listener")
                old = await listener_pid()
                await conn.execute("SELECT pg_terminate_backend($1)", old)

                async def reconnected() -> bool:
                    pid = await listener_pid()
                    return pid is not None and pid != old

                await eventually(reconnected, what="the listener to reconnect")
                await pg_backend.enqueue("q", None)
                async with asyncio.timeout(15):  # a hang net, far below the 60 s poll
                    await started.wait()
        finally:
            await conn.close()

    async def test_a_check_missed_in_a_stall_is_made_again_and_wake_ups_resume(
        self,
        pg_dsn: str,
        pg_schema: str,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The network to the LISTEN connection stalls right after its first LISTEN: the
        # NOTIFY it sends itself (through the pool, direct) reaches the server, and the echo
        # is held on its way back. The listener must drop that connection without waiting on
        # it, check again on a new one once the network is back, and listen again.
        monkeypatch.setattr(_listener, "DELIVERY_TIMEOUT", 0.5)
        monkeypatch.setattr(_listener, "PROBE_TIMEOUT", 1.0)  # bounds the stalled UNLISTEN
        monkeypatch.setattr(_listener, "RECHECK_FIRST", 0.2)
        caplog.set_level(logging.INFO, logger="batchworks")
        started = asyncio.Event()

        async def handler(job: Job) -> None:
            started.set()

        async with Proxy(pg_dsn) as proxy:
            backend = PostgresBackend(pg_dsn, schema=pg_schema, listen_dsn=proxy.dsn)
            listener = backend._listener
            send = listener._notify
            sent: list[str] = []

            async def stall_the_first_echo(payload: str) -> None:
                if not sent:
                    proxy.blackhole()
                sent.append(payload)
                await send(payload)

            monkeypatch.setattr(listener, "_notify", stall_the_first_echo)
            async with backend:
                await backend.migrate()
                async with Runner(backend, {"q": handler}, poll_interval=60):
                    await eventually(
                        lambda: listener.delivers is False and listener._conn is None,
                        what="the missed check's connection to be dropped, network stalled",
                    )
                    assert proxy.blackholed and not listener.listening
                    proxy.heal()
                    await eventually(lambda: listener.listening, what="the listener back")
                    assert listener.delivers is True and len(sent) >= 2
                    await backend.enqueue("q", None)
                    async with asyncio.timeout(15):  # a hang net, far below the 60 s poll
                        await started.wait()
        _assert_warned_once_and_recovered_once(caplog)

    async def test_after_a_miss_a_check_that_proves_nothing_does_not_listen(
        self,
        pg_dsn: str,
        pg_schema: str,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # First check: its NOTIFY is not sent, so it misses. Second: the NOTIFY cannot be
        # sent at all, which proves nothing, and after a miss the listener must not take that
        # connection as listening (it would never check again). Third: heard.
        monkeypatch.setattr(_listener, "DELIVERY_TIMEOUT", 0.3)
        monkeypatch.setattr(_listener, "RECHECK_FIRST", 0.1)
        caplog.set_level(logging.INFO, logger="batchworks")
        backend = PostgresBackend(pg_dsn, schema=pg_schema)
        listener = backend._listener
        send = listener._notify
        listening_at: list[bool] = []

        async def notify(payload: str) -> None:
            listening_at.append(listener.listening)
            if len(listening_at) == 2:
                raise OSError("the pool's connection went")  # cannot be sent
            if len(listening_at) >= 3:
                await send(payload)

        monkeypatch.setattr(listener, "_notify", notify)
        async with backend:
            await backend.migrate()
            listener.start()
            await eventually(lambda: listener.listening, what="the listener to listen")
        assert len(listening_at) == 3, listening_at
        assert listening_at == [False, False, False]  # listened only once heard
        assert listener.delivers is True
        _assert_warned_once_and_recovered_once(caplog)


def _assert_warned_once_and_recovered_once(caplog: pytest.LogCaptureFixture) -> None:
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("batch")]
    warned = [m for level, m in said if level == logging.WARNING and "hears no" in m]
    again = [m for level, m in said if level == logging.INFO and "hears NOTIFY again" in m]
    assert (len(warned), len(again)) == (1, 1), said


async def _is_not_none(value: Awaitable[object]) -> bool:
    return (await value) is not None


class TestWakeUps:
    async def test_idle_runner_is_woken_by_each_of_several_enqueues_in_a_row(
        self, pg_backend: PostgresBackend
    ) -> None:
        # Each wake-up re-arms the next. How fast one is (enqueue -> handler start, p50/p99)
        # is a figure of bench/latency.py; here only that a NOTIFY, not the 60 s poll, did it.
        started = asyncio.Event()

        async def handler(job: Job) -> None:
            started.set()

        async with Runner(pg_backend, {"q": handler}, poll_interval=60):
            for _ in range(5):
                started.clear()
                # let the runner go idle in wait_for_work first
                await asyncio.sleep(0.05)
                await pg_backend.enqueue("q", None)
                async with asyncio.timeout(15):  # a hang net, far below the 60 s poll
                    await started.wait()


class TestClaimPlan:
    async def test_claim_reads_the_partial_index_in_order_with_history_around(
        self, pg_backend: PostgresBackend, pg_dsn: str
    ) -> None:
        await pg_backend.enqueue_many("q", list(range(4000)))
        await pg_backend.enqueue_many("other", list(range(1000)))
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(
                f"UPDATE \"{pg_backend.schema}\".jobs SET state = 'succeeded', "
                "finished_at = now() WHERE id % 4 <> 0"
            )
            await conn.execute(f'ANALYZE "{pg_backend.schema}".jobs')
            queries = Queries.fill(pg_backend.schema)
            for claim, queues in ((queries.claim_one, "q"), (queries.claim, ["q", "other"])):
                rows = await conn.fetch(
                    f"EXPLAIN {claim}", uuid.uuid4(), queues, 100, 30.0, 5, None, 1000, [], []
                )
                plan = "\n".join(row[0] for row in rows)
                assert "Index Scan using jobs_claim" in plan, plan
                assert "Seq Scan on jobs" not in plan, plan
                assert "Bitmap" not in plan, plan
        finally:
            await conn.close()

    async def test_without_statistics_the_hot_statements_read_only_what_they_need(
        self, pg_backend: PostgresBackend, pg_dsn: str
    ) -> None:
        # Right after a bulk enqueue nothing has analyzed the table: the plans must not depend
        # on statistics. Each scan of the jobs table must go through the right partial index
        # and read a handful of entries, never the backlog (an index on (queue, run_at) plus
        # a sort of every queued row took the claim to 48 ms for a backlog of 100k).
        backlog = 20_000
        for priority in (0, 5):
            await pg_backend.enqueue_many("q", list(range(backlog // 2)), priority=priority)
        await pg_backend.enqueue_many("q", list(range(100)), delay=3600, priority=-1)
        queries = Queries.fill(pg_backend.schema)
        conn = await asyncpg.connect(pg_dsn)
        try:
            analyzed = await conn.fetchval(
                "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL "
                "FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'jobs'",
                pg_backend.schema,
            )
            assert not analyzed, "the table was analyzed: this test needs it fresh"
            worker = await pg_backend.register_worker("w", ["q"])
            await pg_backend.claim(worker, ["q"], 50, lease=30.0, max_attempts=5)
            cases = [
                # (statement, its arguments, the index it must read, entries it may read)
                # every heartbeat: the running rows (50 held), never the backlog or history;
                # through either index of running rows only (jobs_slots: migration 7)
                (queries.recover, (30.0, 1), {"jobs_running", "jobs_slots"}, 50),
                (queries.next_due, (["q"],), {"jobs_claim"}, 3),  # a probe a priority: 5, 0, -1
                (
                    queries.claim_one,
                    (worker, "q", 100, 30.0, 5, None, 1000, [], []),
                    {"jobs_claim"},
                    100,
                ),
                (
                    queries.claim,
                    (worker, ["q", "other"], 100, 30.0, 5, None, 1000, [], []),
                    {"jobs_claim"},
                    100,
                ),
            ]
            for statement, args, index, most in cases:  # index: those it may read
                scans = await _scans_of_jobs(conn, statement, args)
                # The claim's UPDATE finds its rows by id (the primary key); the rest must
                # be the index-ordered reads that pick them.
                reading = [
                    scan
                    for scan in scans
                    if scan.get("Index Name") != "jobs_pkey"
                    and "(id = ANY" not in scan.get("Recheck Cond", "")
                ]
                assert reading, scans
                for scan in reading:
                    assert scan["Node Type"] != "Seq Scan", scan
                    assert scan["Index Name"] in index, scan
                    assert scan["Actual Rows"] * scan["Actual Loops"] <= most, scan
        finally:
            await conn.close()

    async def test_without_statistics_the_settles_and_the_heartbeat_read_their_jobs_by_id(
        self, pg_backend: PostgresBackend, pg_dsn: str
    ) -> None:
        # A settle names its jobs: it must find each by primary key, whatever indexes of
        # running jobs exist. Through jobs_slots (all running jobs of every worker) and an
        # unnest run again for each, a settle of 100 cost 1.9 ms instead of 0.55 (migration 12
        # dropped jobs_running, which the settles' plans read before).
        await pg_backend.enqueue_many("q", list(range(20_000)))
        queries = Queries.fill(pg_backend.schema)
        mine = await pg_backend.register_worker("mine", ["q"])
        other = await pg_backend.register_worker("other", ["q"])
        held = await pg_backend.claim(mine, ["q"], 100, lease=30.0, max_attempts=5)
        await pg_backend.claim(other, ["q"], 100, lease=30.0, max_attempts=5)
        ids = [job.id for job in held]
        attempts = [job.attempt for job in held]
        claims = [job.claimed_at for job in held]
        n = len(ids)
        assert n == 100
        mixed = (["succeeded"] * n, [False] * n, [None] * n, [True] * n, [None] * n, [None] * n)
        cases = [
            (queries.settle_succeeded_unbatched, (mine, ids, attempts, claims)),
            (queries.settle_succeeded, (mine, ids, attempts, claims)),
            (queries.settle_unbatched, (mine, ids, *mixed, attempts, claims)),
            (queries.settle, (mine, ids, *mixed, attempts, claims)),
            (queries.heartbeat, (mine, ids, 30.0)),
        ]
        conn = await asyncpg.connect(pg_dsn)
        try:
            for statement, args in cases:
                scans = await _scans_of_jobs(conn, statement, args)
                assert scans, statement
                for scan in scans:
                    assert scan.get("Index Name") == "jobs_pkey", (statement[:60], scan)
                    # a look-up by id also meets each job's earlier versions (the enqueue's, and
                    # one per EXPLAIN rolled back above), never the backlog's 20,000
                    read = scan["Actual Rows"] * scan["Actual Loops"]
                    assert read <= 8 * n, (statement[:60], scan)
        finally:
            await conn.close()


async def _scans_of_jobs(
    conn: asyncpg.Connection, statement: str, args: tuple[Any, ...]
) -> list[dict[str, Any]]:
    """The scans of the jobs table in the plan ``statement`` ran with (EXPLAIN ANALYZE, in a
    transaction rolled back after)."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        [row] = await conn.fetch(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", *args)
    finally:
        await transaction.rollback()  # EXPLAIN ANALYZE ran it: undo
    return list(_scans_of(json.loads(row[0])[0]["Plan"], "jobs"))


def _scans_of(plan: dict[str, Any], relation: str) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that scans ``relation``."""
    children = plan.get("Plans", [])
    if plan.get("Relation Name") == relation and "Scan" in plan["Node Type"]:
        if plan["Node Type"] == "Bitmap Heap Scan":  # the index is its child's
            index = children[0]
            plan = {
                **plan,
                "Index Name": index.get("Index Name"),
                "Actual Rows": index["Actual Rows"],
            }
        yield plan
    for child in children:
        yield from _scans_of(child, relation)


async def test_job_state_values_match_the_database_check(pg_backend: PostgresBackend) -> None:
    job_id = await pg_backend.enqueue("q", None)
    assert await pg_backend.cancel(job_id)
    record = await pg_backend.get_job(job_id)
    assert record is not None and record.state is JobState.CANCELLED


class TestPendingMigrations:
    async def test_an_empty_schema_lacks_every_migration_and_migrate_applies_them(
        self, pg_dsn: str, pg_schema: str
    ) -> None:
        async with PostgresBackend(pg_dsn, schema=pg_schema) as backend:
            missing = await backend.pending_migrations()
            assert missing[:2] == ["0001_initial", "0002_job_timeout"]
            assert "0004_worker_max_attempts" in missing
            await backend.migrate()
            assert await backend.pending_migrations() == []
