"""A claim commits asynchronously (synchronous_commit off for its statement only); a server
crash that loses it loses nothing else: the job is simply unclaimed, its attempt unused, and the
late settle of the worker that ran it is fenced out.

On a throwaway cluster of the test's own, whose WAL writer wakes only every 10 s (and with no
background writer, checkpoint or autovacuum to flush WAL meanwhile): right after the claim
returns, its commit record is not yet written out of PostgreSQL's WAL buffers, which the test
checks (that is the proof the claim did not wait for a flush); then an immediate-mode stop
(SIGQUIT to every server process, as a crash: nothing more is written) and a restart, which
recovers the WAL written before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from batchworks import JobState, PostgresBackend
from batchworks.backends.base import WorkerToken
from batchworks.outcome import Outcome, OutcomeKind
from tests.conftest import IN_CI
from tests.pgcluster import Cluster, clusters

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(180)]

QUEUE = "crash"
SCHEMA = "crash"
TRIES = 5  # claims tried until one is caught before its commit reached the WAL files
QUIET_WAL = (
    "wal_writer_delay = 10000ms",  # the longest there is: the claim's WAL waits for it
    "bgwriter_lru_maxpages = 0",  # no buffer writes (each would flush the WAL before it)
    "checkpoint_timeout = 1h",
    "autovacuum = off",
)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    try:
        with clusters() as root:
            server = Cluster(root, "crash")
            server.initdb(*QUIET_WAL)
            server.start()
            yield server
    except RuntimeError as exc:
        if IN_CI:
            raise
        pytest.skip(f"no throwaway cluster: {exc}")


@pytest.fixture
async def worker_backend(cluster: Cluster) -> AsyncIterator[PostgresBackend]:
    """The worker's backend: its connections die with the server."""
    async with PostgresBackend(cluster.dsn, schema=SCHEMA, min_size=1) as backend:
        await backend.migrate()
        yield backend


async def _unwritten(watch: asyncpg.Connection) -> bool:
    """True while WAL inserted into the buffers has not been written out yet (no WAL record
    or flush is made by asking)."""
    written, inserted = await watch.fetchrow(
        "SELECT pg_current_wal_lsn(), pg_current_wal_insert_lsn()"
    )
    return bool(written < inserted)


async def _claim_caught_unwritten(
    backend: PostgresBackend, watch: asyncpg.Connection, token: WorkerToken
) -> tuple[int, int]:
    """Enqueue and claim one job until a claim returns before its commit is written out;
    returns (job id, the attempt its claim used)."""
    for _ in range(TRIES):
        job_id = await backend.enqueue(QUEUE, {"n": 1}, max_attempts=3)  # a synchronous commit
        [claimed] = await backend.claim(token, [QUEUE], 1, lease=60.0, max_attempts=3)
        assert claimed.id == job_id and claimed.attempt == 1
        if await _unwritten(watch):
            return job_id, claimed.attempt
        # The WAL writer woke meanwhile: this claim is durable; settle it, try another.
        done = Outcome(job_id, OutcomeKind.SUCCEEDED, queue=QUEUE, attempt=claimed.attempt)
        assert await backend.settle(token, [done]) == []
    pytest.fail(
        f"each of {TRIES} claims had its commit written before it returned: the claim did not "
        "commit asynchronously (synchronous_commit off did not take effect)"
    )


async def test_a_claim_lost_in_a_crash_is_unclaimed_and_its_late_settle_fenced(
    cluster: Cluster, worker_backend: PostgresBackend
) -> None:
    token = await worker_backend.register_worker("w1", [QUEUE], max_attempts=3)
    watch = await asyncpg.connect(cluster.dsn)
    try:
        job_id, attempt = await _claim_caught_unwritten(worker_backend, watch, token)
        record = await worker_backend.get_job(job_id)
        assert record is not None and record.state is JobState.RUNNING  # visible before durable
        cluster.stop("immediate")  # a crash: the WAL buffers are not written
    finally:
        watch.terminate()
    cluster.start()

    async with PostgresBackend(cluster.dsn, schema=SCHEMA, min_size=1) as backend:
        record = await backend.get_job(job_id)
        assert record is not None, "the job itself was lost: its enqueue was committed"
        assert (record.state, record.attempts) == (JobState.QUEUED, 0), (
            f"the claim survived the crash ({record.state}, {record.attempts} attempts): the "
            "test did not reproduce a lost claim"
        )
        # The worker that ran the job before the crash settles it late: fenced out.
        late = Outcome(job_id, OutcomeKind.SUCCEEDED, queue=QUEUE, attempt=attempt)
        assert await backend.settle(token, [late]) == [job_id]
        record = await backend.get_job(job_id)
        assert record is not None and record.state is JobState.QUEUED

        # The job runs again, as its first attempt (the lost claim used none), and ends once.
        other = await backend.register_worker("w2", [QUEUE], max_attempts=3)
        [again] = await backend.claim(other, [QUEUE], 10, lease=60.0, max_attempts=3)
        assert (again.id, again.attempt) == (job_id, 1)
        done = Outcome(job_id, OutcomeKind.SUCCEEDED, queue=QUEUE, attempt=again.attempt)
        assert await backend.settle(other, [done]) == []
        record = await backend.get_job(job_id)
        assert record is not None and record.state is JobState.SUCCEEDED
        assert not record.errors, record.errors
