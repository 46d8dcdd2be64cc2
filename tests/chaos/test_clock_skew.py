"""Scenario 11: all lease and prune arithmetic uses the database's ``now()``. Workers whose
wall clocks are minutes ahead and behind (``time.time`` and ``datetime.now`` moved in the
process) neither steal nor lose jobs: leases hold, nobody is pruned, delays are kept."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from batchworks import PostgresBackend
from tests.support.harness import Fleet, pick, record_figures, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(120, 300))]

SKEWS = {"ahead": 300.0, "behind": -300.0, "true": 0.0}  # seconds off the real clock
LEASE = 2.0  # seconds
HEARTBEAT = 0.3  # seconds
RETRY_DELAY = 1.0  # seconds, asked by the failing jobs
SHORT, LONG, DELAYED = pick(60, 600), pick(6, 30), pick(6, 30)


async def test_skewed_worker_clocks_neither_steal_nor_lose_jobs(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    fleet.defaults = {
        "runner": {
            "concurrency": 4,
            "batch_size": 4,
            "heartbeat_interval": HEARTBEAT,
            "prune_after": LEASE,
            "poll_interval": 0.5,
        }
    }
    workers = {}
    for name, skew in SKEWS.items():
        worker = await fleet.start(name, env={"BATCHWORKS_CHAOS_SKEW": str(skew)})
        assert worker.clock is not None and abs(worker.clock - time.time() - skew) < 60, (
            f"worker {name} should see its clock {skew} s off, saw {worker.clock - time.time()}"
        )
        workers[name] = worker
    payloads = (
        [{"ms": 2500 * LEASE}] * LONG  # longer than the lease: heartbeats must extend it
        + [{"fail": 1, "retry_delay": RETRY_DELAY, "ms": 10}] * DELAYED
        + [{"ms": 20}] * SHORT
    )
    ids = await pg_backend.enqueue_many("q", payloads)
    ledger.expect(ids)
    delayed = ids[LONG : LONG + DELAYED]

    verdict = await settle_and_judge(ledger, fleet, within=120)
    rows = await ledger.pool.fetch(
        f'SELECT job_id, attempt, outcome, worker, started_at, done_at FROM "{ledger.schema}".'
        "effects WHERE job_id = ANY($1) ORDER BY job_id, attempt",
        delayed,
    )
    waits = _retry_waits(rows)
    lost_errors = await ledger.count('errors @> \'[{"type": "WorkerLost"}]\'::jsonb')
    per_worker = await ledger.pool.fetch(
        f'SELECT worker, count(*) AS n FROM "{ledger.schema}".effects GROUP BY worker'
    )
    pruned = await ledger.pool.fetchval(
        f"SELECT count(*) FROM \"{ledger.schema}\".workers WHERE state IN ('pruned', 'replaced')"
    )
    record_figures(
        "11 worker clocks off by +-5 min",
        **verdict.figures(),
        executions_by_worker={row["worker"]: row["n"] for row in per_worker},
        worker_lost_errors=lost_errors,
        workers_pruned=pruned,
        retry_wait=f"{min(waits):.2f}-{max(waits):.2f} s (asked {RETRY_DELAY} s)",
    )
    verdict.assert_ok(duplicates_allowed=False)
    assert lost_errors == 0, "a lease expired or a worker was presumed dead"
    assert pruned == 0, "a worker was pruned"
    assert {row["worker"] for row in per_worker} == set(SKEWS), "every worker takes jobs"
    assert len(waits) == DELAYED
    assert all(RETRY_DELAY - 0.05 <= wait < RETRY_DELAY + 2.0 for wait in waits), waits


def _retry_waits(rows: list) -> list[float]:
    """Seconds between each failed first attempt's end and its second attempt's start."""
    first: dict[int, datetime] = {}
    waits = []
    for row in rows:
        if row["attempt"] == 1 and row["outcome"] == "raise":
            first[row["job_id"]] = row["done_at"]
        elif row["attempt"] == 2 and row["job_id"] in first:
            waits.append((row["started_at"] - first[row["job_id"]]).total_seconds())
    return waits
