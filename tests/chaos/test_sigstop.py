"""Scenario 3: a worker SIGSTOPped for 3x its prune period, then SIGCONTed: its jobs moved on
while it slept, every settle it sends once awake for them changes 0 rows, and it carries on as
a new incarnation."""

from __future__ import annotations

import asyncio
import random
import signal

import pytest

from batchworks import PostgresBackend
from tests.support.harness import Fleet, pick, poll, record_figures, recovery_time, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(120, 300))]

JOBS = pick(400, 2000)
PRUNE_AFTER = pick(1.5, 2.0)  # seconds
HEARTBEAT = 0.25  # seconds
STOPPED_FOR = 3 * PRUNE_AFTER + 5  # seconds under SIGSTOP: a generous bound for the recovery


async def test_sigstopped_worker_is_fenced_out_when_it_wakes(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    rng = random.Random(3)
    fleet.defaults = {
        "runner": {
            "concurrency": 5,
            "batch_size": 5,
            "heartbeat_interval": HEARTBEAT,
            "prune_after": PRUNE_AFTER,
            "poll_interval": 0.5,
        }
    }
    # Its settles wait 0.5 s before they are sent (a slow network), so the test can stop it
    # while outcomes are pending: they are sent, late, when it wakes.
    sleeper = await fleet.start("sleeper", inject={"settle_delay": 0.5})
    for name in ("a", "b"):
        await fleet.start(name)
    ledger.expect(
        await pg_backend.enqueue_many("q", [{"ms": rng.randint(20, 200)} for _ in range(JOBS)])
    )
    await poll(lambda: _holds(ledger, sleeper.pid, 5), within=20, what="the sleeper to hold 5 jobs")

    await sleeper.wait_line("settle-pending", after=len(sleeper.lines))
    loop = asyncio.get_running_loop()
    sleeper.send(signal.SIGSTOP)
    stopped_at = loop.time()
    await ledger.fault(sleeper.pid, "sigstop")
    held = await ledger.held_by(sleeper.pid)
    assert held, "the sleeper held no job when it was stopped"
    # The sleeper stays stopped for STOPPED_FOR: only the others' pruning can move its jobs
    # within it, so the bound proves that; how soon after prune_after is the recorded figure.
    recovered = await recovery_time(ledger, held, since=stopped_at, within=STOPPED_FOR)
    await asyncio.sleep(max(0.0, stopped_at + STOPPED_FOR - loop.time()))
    continued_at = loop.time()
    sleeper.send(signal.SIGCONT)

    # It finds itself pruned, registers again and carries on (until the SIGTERM at the end).
    await poll(
        lambda: "registered again" in sleeper.stderr(), within=20, what="it to register again"
    )
    assert sleeper.alive, "a worker pruned while alive must not exit"
    verdict = await settle_and_judge(ledger, fleet, within=60)
    assert sleeper.report is not None, "the sleeper printed no report"
    settles = sleeper.report["settles"]
    first_token = settles[0][3]  # the incarnation that was stopped (it registered again since)
    late = [
        (n, changed)
        for sent, n, changed, token in settles
        if sent > continued_at and token == first_token
    ]
    again = sum(changed or 0 for sent, _, changed, token in settles if token != first_token)
    record_figures(
        "3 SIGSTOP 3x prune_after",
        **verdict.figures(),
        held_at_stop=len(held),
        recovery=f"{recovered:.2f} s (prune_after {PRUNE_AFTER} s)",
        late_settles=len(late),
        late_outcomes=sum(n for n, _ in late),
        late_rows_changed=sum(changed or 0 for _, changed in late),
        late_unanswered=sum(1 for _, changed in late if changed is None),
        sleeper_report_lost=sleeper.report["lost"],
        rows_written_by_its_new_incarnation=again,
    )
    verdict.assert_ok()
    assert late, "the sleeper sent no settle after SIGCONT: nothing was tested"
    # Answered late settles changed nothing (a settle cancelled before its answer came back
    # is judged by the database: the ledger found no final state written by a stale worker).
    assert all(changed in (0, None) for _, changed in late), f"late settles changed rows: {late}"
    answered = sum(n for n, changed in late if changed is not None)
    assert sleeper.report["lost"] >= answered


async def _holds(ledger: Ledger, pid: int, n: int) -> bool:
    return len(await ledger.held_by(pid)) >= n
