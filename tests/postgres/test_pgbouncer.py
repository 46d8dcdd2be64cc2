"""Through a real PgBouncer in transaction pooling mode, started by the suite on a port of its
own: the options README gives make every operation work; LISTEN through it is detected as
deaf and said so once, then checked again now and then, quietly; ``listen_dsn`` straight to
PostgreSQL brings NOTIFY wake-ups back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from batchworks import Job, JobState, PostgresBackend, Runner
from batchworks.backends.postgres import _listener
from batchworks.errors import BackendError
from batchworks.outcome import Outcome, OutcomeKind
from tests.conftest import IN_CI, eventually
from tests.pgbouncer import pgbouncer_or_skip

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]

#: what README tells users to pass behind PgBouncer in transaction pooling mode
BOUNCER_OPTIONS = {"statement_cache_size": 0}
UNDELIVERED = "LISTEN hears no NOTIFY"


@pytest.fixture(scope="module")
def bouncer_dsn(pg_dsn: str) -> Iterator[str]:
    """A DSN through a PgBouncer (pool_mode=transaction) in front of the test server."""
    yield from pgbouncer_or_skip(pg_dsn, in_ci=IN_CI)


@pytest.fixture
def crashable_bouncer_dsn(pg_dsn: str) -> Iterator[str]:
    """A PgBouncer of one test's own, for a test whose errors and cancels can make PgBouncer
    1.18 exit (see tests/pgbouncer.py): the module's PgBouncer stays up for the others."""
    yield from pgbouncer_or_skip(pg_dsn, in_ci=IN_CI, may_crash=True)


@pytest.fixture
async def bounced(bouncer_dsn: str, pg_dsn: str, pg_schema: str) -> AsyncIterator[PostgresBackend]:
    """A backend whose pool goes through PgBouncer, LISTEN straight to PostgreSQL."""
    backend = PostgresBackend(
        bouncer_dsn, schema=pg_schema, connect_options=BOUNCER_OPTIONS, listen_dsn=pg_dsn
    )
    async with backend:
        await backend.migrate()
        yield backend


async def _worker_states(dsn: str, schema: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f'SELECT state FROM "{schema}".workers ORDER BY started_at')
    finally:
        await conn.close()
    return [row["state"] for row in rows]


class TestThroughPgBouncer:
    async def test_every_backend_operation_works_with_the_documented_options(
        self, bounced: PostgresBackend, pg_dsn: str
    ) -> None:
        await bounced.migrate()  # again: the advisory lock is a transaction's, not a session's
        ids = await bounced.enqueue_many("q", [{"n": n} for n in range(20)])
        again = await bounced.enqueue("q", "unique", dedupe_key="k")
        assert await bounced.enqueue("q", "unique", dedupe_key="k") == again
        token = await bounced.register_worker("w", ["q"])
        claimed = await bounced.claim(token, ["q"], 30, lease=30.0, max_attempts=3)
        assert sorted(job.id for job in claimed) == sorted([*ids, again])
        first, *rest = [job.id for job in claimed]
        assert await bounced.save_checkpoint(token, first, {"at": 1}, lease=30.0) == {"at": 1}
        beat = await bounced.heartbeat(token, [job.id for job in claimed], lease=30.0)
        assert beat.alive and beat.lost == ()
        assert await bounced.recover(prune_after=30.0) == 0
        outcomes = [Outcome(first, OutcomeKind.RETRIED, queue="q", delay=0.0)]
        outcomes += [Outcome(job_id, OutcomeKind.SUCCEEDED, queue="q") for job_id in rest]
        assert await bounced.settle(token, outcomes) == []
        await bounced.unregister_worker(token)

        record = await bounced.get_job(first)
        assert record is not None and record.state is JobState.QUEUED
        assert record.checkpoint == {"at": 1}
        counts = (await bounced.stats())["q"]
        assert (counts["succeeded"], counts["queued"]) == (len(rest), 1)
        assert await _worker_states(pg_dsn, bounced.schema) == ["stopped"]

    async def test_a_runner_drains_hundreds_of_jobs_and_marks_itself_stopped(
        self, bounced: PostgresBackend, pg_dsn: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING)
        ids = await bounced.enqueue_many("q", list(range(300)))

        async def handler(job: Job) -> int:
            if job.payload % 50 == 0:
                await job.save_checkpoint({"seen": job.payload})
            return int(job.payload)

        runner = Runner(bounced, {"q": handler}, concurrency=20, batch_size=25)
        report = await runner.run_until_empty()
        assert report.succeeded == len(ids) and report.lost == 0
        assert (await bounced.stats())["q"]["succeeded"] == len(ids)
        assert await _worker_states(pg_dsn, bounced.schema) == ["stopped"]
        problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert problems == [], problems

    async def test_without_the_options_the_error_names_the_fix(
        self, crashable_bouncer_dsn: str, pg_backend: PostgresBackend
    ) -> None:
        # asyncpg's statement cache prepares on one server and executes on another: the
        # first statement to land elsewhere fails, and the message says what to pass.
        async with PostgresBackend(crashable_bouncer_dsn, schema=pg_backend.schema) as backend:
            with pytest.raises(BackendError, match=r"connect_options=\{'statement_cache_size'"):
                for _ in range(50):
                    await asyncio.gather(*(backend.get_job(n) for n in range(20)))


