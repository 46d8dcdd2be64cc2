"""Claims racing on a limited queue (#14): many connections claim at the same instant, and the
limits still hold. The hard case is held on purpose: every claim's statement starts (and takes
its snapshot) while another transaction holds the queue's row, and they all go on at once when
it lets go; a claim that counted slots in its own snapshot would see none of the others'."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import asyncpg
import pytest

from batchworks import PostgresBackend
from batchworks.backends.base import ClaimedJob, WorkerToken
from batchworks.outcome import Outcome, OutcomeKind
from tests.conftest import eventually

pytestmark = pytest.mark.postgres

CLAIMERS = 16  # connections claiming at once (the server is shared: keep it modest)
ROUNDS = 5


@pytest.fixture
async def wide(pg_dsn: str, pg_backend: PostgresBackend) -> AsyncIterator[PostgresBackend]:
    """A second backend on the same schema, with a connection per claimer."""
    async with PostgresBackend(
        pg_dsn, schema=pg_backend.schema, min_size=CLAIMERS, max_size=CLAIMERS
    ) as backend:
        yield backend


async def race(
    backend: PostgresBackend, dsn: str, workers: list[WorkerToken], *, held: bool, limit: int = 5
) -> list[ClaimedJob]:
    """Every worker claims at once; with ``held``, behind a transaction holding the queue's row
    until all of them wait for it."""
    blocker = await asyncpg.connect(dsn)
    # Another connection looks: inside a transaction pg_stat_activity stays as first read.
    watcher = await asyncpg.connect(dsn)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        if held:
            await blocker.execute(
                f'SELECT FROM "{backend.schema}".queues WHERE name = $1 FOR UPDATE', "q"
            )
        claims = [
            asyncio.create_task(backend.claim(worker, ["q"], limit, lease=60.0, max_attempts=5))
            for worker in workers
        ]
        if held:

            async def all_waiting() -> bool:
                # The claims' text begins with the UPDATE of this schema's jobs (the view
                # keeps only the head of a long statement).
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE $1",
                    f'%UPDATE "{backend.schema}".jobs AS j%',
                )
                return bool(waiting >= len(workers))

            await eventually(all_waiting, what="every claim to wait for the queue's row")
        await transaction.rollback()
        return [job for batch in await asyncio.gather(*claims) for job in batch]
    finally:
        await blocker.close()
        await watcher.close()


async def settle_all(backend: PostgresBackend, jobs: list[ClaimedJob]) -> None:
    by_worker: dict[WorkerToken, list[ClaimedJob]] = collections.defaultdict(list)
    for job in jobs:
        by_worker[await _holder(backend, job.id)].append(job)
    for worker, held in by_worker.items():
        outcomes = [Outcome(job.id, OutcomeKind.SUCCEEDED, queue="q") for job in held]
        assert await backend.settle(worker, outcomes) == []


async def _holder(backend: PostgresBackend, job_id: int) -> WorkerToken:
    pool = backend._require_pool()
    token: WorkerToken = await pool.fetchval(
        f'SELECT worker_token FROM "{backend.schema}".jobs WHERE id = $1', job_id
    )
    return token


@pytest.mark.parametrize("held", [True, False], ids=["behind-the-row-lock", "at-once"])
@pytest.mark.parametrize("concurrency", [1, 3])
async def test_racing_claims_never_exceed_the_concurrency(
    pg_backend: PostgresBackend, wide: PostgresBackend, pg_dsn: str, concurrency: int, held: bool
) -> None:
    await pg_backend.configure_queue("q", concurrency=concurrency)
    await pg_backend.enqueue_many("q", list(range(200)))
    workers = [await pg_backend.register_worker(f"w{i}", ["q"]) for i in range(CLAIMERS)]

    for _ in range(ROUNDS):
        claimed = await race(wide, pg_dsn, workers, held=held)
        # Exactly the limit: never more, and the serialised claims do not starve each other.
        assert len(claimed) == concurrency, claimed
        assert len({job.id for job in claimed}) == len(claimed)
        await settle_all(pg_backend, claimed)


async def test_racing_claims_hold_each_keys_limit(
    pg_backend: PostgresBackend, wide: PostgresBackend, pg_dsn: str
) -> None:
    keys = [f"k{i % 4}" for i in range(200)]
    await pg_backend.configure_queue("q", key_concurrency=1)
    await pg_backend.enqueue_many("q", list(range(200)), concurrency_keys=keys)
    workers = [await pg_backend.register_worker(f"w{i}", ["q"]) for i in range(CLAIMERS)]

    for _ in range(ROUNDS):
        claimed = await race(wide, pg_dsn, workers, held=True)
        per_key = collections.Counter(keys[job.payload] for job in claimed)
        assert sorted(per_key.values()) == [1, 1, 1, 1], per_key
        await settle_all(pg_backend, claimed)


async def test_racing_claims_hold_the_rate(
    pg_backend: PostgresBackend, wide: PostgresBackend, pg_dsn: str
) -> None:
    await pg_backend.configure_queue("q", rate=(7, 3600))
    await pg_backend.enqueue_many("q", list(range(200)))
    workers = [await pg_backend.register_worker(f"w{i}", ["q"]) for i in range(CLAIMERS)]

    claimed = await race(wide, pg_dsn, workers, held=True, limit=2)
    assert len(claimed) == 7
    await settle_all(pg_backend, claimed)
    assert await race(wide, pg_dsn, workers, held=False) == []  # settles give no start back


async def test_a_claim_locks_its_limited_queues_in_the_order_of_their_names(
    pg_backend: PostgresBackend, wide: PostgresBackend, pg_dsn: str
) -> None:
    # A runner listing ["b", "a"] locks "a" first: held up by a transaction on "b", its claim
    # already holds "a". Locked in the runner's order instead, two runners listing the same
    # queues in other orders could each hold one row and wait for the other's (a deadlock).
    for name in ("a", "b"):
        await pg_backend.configure_queue(name, concurrency=10)
        await pg_backend.enqueue_many(name, [1, 2])
    worker = await pg_backend.register_worker("w", ["b", "a"])
    blocker = await asyncpg.connect(pg_dsn)
    watcher = await asyncpg.connect(pg_dsn)
    queues = f'"{pg_backend.schema}".queues'
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute(f"SELECT FROM {queues} WHERE name = 'b' FOR UPDATE")
        claim = asyncio.create_task(wide.claim(worker, ["b", "a"], 5, lease=60, max_attempts=5))

        async def a_is_locked() -> bool:
            try:
                async with watcher.transaction():
                    await watcher.execute(
                        f"SELECT FROM {queues} WHERE name = 'a' FOR UPDATE NOWAIT"
                    )
            except asyncpg.LockNotAvailableError:
                return True
            return False

        await eventually(a_is_locked, what="the claim to hold queue a while it waits for b")
        await transaction.rollback()
        assert sorted(job.queue for job in await claim) == ["a", "a", "b", "b"]
    finally:
        await blocker.close()
        await watcher.close()


async def test_claims_of_limited_queues_listed_in_other_orders_all_go_through(
    pg_backend: PostgresBackend, wide: PostgresBackend
) -> None:
    names = ["a", "b", "c"]
    for name in names:
        await pg_backend.configure_queue(name, concurrency=1000)
        await pg_backend.enqueue_many(name, list(range(300)))
    orders = [names, names[::-1], ["b", "c", "a"], ["c", "a", "b"]]
    workers = [
        (await pg_backend.register_worker(f"w{i}", order), order)
        for i, order in enumerate(orders * 4)
    ]
    claimed = 0
    for _ in range(ROUNDS):
        batches = await asyncio.gather(
            *(wide.claim(worker, order, 3, lease=60.0, max_attempts=5) for worker, order in workers)
        )
        claimed += sum(len(batch) for batch in batches)
    assert claimed == ROUNDS * len(workers) * 3


async def test_handovers_racing_their_own_settles_never_exceed_the_concurrency(
    pg_backend: PostgresBackend, wide: PostgresBackend
) -> None:
    # Each round, every worker claims handing over the jobs it took the round before, while
    # those jobs' settles are sent at the same instant on other connections: whichever commits
    # first, a slot is freed once (by the handover or by the settle), never twice.
    concurrency = 3
    await pg_backend.configure_queue("q", concurrency=concurrency)
    await pg_backend.enqueue_many("q", list(range(400)))
    workers = [await pg_backend.register_worker(f"w{i}", ["q"]) for i in range(CLAIMERS)]
    held: dict[WorkerToken, list[ClaimedJob]] = {worker: [] for worker in workers}
    total = 0
    for _ in range(ROUNDS * 2):
        ended = {
            worker: [
                Outcome(j.id, OutcomeKind.SUCCEEDED, attempt=j.attempt, claimed_at=j.claimed_at)
                for j in jobs
            ]
            for worker, jobs in held.items()
        }
        claims = [
            wide.claim(worker, ["q"], 5, lease=60.0, max_attempts=5, ended=ended[worker])
            for worker in workers
        ]
        settles = [pg_backend.settle(worker, ended[worker]) for worker in workers if ended[worker]]
        results = await asyncio.gather(*claims, *settles)
        batches: list[list[ClaimedJob]] = results[: len(workers)]
        assert all(lost == [] for lost in results[len(workers) :]), "a settle was fenced out"
        claimed = [job for batch in batches for job in batch]
        assert len(claimed) <= concurrency, claimed
        assert len({job.id for job in claimed}) == len(claimed)
        running = await pg_backend._require_pool().fetchval(
            f"SELECT count(*) FROM \"{pg_backend.schema}\".jobs WHERE state = 'running'"
        )
        assert running == len(claimed)  # the ended ones are all settled by now
        held = dict(zip(workers, batches, strict=True))
        total += len(claimed)
    # Not starved: a slot handed over is taken by its own worker's claim at the latest.
    assert total >= ROUNDS * 2, total
