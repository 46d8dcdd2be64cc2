"""Batches under the kill -9 loop (#16): 3 workers, one SIGKILLed and restarted under the
same name every few seconds, while three batches run: one that succeeds, one with members that
fail for good, and one that grows while it runs (members added from the test in chunks, then
closed). At the end each batch's counters equal its members' final states exactly,
``on_complete`` was enqueued exactly once per batch, ``on_success`` exactly once for the batches
whose members all succeeded and never for the other, and the ledger finds no job lost."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from batchworks import BatchRecord, BatchState, Callback, PostgresBackend
from tests.support.harness import Fleet, describe, pick, poll, record_figures, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(150, 900))]

MEMBERS = pick(1_000, 10_000)  # per batch
FAILING_EVERY = 97  # in the failing batch, every 97th member fails for good
GROW_CHUNKS = 10  # the growing batch gets its second half in this many adds
KILL_EVERY = pick(1.0, 2.0)  # seconds
WORKERS = ("w0", "w1", "w2")
DONE = Callback("done", {"report": "all"})
OK = Callback("ok", {"mail": "ops"})


def _members(rng: random.Random, count: int, *, failing: bool = False) -> list[dict[str, Any]]:
    payloads: list[dict[str, Any]] = []
    for i in range(count):
        spec: dict[str, Any] = {"ms": rng.randint(1, 5)}
        if failing and i % FAILING_EVERY == 0:
            spec["fail"] = "terminal"
        payloads.append(spec)
    return payloads


async def _member_states(ledger: Ledger, batch_id: int) -> dict[str, int]:
    rows = await ledger.pool.fetch(
        f'SELECT state, count(*) AS n FROM "{ledger.schema}".jobs WHERE batch_id = $1 '
        "GROUP BY state",
        batch_id,
    )
    return {row["state"]: row["n"] for row in rows}


async def _callback_jobs(ledger: Ledger, batch_id: int) -> dict[str, list[Any]]:
    rows = await ledger.pool.fetch(
        f'SELECT id, state, payload::text AS payload FROM "{ledger.schema}".jobs '
        "WHERE batch_id IS NULL AND payload ->> 'batch_id' = $1::text",
        str(batch_id),
    )
    found: dict[str, list[Any]] = {}
    for row in rows:
        which = "on_complete" if '"on_complete"' in row["payload"] else "on_success"
        found.setdefault(which, []).append(row)
    return found


async def _check_batch(ledger: Ledger, label: str, record: BatchRecord) -> list[int]:
    """The batch's counters against its members' states, and its callbacks' jobs: one
    ``on_complete``, one ``on_success`` if no member failed, none otherwise. Returns their ids."""
    states = await _member_states(ledger, record.id)
    assert record.total == sum(states.values()), (label, record, states)
    assert (record.succeeded, record.failed, record.cancelled) == (
        states.get("succeeded", 0),
        states.get("failed", 0),
        states.get("cancelled", 0),
    ), (label, record, states)
    assert (record.queued, record.running, record.state) == (0, 0, BatchState.FINISHED)
    callbacks = await _callback_jobs(ledger, record.id)
    assert [row["id"] for row in callbacks.get("on_complete", [])] == [record.complete_job]
    if record.failed:
        assert "on_success" not in callbacks and record.success_job is None, label
    else:
        assert [row["id"] for row in callbacks.get("on_success", [])] == [record.success_job]
    return [row["id"] for rows in callbacks.values() for row in rows]


async def test_batches_under_a_sigkill_loop_keep_exact_counters_and_callbacks_once(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    rng = random.Random(16)
    fleet.defaults = {
        "queues": ["q", "done", "ok"],
        "runner": {
            "concurrency": 20,
            "batch_size": 20,
            "heartbeat_interval": 0.5,
            "prune_after": 60.0,  # a killed worker's jobs come back through its restart
            "poll_interval": 0.5,
        },
    }
    for name in WORKERS:
        await fleet.start(name)

    plain = await pg_backend.enqueue_batch(
        "q", _members(rng, MEMBERS), on_complete=DONE, on_success=OK, name="plain"
    )
    failing_payloads = _members(rng, MEMBERS, failing=True)
    failing = await pg_backend.enqueue_batch(
        "q", failing_payloads, on_complete=DONE, on_success=OK, name="failing"
    )
    growing = await pg_backend.enqueue_batch(
        "q",
        _members(rng, MEMBERS // 2),
        on_complete=DONE,
        on_success=OK,
        name="growing",
        close=False,
    )
    ledger.expect(plain.job_ids)
    ledger.expect(growing.job_ids)
    for job_id, spec in zip(failing.job_ids, failing_payloads, strict=True):
        ledger.expect([job_id], failed="fail" in spec)
    to_add = MEMBERS - MEMBERS // 2
    chunk = -(-to_add // GROW_CHUNKS)

    loop = asyncio.get_running_loop()
    began = loop.time()
    restarts: list[float] = []
    kills = 0
    added = 0
    while added < to_add or not await ledger.drained():
        await asyncio.sleep(KILL_EVERY)
        if added < to_add:  # members added while the batch runs, and workers die
            more = await pg_backend.add_to_batch(
                growing.id, _members(rng, min(chunk, to_add - added))
            )
            ledger.expect(more.job_ids)
            added += len(more.job_ids)
            if added >= to_add:
                closed = await pg_backend.close_batch(growing.id)
                assert closed.state in (BatchState.CLOSED, BatchState.FINISHED)
        elif await ledger.drained():
            break
        name = rng.choice(WORKERS)
        killed_at = loop.time()
        await fleet.kill(name)
        kills += 1
        await fleet.start(name)
        restarts.append(loop.time() - killed_at)
    elapsed = loop.time() - began

    batches = {"plain": plain.id, "failing": failing.id, "growing": growing.id}
    records = {}
    for label, batch_id in batches.items():
        async with asyncio.timeout(60):  # a hang net: the last members ended already
            records[label] = await pg_backend.wait_batch(batch_id)

    # The callbacks' jobs run like any other (their workers are killed no more): wait for them.
    async def callbacks_ran() -> bool:
        for batch_id in batches.values():
            for rows in (await _callback_jobs(ledger, batch_id)).values():
                if any(row["state"] != "succeeded" for row in rows):
                    return False
        return True

    await poll(callbacks_ran, within=60, every=0.1, what="the batches' callbacks to run")
    callback_ids = []
    for label, record in records.items():
        callback_ids += await _check_batch(ledger, label, record)
    assert records["failing"].failed == len(range(0, MEMBERS, FAILING_EVERY))
    assert records["growing"].total == MEMBERS
    ledger.expect(callback_ids)

    verdict = await settle_and_judge(ledger, fleet, within=60)
    record_figures(
        "batches under the kill -9 loop",
        **verdict.figures(),
        batches=len(batches),
        members=sum(r.total for r in records.values()),
        callbacks=len(callback_ids),
        kills=kills,
        restart=describe(restarts),
        elapsed=f"{elapsed:.1f} s",
    )
    verdict.assert_ok()
    assert kills >= pick(3, 4), f"only {kills} kills happened while the batches ran"