class TestListenThroughPgBouncer:
    async def test_listen_through_pgbouncer_warns_once_rechecks_quietly_and_runners_poll(
        self,
        bouncer_dsn: str,
        pg_schema: str,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(_listener, "DELIVERY_TIMEOUT", 0.5)
        monkeypatch.setattr(_listener, "RECHECK_FIRST", 0.05)
        monkeypatch.setattr(_listener, "RECHECK_MAX", 0.1)
        caplog.set_level(logging.DEBUG, logger="batchworks")
        done = asyncio.Event()

        async def handler(job: Job) -> None:
            done.set()

        def checks() -> list[logging.LogRecord]:
            return [r for r in caplog.records if getattr(r, "action", "") == "listen_undelivered"]

        backend = PostgresBackend(bouncer_dsn, schema=pg_schema, connect_options=BOUNCER_OPTIONS)
        async with backend:
            await backend.migrate()
            async with Runner(backend, {"q": handler}, poll_interval=0.2):
                # Each recheck is a new LISTEN connection through PgBouncer, as deaf as the first.
                await eventually(lambda: len(checks()) >= 4, within=30, what="four failed checks")
                assert backend._listener.delivers is False
                await backend.enqueue("q", None)
                async with asyncio.timeout(15):  # polling still finds it
                    await done.wait()
        warnings = [r for r in checks() if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert checks()[0] is warnings[0]  # the first says it, the rechecks only at DEBUG
        assert {r.levelno for r in checks()[1:]} == {logging.DEBUG}
        assert "listen_dsn" in warnings[0].getMessage()
        assert "PgBouncer" in warnings[0].getMessage()
        assert not [r for r in caplog.records if "hears NOTIFY again" in r.getMessage()]

    @pytest.mark.parametrize("how", ["aclose", "terminate"])
    async def test_close_in_the_backoff_between_checks_ends_the_listener_at_once(
        self,
        how: str,
        bouncer_dsn: str,
        pg_schema: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setattr(_listener, "DELIVERY_TIMEOUT", 0.5)
        monkeypatch.setattr(_listener, "RECHECK_FIRST", 3600.0)
        backend = PostgresBackend(bouncer_dsn, schema=pg_schema, connect_options=BOUNCER_OPTIONS)
        listener = backend._listener
        async with backend:
            await backend.migrate()
            await backend.wait_for_work(["q"], max_wait=0.001)  # starts the listener
            await eventually(
                lambda: listener.delivers is False and listener._conn is None,
                what="the listener to wait for its next check",
            )
            task = listener._task
            assert task is not None and not task.done()
            try:
                async with asyncio.timeout(10):  # a hang net: the backoff is an hour
                    if how == "aclose":
                        await listener.aclose()
                    else:
                        listener.terminate()
                        await asyncio.wait([task])
            except TimeoutError:
                pytest.fail(f"{how}() in the backoff did not end the listener within 10 s")
            assert task.done() and listener._conn is None and not listener.listening

    async def test_notify_wakes_idle_runners_with_listen_dsn_direct(
        self, bounced: PostgresBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="batchworks")
        started = asyncio.Event()

        async def handler(job: Job) -> None:
            started.set()

        # A 30 s poll: only a NOTIFY starts the job within the bound below.
        async with Runner(bounced, {"q": handler}, poll_interval=30):
            await eventually(
                lambda: bounced._listener.delivers is True,
                within=15,
                what="the listener to hear its own NOTIFY",
            )
            await bounced.enqueue("q", None)
            async with asyncio.timeout(10):
                await started.wait()
        assert not [r for r in caplog.records if UNDELIVERED in r.getMessage()]
