"""Scenario 9: a batch of 50 with 10 failing, its worker killed right after its outcomes
reached 25 settles: exactly the jobs whose outcome was not written run again."""

from __future__ import annotations

import pytest

from batchworks import JobState, PostgresBackend
from tests.support.harness import Fleet, record_figures, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

BATCH = 50
KILL_AFTER = 25  # outcomes written


async def test_killed_after_25_settles_only_the_unsettled_jobs_run_again(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    # Staggered durations make the outcomes come in one by one; every 5th job fails.
    payloads = [
        {"ms": 200 + 40 * i, **({"fail": "terminal"} if i % 5 == 2 else {})} for i in range(BATCH)
    ]
    ids = await pg_backend.enqueue_many("q", payloads)
    failing = {job_id for i, job_id in enumerate(ids) if i % 5 == 2}
    ledger.expect(set(ids) - failing)
    ledger.expect(failing, failed=True)
    runner = {"concurrency": BATCH, "batch_size": BATCH, "prune_after": 30.0}
    doomed = await fleet.start("w", runner=runner, inject={"kill_after_settled": KILL_AFTER})
    await fleet.died(doomed)
    line = await doomed.wait_line("settled ")
    rows = await ledger.pool.fetch(
        f'SELECT id, state FROM "{ledger.schema}".jobs WHERE id = ANY($1)', ids
    )
    unsettled = {row["id"] for row in rows if row["state"] == "running"}
    settled = set(ids) - unsettled
    assert len(settled) == int(line.split()[1]) >= KILL_AFTER, (line, len(settled))

    await fleet.start("w", runner=runner)
    verdict = await settle_and_judge(ledger, fleet, within=60)
    executions = await ledger.pool.fetch(
        f'SELECT job_id, attempt FROM "{ledger.schema}".effects ORDER BY job_id, attempt'
    )
    ran_again = {row["job_id"] for row in executions if row["attempt"] > 1}
    record_figures(
        "9 batch of 50, killed after 25 settles",
        **verdict.figures(),
        settled_before_kill=len(settled),
        ran_again=len(ran_again),
    )
    verdict.assert_ok()
    assert ran_again == unsettled, (sorted(ran_again - unsettled), sorted(unsettled - ran_again))
    runs = {job_id: [r["attempt"] for r in executions if r["job_id"] == job_id] for job_id in ids}
    for job_id in settled:
        assert runs[job_id] == [1], f"settled job {job_id} ran {runs[job_id]}"
    for job_id in ids:
        record = await pg_backend.get_job(job_id)
        assert record is not None
        types = [error["type"] for error in record.errors]
        expected_state = JobState.FAILED if job_id in failing else JobState.SUCCEEDED
        assert record.state is expected_state, (job_id, record.state)
        lost = ["WorkerLost"] if job_id in unsettled else []
        assert types == lost + (["Terminal"] if job_id in failing else []), (job_id, types)
