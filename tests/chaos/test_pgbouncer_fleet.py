"""Scenario: worker processes whose pool goes through PgBouncer in transaction pooling mode
(``statement_cache_size=0``), LISTEN straight to PostgreSQL (``listen_dsn``), one of them
SIGKILLed and restarted mid-run: the ledger finds nothing lost and every worker row stopped
after the graceful stops; idle workers are woken by NOTIFY."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import asyncpg
import pytest

from batchworks import PostgresBackend
from tests.conftest import IN_CI
from tests.pgbouncer import pgbouncer_or_skip
from tests.support.harness import (
    Fleet,
    pick,
    poll,
    record_figures,
    recovery_time,
    settle_and_judge,
)

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(90, 240))]

JOBS = pick(1000, 5000)
POLL_INTERVAL = 30.0  # seconds: only NOTIFY wakes an idle worker quickly


@pytest.fixture
def bouncer(pg_dsn: str) -> Iterator[str]:
    yield from pgbouncer_or_skip(pg_dsn, in_ci=IN_CI)


async def test_workers_through_pgbouncer_lose_nothing_and_stop_cleanly(
    fleet: Fleet, pg_backend: PostgresBackend, pg_dsn: str, bouncer: str
) -> None:
    ledger = fleet.ledger
    rng = random.Random(5)
    fleet.dsn = bouncer
    fleet.defaults = {
        "connect_options": {"statement_cache_size": 0},
        "listen_dsn": pg_dsn,
        "effects_dsn": pg_dsn,
        "runner": {
            "concurrency": 8,
            "batch_size": 20,
            "heartbeat_interval": 0.3,
            "prune_after": 3.0,
            "poll_interval": POLL_INTERVAL,
        },
    }
    for name in ("a", "b"):
        await fleet.start(name)
    ledger.expect(
        await pg_backend.enqueue_many("q", [{"ms": rng.randint(2, 15)} for _ in range(JOBS)])
    )
    await poll(
        lambda: _finished(ledger.pool, ledger.schema, JOBS // 3), within=60, what="a third done"
    )
    loop = asyncio.get_running_loop()
    held = await ledger.held_by(fleet.current["a"].pid)
    killed_at = loop.time()
    await fleet.kill("a")
    restarted = await fleet.restart("a")
    recovered = await recovery_time(ledger, held, since=killed_at, within=30)
    await poll(ledger.drained, within=90, every=0.1, what="the queue to drain")

    await asyncio.sleep(0.5)  # idle now: a 30 s poll, so only a NOTIFY is quick
    late = await pg_backend.enqueue_many("q", [{"ms": 1}] * 5)
    ledger.expect(late)
    woke = await poll(ledger.drained, within=POLL_INTERVAL / 2, what="a NOTIFY wake-up")

    verdict = await settle_and_judge(ledger, fleet, within=30)
    states = [
        row["state"]
        for row in await ledger.pool.fetch(f'SELECT state FROM "{ledger.schema}".workers')
    ]
    errors = [w.name for w in fleet.all if "does not exist" in w.stderr()]
    record_figures(
        "PgBouncer (transaction pooling), one kill -9",
        **verdict.figures(),
        stuck=len(verdict.left_running) + len(verdict.left_queued),
        recovery=f"{recovered:.2f} s ({len(held)} jobs held at the kill)",
        worker_rows=",".join(sorted(states)),
        notify_wakeup=f"{woke:.2f} s (poll_interval {POLL_INTERVAL:g} s)",
    )
    verdict.assert_ok()
    assert errors == [], f"prepared-statement errors in the logs of {errors}"
    # The killed incarnation was replaced by its restart; every other one stopped cleanly.
    assert sorted(states) == ["replaced", "stopped", "stopped"], states
    assert restarted.report is not None and restarted.report["succeeded"] > 0


async def _finished(pool: asyncpg.Pool, schema: str, n: int) -> bool:
    query = f"SELECT count(*) FROM \"{schema}\".jobs WHERE state IN ('succeeded', 'failed')"
    return int(await pool.fetchval(query)) >= n
