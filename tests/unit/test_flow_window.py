"""The rate window, exactly (#14), on the memory backend with a fake clock: ``rate=(n, s)``
allows a start at time t when fewer than n starts fall in (t - s, t]; so any half-open window
[t, t + s) holds at most n starts. The PostgreSQL claim keeps the same rule over the start times
it records under the queue's lock (``queues.rate_starts``); tests/support/slots.py checks it
across a fleet (chaos scenario 18), with ``most_in_window`` checked here too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from batchworks import MemoryBackend
from tests.support.calls import FakeClock, claim, succeeded
from tests.support.slots import most_in_window


async def test_a_start_leaves_the_window_exactly_s_seconds_later() -> None:
    clock = FakeClock()
    backend = MemoryBackend(clock=clock)
    await backend.configure_queue("q", rate=(3, 10.0))
    await backend.enqueue_many("q", list(range(20)))
    worker = await backend.register_worker("w", ["q"])

    started = []
    for at, expect in [(0.0, 2), (5.0, 1), (9.999, 0), (10.0, 2), (14.999, 0), (15.0, 1)]:
        clock.now = 1_000.0 + at
        asked = 2 if at == 0.0 else 10
        jobs = await claim(backend, worker, asked)
        assert len(jobs) == expect, f"at {at} s: {len(jobs)} started, {expect} expected"
        started += [clock.now] * len(jobs)
        await backend.settle(worker, [succeeded(job.id) for job in jobs])  # frees no start

    times = [datetime.fromtimestamp(t, UTC) for t in started]
    assert most_in_window(times, 10.0) == 3


def test_most_in_window_counts_a_half_open_window() -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    at = [base + timedelta(seconds=s) for s in (0, 1, 2, 10, 20)]
    assert most_in_window(at, 10.0) == 3  # [0, 10) holds 0, 1, 2; 10 is outside it
    assert most_in_window(at, 10.001) == 4
