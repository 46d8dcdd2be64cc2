"""Flow control: limits that hold across every runner, a per-key limit, a rate and a pause.

What it shows:

- ``backend.configure_queue("exports", concurrency=3)``: at most 3 exports at once across
  every runner (two here, standing for two hosts, each able to run 10 jobs at once);
- ``configure_queue("sync", key_concurrency=1)`` with ``enqueue(..., concurrency_key=...)``:
  one job per customer at a time, customers in parallel;
- ``configure_queue("crm", rate=(5, 1.0))``: at most 5 starts in any second;
- ``pause_queue("emails")`` / ``resume_queue``: nothing starts while paused (``run_until_empty``
  returns with its jobs queued), then it drains;
- ``backend.queues()``: each queue's settings and use, what ``batchworks queues`` prints.

On PostgreSQL (``BATCHWORKS_DSN`` set) the runners share a schema of their own; otherwise one
in-memory backend. Run it from the repository root::

    .venv/bin/python examples/flow_control.py
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import Awaitable, Callable

from batchworks import Backend, Job, MemoryBackend, PostgresBackend, Runner

SCHEMA = os.environ.get("BATCHWORKS_SCHEMA", "batchworks_flow_example")

running: collections.Counter[str] = collections.Counter()
most: collections.Counter[str] = collections.Counter()
starts: dict[str, list[float]] = collections.defaultdict(list)
emails_while_paused = 0
paused = True


def track(queue: str, seconds: float) -> Callable[[Job], Awaitable[None]]:
    async def handle(job: Job) -> None:
        global emails_while_paused
        key = f"{queue}:{job.payload.get('customer', '')}"
        running[queue] += 1
        running[key] += 1
        most[queue] = max(most[queue], running[queue])
        most[key] = max(most[key], running[key])
        starts[queue].append(time.monotonic())
        if queue == "emails" and paused:
            emails_while_paused += 1
        try:
            await asyncio.sleep(seconds)
        finally:
            running[queue] -= 1
            running[key] -= 1

    return handle


def most_per_second(times: list[float]) -> int:
    times = sorted(times)
    return max(
        (sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times)), default=0
    )


async def main() -> None:
    global paused
    dsn = os.environ.get("BATCHWORKS_DSN")
    backend: Backend = PostgresBackend(dsn, schema=SCHEMA) if dsn else MemoryBackend()
    async with backend:
        await backend.migrate()
        await backend.configure_queue("exports", concurrency=3)
        await backend.configure_queue("sync", key_concurrency=1)
        await backend.configure_queue("crm", rate=(5, 1.0))
        await backend.pause_queue("emails")
        await backend.enqueue_many("exports", [{}] * 12)
        customers = [f"customer:{i % 4}" for i in range(16)]
        await backend.enqueue_many(
            "sync", [{"customer": c} for c in customers], concurrency_keys=customers
        )
        await backend.enqueue_many("crm", [{}] * 10)
        await backend.enqueue_many("emails", [{}] * 5)
        handlers = {
            "exports": track("exports", 0.05),
            "sync": track("sync", 0.02),
            "crm": track("crm", 0.0),
            "emails": track("emails", 0.0),
        }

        def runner(host: str) -> Runner:
            return Runner(backend, handlers, worker_name=host, concurrency=10, poll_interval=0.1)

        # Two runners until nothing is due: a paused queue's jobs are not, so they return
        # with the emails still queued.
        await asyncio.gather(runner("host-a").run_until_empty(), runner("host-b").run_until_empty())
        for queue in await backend.queues():
            print(
                f"{queue.name}: paused={queue.paused} running={queue.running} "
                f"queued={queue.queued} held back={dict(queue.held_back)}"
            )
        paused = False
        await backend.resume_queue("emails")
        await runner("host-a").run_until_empty()
        if dsn:
            for name in ("exports", "sync", "crm", "emails"):
                await backend.configure_queue(name)
    per_customer = max(v for k, v in most.items() if k.startswith("sync:customer"))
    print(f"exports: at most {most['exports']} at once across 2 runners (limit 3)")
    print(f"sync: at most {per_customer} per customer at once (limit 1), {most['sync']} in all")
    print(f"crm: at most {most_per_second(starts['crm'])} starts in any second (limit 5)")
    print(f"emails: {emails_while_paused} started while paused, {len(starts['emails'])} after")
    if most["exports"] > 3 or per_customer > 1 or emails_while_paused:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
