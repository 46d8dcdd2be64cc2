"""Scenario 8: poison jobs, one that kills its own process and one that always raises, beside
normal jobs: the poison jobs end failed after max_attempts, the restarts they cause are
bounded by it, and the normal jobs lose nothing."""

from __future__ import annotations

import random

import pytest

from batchworks import JobState, PostgresBackend
from tests.support.harness import Fleet, pick, poll, record_figures, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(120, 300))]

JOBS = pick(400, 2000)
POISON_ATTEMPTS = 5  # the default policy's max_attempts, which every job here keeps


async def test_poison_jobs_fail_after_max_attempts_and_normal_jobs_lose_nothing(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    rng = random.Random(8)
    fleet.defaults = {
        "retry_wait": 0.05,
        "runner": {
            "concurrency": 5,
            "batch_size": 10,
            "heartbeat_interval": 0.5,
            "prune_after": 10.0,
            "poll_interval": 0.5,
        },
    }
    for name in ("a", "b", "c"):
        await fleet.start(name)
    async with fleet.supervised() as dead:
        first = [{"ms": rng.randint(5, 50)} for _ in range(JOBS // 2)]
        ledger.expect(await pg_backend.enqueue_many("q", first))
        killer = await pg_backend.enqueue("q", {"poison": "kill"})
        rest = [{"ms": rng.randint(5, 50)} for _ in range(JOBS - JOBS // 2)]
        ledger.expect(await pg_backend.enqueue_many("q", rest[: JOBS // 4]))
        raiser = await pg_backend.enqueue("q", {"poison": "raise"})
        ledger.expect([killer, raiser], failed=True)
        ledger.expect(await pg_backend.enqueue_many("q", rest[JOBS // 4 :]))
        await poll(ledger.drained, within=90, every=0.1, what="the queue to drain")
        deaths = len(dead)
    verdict = await settle_and_judge(ledger, fleet, within=30)

    kill_record = await pg_backend.get_job(killer)
    raise_record = await pg_backend.get_job(raiser)
    assert kill_record is not None and raise_record is not None
    record_figures(
        "8 poison jobs",
        **verdict.figures(),
        worker_deaths=deaths,
        killer=f"{kill_record.state} after {kill_record.attempts} attempts",
        raiser=f"{raise_record.state} after {raise_record.attempts} attempts",
        attempts=verdict.attempts_histogram,
    )
    verdict.assert_ok()
    assert (kill_record.state, kill_record.attempts) == (JobState.FAILED, POISON_ATTEMPTS)
    assert [e["type"] for e in kill_record.errors] == ["WorkerLost"] * POISON_ATTEMPTS
    assert (raise_record.state, raise_record.attempts) == (JobState.FAILED, POISON_ATTEMPTS)
    assert {e["type"] for e in raise_record.errors} <= {"RuntimeError", "WorkerLost"}
    assert raise_record.errors[-1]["type"] == "RuntimeError"
    # Each attempt of the killer took one worker down, and nothing else did.
    assert deaths == POISON_ATTEMPTS, f"{deaths} worker deaths for a job of {POISON_ATTEMPTS}"
