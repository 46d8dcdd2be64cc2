"""Scenario 5: jobs that run 3x longer than their lease, with heartbeats on: the heartbeats
keep the leases alive, and no job runs twice."""

from __future__ import annotations

import pytest

from batchworks import PostgresBackend
from tests.support.harness import Fleet, pick, record_figures, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(120, 300))]

JOBS = pick(30, 150)
LEASE = 1.0  # seconds: prune_after is also the lease of a job
HEARTBEAT = 0.2  # seconds


async def test_jobs_three_times_longer_than_the_lease_run_once(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    fleet.defaults = {
        "runner": {
            "concurrency": 5,
            "batch_size": 5,
            "heartbeat_interval": HEARTBEAT,
            "prune_after": LEASE,
            "poll_interval": 0.5,
        }
    }
    for name in ("a", "b", "c"):
        await fleet.start(name)
    ledger.expect(await pg_backend.enqueue_many("q", [{"ms": 3000 * LEASE}] * JOBS))
    verdict = await settle_and_judge(ledger, fleet, within=JOBS / 15 * 3 * LEASE + 60)
    errors = await ledger.pool.fetchval(
        f"SELECT count(*) FROM \"{ledger.schema}\".jobs WHERE errors <> '[]'::jsonb"
    )
    record_figures(
        "5 jobs 3x the lease",
        **verdict.figures(),
        lease=f"{LEASE} s",
        job=f"{3 * LEASE} s",
        jobs_with_errors=errors,
        attempts=verdict.attempts_histogram,
    )
    verdict.assert_ok(duplicates_allowed=False)
    assert verdict.attempts_histogram == {1: JOBS}
    assert errors == 0
