"""The flow-control gauges (#14): a runner with a meter provider installed reports, per
queue it serves, the due jobs held back by each kind of limit and the slots in use."""

from __future__ import annotations

import asyncio

from batchworks import Job, Runner
from batchworks.backends.base import Backend
from tests.conftest import eventually
from tests.unit.test_tracing import Otel, otel

__all__ = ["otel"]  # the fixture, shared with test_tracing


async def test_gauges_show_held_back_jobs_and_slots_in_use(backend: Backend, otel: Otel) -> None:
    release = asyncio.Event()

    async def handler(job: Job) -> None:
        await release.wait()

    await backend.pause_queue("p")
    await backend.enqueue_many("p", [1, 2])
    await backend.configure_queue("q", concurrency=1)
    await backend.enqueue_many("q", [1, 2, 3])
    runner = Runner(backend, {"p": handler, "q": handler}, heartbeat_interval=0.05, prune_after=5.0)

    def gauges() -> tuple[dict[tuple[str, str], int], dict[str, int]]:
        if otel.metrics.get_metrics_data() is None:  # nothing recorded yet
            return {}, {}
        held = {
            (p.attributes["messaging.destination.name"], p.attributes["batchworks.limit"]): p.value
            for p in otel.points("batchworks.queue.held_back")
        }
        slots = {
            p.attributes["messaging.destination.name"]: p.value
            for p in otel.points("batchworks.queue.slots_in_use")
        }
        return held, slots

    async with runner:
        await eventually(
            lambda: gauges()[0].get(("q", "concurrency")) == 2,
            what="the gauges to show the queue's held-back jobs",
        )
        held, slots = gauges()
        release.set()
    assert held[("p", "paused")] == 2 and held[("p", "concurrency")] == 0
    assert held[("q", "concurrency")] == 2 and held[("q", "rate")] == 0
    assert slots == {"p": 0, "q": 1}
