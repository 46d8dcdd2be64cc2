"""Scenario 19: flow control holds across a fleet under faults (#14). Four worker processes
serve a queue limited by ``concurrency`` and ``key_concurrency``, a rate-limited queue and a
paused one, while one of them is killed with ``kill -9`` (and restarted) in a loop and one is
SIGSTOPped past its prune period. From the slots every claim opened and its settle, its
recovery or its worker's handover closed (tests/support/slots.py: the spans of valid leases,
cut short where a worker handed the slot of an ended job to a claim of its own), the jobs
running at once per queue and per key never exceed the limits, no rate window holds more than
``n`` starts,
the paused queue starts nothing until resumed and then drains, and the ledger finds nothing
lost."""

from __future__ import annotations

import asyncio
import random
import signal

import pytest

from batchworks import PostgresBackend
from tests.support import slots
from tests.support.harness import Fleet, pick, poll, record_figures, settle_and_judge
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(150, 600))]

LIMITED_JOBS = pick(1200, 6000)
RATED_JOBS = pick(50, 300)
PAUSED_JOBS = pick(100, 500)
CONCURRENCY, KEY_CONCURRENCY, KEYS = 6, 1, 10
RATE = (10, 1.0)  # at most 10 starts in any second
FAULTS_FOR = pick(10.0, 40.0)  # seconds of faults before the paused queue is resumed
KILL_EVERY = pick(1.0, 1.5)  # seconds
PRUNE_AFTER = 2.0  # seconds: a SIGSTOPped worker's jobs move on after this
STOPPED_FOR = 3 * PRUNE_AFTER  # seconds under SIGSTOP
WORKERS = ("w0", "w1", "w2", "w3")


async def test_limits_hold_across_workers_under_kills_and_stops(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet
) -> None:
    rng = random.Random(14)
    await slots.install(ledger.pool, ledger.schema)
    await pg_backend.configure_queue("q", concurrency=CONCURRENCY, key_concurrency=KEY_CONCURRENCY)
    await pg_backend.configure_queue("r", rate=RATE)
    await pg_backend.pause_queue("p")
    fleet.defaults = {
        "queues": ["q", "r", "p"],
        "audit_handovers": True,
        "runner": {
            "concurrency": 4,
            "batch_size": 4,
            "heartbeat_interval": 0.25,
            "prune_after": PRUNE_AFTER,
            "poll_interval": 0.5,
        },
    }
    for name in WORKERS:
        await fleet.start(name)
    keys = [f"k{rng.randrange(KEYS)}" for _ in range(LIMITED_JOBS)]
    ledger.expect(
        await pg_backend.enqueue_many(
            "q", [{"ms": rng.randint(5, 40)} for _ in keys], concurrency_keys=keys
        )
    )
    ledger.expect(await pg_backend.enqueue_many("r", [{"ms": 5}] * RATED_JOBS))
    ledger.expect(await pg_backend.enqueue_many("p", [{"ms": 5}] * PAUSED_JOBS))

    loop = asyncio.get_running_loop()
    began = loop.time()
    sleeper = "w3"
    stop_at, cont_at = began + 1.0, began + 1.0 + STOPPED_FOR
    stopped = False
    kills = 0
    while loop.time() - began < FAULTS_FOR:
        await asyncio.sleep(KILL_EVERY)
        now = loop.time()
        if not stopped and now >= stop_at:
            fleet.current[sleeper].send(signal.SIGSTOP)
            await ledger.fault(fleet.current[sleeper].pid, "sigstop")
            stopped = True
        elif stopped and now >= cont_at and cont_at > 0:
            fleet.current[sleeper].send(signal.SIGCONT)
            cont_at = 0.0
        victim = rng.choice([name for name in WORKERS if name != sleeper])
        await fleet.kill(victim)
        kills += 1
        await fleet.start(victim)
    if cont_at:
        fleet.current[sleeper].send(signal.SIGCONT)

    opened = [slot for slot in await slots.read(ledger.pool, ledger.schema) if slot.queue == "p"]
    assert opened == [], f"the paused queue started {len(opened)} jobs"
    await pg_backend.resume_queue("p")
    resumed_at = loop.time()
    await poll(
        lambda: _none_left(ledger, "p"), within=60, every=0.1, what="the resumed queue to drain"
    )
    drained_in = loop.time() - resumed_at
    verdict = await settle_and_judge(ledger, fleet, within=120)

    held = await slots.read(ledger.pool, ledger.schema)
    assert all(slot.ended is not None for slot in held), "a lease was left open"
    per_queue = slots.most_at_once((s.queue, s.began, s.freed) for s in held)
    per_key = slots.most_at_once(((s.queue, s.key), s.began, s.freed) for s in held)
    rated = slots.most_in_window([s.began for s in held if s.queue == "r"], RATE[1])
    effects = list(
        await ledger.pool.fetch(f'SELECT * FROM "{ledger.schema}".effects WHERE outcome = $1', "ok")
    )
    spans, past_lease = slots.clipped(held, effects)
    handlers = slots.most_at_once(spans)
    record_figures(
        "19 flow limits under kill -9 and SIGSTOP",
        **verdict.figures(),
        kills=kills,
        most_running_q=per_queue.get("q"),
        handed_over=sum(1 for s in held if s.handed is not None),
        most_per_key=max(v for (queue, _), v in per_key.items() if queue == "q"),
        most_starts_in_a_rate_window=rated,
        handlers_at_once_q=handlers.get("q"),
        ran_past_lease=past_lease,
        resumed_drained_in=f"{drained_in:.1f} s",
    )
    verdict.assert_ok()
    assert per_queue["q"] <= CONCURRENCY, per_queue
    assert per_queue["q"] == CONCURRENCY, "the limit never filled: the test proves nothing"
    assert any(s.handed is not None for s in held), "no slot was handed over: nothing tested"
    assert all(v <= KEY_CONCURRENCY for (queue, _), v in per_key.items() if queue == "q")
    assert rated <= RATE[0], f"{rated} starts within {RATE[1]} s (rate {RATE})"
    assert rated == RATE[0], "the rate never filled a window: the test proves nothing"
    assert handlers.get("q", 0) <= CONCURRENCY
    assert kills >= pick(5, 15), f"only {kills} kills happened"
    assert stopped


async def _none_left(ledger: Ledger, queue: str) -> bool:
    return await ledger.count("queue = $1 AND state IN ('queued', 'running')", queue) == 0
