"""Scenario 4: a hung handler (awaits forever) and a handler that blocks the event loop. The
job timeout ends the hung call while the worker's other slots keep their pace; the blocked
worker is presumed dead, its jobs move to the others, which keep theirs, and it carries on
as a new incarnation once its loop runs again."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest

from batchworks import JobState, PostgresBackend
from tests.support.harness import Fleet, pick, poll, record_figures, recovery_time, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(120, 300))]

JOBS = pick(2500, 5000)
JOB_TIMEOUT = 1.0  # seconds
BLOCK = 3.0  # seconds the blocking handler holds its event loop
PRUNE_AFTER = 1.5  # seconds
HEARTBEAT = 0.2  # seconds
SLOTS = 4


async def test_hung_and_loop_blocking_handlers_do_not_stall_the_others(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    fleet.defaults = {
        "runner": {
            "concurrency": SLOTS,
            "batch_size": SLOTS,
            "job_timeout": JOB_TIMEOUT,
            "heartbeat_interval": HEARTBEAT,
            "prune_after": PRUNE_AFTER,
            "poll_interval": 0.5,
        }
    }
    # "hq" and "bq" route the hung and the blocking job to the worker each test phase watches.
    hung = await fleet.start("hung", queues=["q", "hq"])
    blocked = await fleet.start("blocked", queues=["q", "bq"])
    other = await fleet.start("other")
    ledger.expect(await pg_backend.enqueue_many("q", [{"ms": 50}] * JOBS))
    await asyncio.sleep(1.0)  # a second of undisturbed pace, the baseline

    # -- the hung handler --------------------------------------------------------------------
    hang_id = await pg_backend.enqueue("hq", {"hang": 1}, priority=10)
    ledger.expect([hang_id])
    hang_at = await _mark(ledger, hung.pid, "hang")
    await poll(lambda: _errored(pg_backend, hang_id), within=10, what="the job timeout to fire")
    record = await pg_backend.get_job(hang_id)
    assert record is not None and record.errors[0]["type"] == "TimeoutError", record
    fired_after = (datetime.fromisoformat(record.errors[0]["at"]) - hang_at).total_seconds()
    # Not before the limit (load only makes it later); the hang handler never returns, so the
    # upper bound of the poll above is a hang net, not a figure.
    assert fired_after >= JOB_TIMEOUT - 0.05, f"fired after {fired_after}"
    before = await _pace(ledger, hung.pid, hang_at, -1.0)
    during = await _pace(ledger, hung.pid, hang_at, JOB_TIMEOUT)

    # -- the blocking handler ----------------------------------------------------------------
    block_id = await pg_backend.enqueue("bq", {"block": BLOCK, "until": 1}, priority=10)
    ledger.expect([block_id])
    block_at = await _mark(ledger, blocked.pid, "block")
    loop = asyncio.get_running_loop()
    since = loop.time()
    held = await ledger.held_by(blocked.pid)
    assert len(held) > 1, "the blocked worker held no job beside the blocking one"
    # A hang net: had nobody recovered them, the blocked worker would settle them itself after
    # BLOCK, which the WorkerLost entry of the blocking job below rules out.
    recovered = await recovery_time(ledger, held, since=since, within=BLOCK + 15)
    other_before = await _pace(ledger, other.pid, block_at, -1.0)
    await asyncio.sleep(max(0.0, since + BLOCK - loop.time()))
    other_during = await _pace(ledger, other.pid, block_at, BLOCK)
    # Once its loop runs again it finds itself pruned, registers again and carries on.
    await poll(
        lambda: "registered again" in blocked.stderr(), within=30, what="it to register again"
    )
    assert blocked.alive, "a worker pruned while alive must not exit"

    verdict = await settle_and_judge(ledger, fleet, within=90)
    record_figures(
        "4 hung + loop-blocking handler",
        **verdict.figures(),
        timeout_fired_after=f"{fired_after:.2f} s (job_timeout {JOB_TIMEOUT} s)",
        hung_worker_pace=f"{before:.0f}/s before, {during:.0f}/s during the hang",
        blocked_jobs_moved_after=f"{recovered:.2f} s (prune_after {PRUNE_AFTER} s)",
        other_worker_pace=f"{other_before:.0f}/s before, {other_during:.0f}/s during the block",
    )
    verdict.assert_ok()
    final = await pg_backend.get_job(hang_id)
    assert final is not None and (final.state, final.attempts) == (JobState.SUCCEEDED, 2)
    final = await pg_backend.get_job(block_id)
    assert final is not None and final.state is JobState.SUCCEEDED
    assert [error["type"] for error in final.errors] == ["WorkerLost"]
    # The hung call takes one slot of SLOTS: the rest keep at least half their pace.
    assert during >= 0.5 * before * (SLOTS - 1) / SLOTS, (before, during)
    assert other_during >= 0.5 * other_before, (other_before, other_during)


async def _mark(ledger: Ledger, pid: int, kind: str) -> datetime:
    """The time the worker ``pid`` wrote a ``kind`` row into faults (waits for it)."""
    query = f'SELECT max(at) FROM "{ledger.schema}".faults WHERE pid = $1 AND kind = $2'

    async def written() -> bool:
        return await ledger.pool.fetchval(query, pid, kind) is not None

    await poll(written, within=10, what=f"worker {pid} to start its {kind} job")
    at: datetime = await ledger.pool.fetchval(query, pid, kind)
    return at


async def _errored(backend: PostgresBackend, job_id: int) -> bool:
    record = await backend.get_job(job_id)
    return record is not None and bool(record.errors)


async def _pace(ledger: Ledger, pid: int, at: datetime, seconds: float) -> float:
    """Jobs per second the worker ``pid`` finished from ``at`` over ``seconds`` (or before
    ``at``, for a negative span)."""
    start, end = sorted([at.timestamp(), at.timestamp() + seconds])

    async def done() -> bool:
        latest = await ledger.pool.fetchval("SELECT extract(epoch FROM clock_timestamp())")
        return float(latest) >= end

    await poll(done, within=abs(seconds) + 5, what="the measuring window to pass")
    count = await ledger.pool.fetchval(
        f"SELECT count(*) FROM \"{ledger.schema}\".effects WHERE pid = $1 AND outcome = 'ok' "
        "AND done_at >= to_timestamp($2) AND done_at < to_timestamp($3)",
        pid,
        start,
        end,
    )
    return float(count) / abs(seconds)
