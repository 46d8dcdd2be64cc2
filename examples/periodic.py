"""Periodic jobs: two runners carry the same schedules, and each tick becomes one job.

What it shows:

- ``Schedule(name, cron, queue, payload, timezone=..., missed=...)`` and
  ``Runner(..., schedules=[...])``: any number of runners, on any hosts, may carry the same
  schedules; there is no leader, and a tick is enqueued once however many runners race for it;
- a 6-field cron expression (seconds first) for a tick every second, and a nightly one read
  in Europe/Berlin time (the DST rule: see README, Periodic jobs);
- the handler sees ``job.schedule`` and ``job.scheduled_for`` (the tick, not the enqueue time).

Two runners (standing for two hosts) run for about four seconds. On PostgreSQL
(``BATCHWORKS_DSN`` set) they share a schema of their own; otherwise one in-memory backend.
Run it from the repository root::

    .venv/bin/python examples/periodic.py
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Awaitable, Callable
from datetime import datetime

from batchworks import Backend, Job, MemoryBackend, PostgresBackend, Runner, Schedule

SCHEMA = "batchworks_periodic_example"
RUN_FOR = 4.0  # seconds

ticks: collections.Counter[datetime] = collections.Counter()
ran_on: collections.Counter[str] = collections.Counter()

every_second = Schedule("heartbeat-report", "* * * * * *", "reports", {"kind": "tick"})
nightly = Schedule(
    "nightly-cleanup", "30 2 * * *", "maintenance", timezone="Europe/Berlin", missed="once"
)


def make_handler(host: str) -> Callable[[Job], Awaitable[None]]:
    async def handle(job: Job) -> None:
        assert job.scheduled_for is not None
        ticks[job.scheduled_for] += 1
        ran_on[host] += 1

    return handle


async def main() -> None:
    dsn = os.environ.get("BATCHWORKS_DSN")
    backend: Backend = PostgresBackend(dsn, schema=SCHEMA) if dsn else MemoryBackend()
    async with backend:
        await backend.migrate()
        runners = [
            Runner(
                backend,
                {"reports": make_handler(host), "maintenance": make_handler(host)},
                worker_name=host,
                schedules=[every_second, nightly],
            )
            for host in ("host-a", "host-b")
        ]
        async with runners[0], runners[1]:
            await asyncio.sleep(RUN_FOR)
        for state in (await backend.schedules()).schedules:
            print(f"{state.name}: next tick {state.next_tick.isoformat()}, skipped {state.skipped}")
        if dsn:
            await backend.remove_schedule(every_second.name)
            await backend.remove_schedule(nightly.name)
    twice = [tick for tick, n in ticks.items() if n > 1]
    print(f"jobs run by host: {dict(sorted(ran_on.items()))}")
    print(f"ticks: {sum(ticks.values())} jobs for {len(ticks)} ticks, {len(twice)} ticks twice")
    if twice or not ticks:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
