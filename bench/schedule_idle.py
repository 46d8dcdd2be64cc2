"""Schedule idle cost: the statements an idle runner sends PostgreSQL per minute, with and
without schedules (#15).

Three runners run side by side on schemas of their own, with no job to do, for ``--seconds``
(default 60) after they are ready, at the default settings (``poll_interval`` 1 s,
``heartbeat_interval`` 5 s):

- none: no schedule (the reference: polls for jobs, heartbeats, prunes);
- per minute: one schedule ``* * * * *``;
- per second: one schedule ``* * * * * *`` (not idle: one tick a second, to check one
  statement per due tick).

Every statement goes through the backend's one query helper, which a subclass counts by the
name of the statement in ``batchworks/backends/postgres/queries.py``. The LISTEN connection's
own traffic (its LISTEN and the NOTIFYs it receives) is not a statement of the pool and is
not counted. Exits non-zero only if the per-second runner enqueued no tick.

Usage::

    .venv/bin/python bench/schedule_idle.py             # 60 s
    .venv/bin/python bench/schedule_idle.py --quick     # 3 s (CI)
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from typing import Any

from _common import RESULTS, dsn_of, parser, ratio_line, run, scratch_schema, write_json

from batchworks import Job, PostgresBackend, Runner, Schedule
from batchworks.backends.postgres.backend import STATEMENTS

MODES = {"none": None, "per minute": "* * * * *", "per second": "* * * * * *"}


class CountingBackend(PostgresBackend):
    """The real backend; counts each statement sent, by its name in queries.py."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counting = False
        self.counts: collections.Counter[str] = collections.Counter()
        self._names = {getattr(self._q, name): name for name in STATEMENTS}

    async def _fetch(self, query: str, *args: Any, connection: Any = None) -> Any:
        if self.counting:
            self.counts[self._names.get(query, "other")] += 1
        return await super()._fetch(query, *args, connection=connection)


async def idle(dsn: str, mode: str, cron: str | None, seconds: float) -> dict[str, Any]:
    async with scratch_schema(dsn, f"bench_idle_{mode.replace(' ', '_')}") as schema:
        async with CountingBackend(dsn, schema=schema) as backend:
            await backend.migrate()

            async def handler(job: Job) -> None: ...

            schedules = [Schedule("tick", cron, "q", missed="all")] if cron else None
            async with Runner(backend, {"q": handler}, schedules=schedules):
                await asyncio.sleep(1.0)  # the scheduler's start (its puts) is not idle cost
                backend.counting = True
                began = time.monotonic()
                await asyncio.sleep(seconds)
                backend.counting = False
                elapsed = time.monotonic() - began
            ticks = sum(1 for record in await backend.list_jobs(limit=10_000) if record.schedule)
    per_minute = {name: n * 60 / elapsed for name, n in sorted(backend.counts.items())}
    return {"per_minute": per_minute, "total": sum(per_minute.values()), "ticks": ticks}


async def main() -> None:
    args_parser = parser(__doc__)
    args_parser.add_argument("--seconds", type=float, default=60.0, help="idle time measured")
    args = args_parser.parse_args()
    dsn = dsn_of(args)
    seconds = 3.0 if args.quick else args.seconds
    results = await asyncio.gather(
        *(idle(dsn, mode, cron, seconds) for mode, cron in MODES.items())
    )
    figures = dict(zip(MODES, results, strict=True))
    for mode, result in figures.items():
        detail = ", ".join(f"{name} {n:.1f}" for name, n in result["per_minute"].items())
        print(
            f"{mode:>10}: {result['total']:6.1f} statements/min ({detail}); ticks {result['ticks']}"
        )
    extra = figures["per minute"]["total"] - figures["none"]["total"]
    print(f"a per-minute schedule adds {extra:.1f} statements/min to an idle runner")
    print(
        ratio_line(
            "statements/min with a per-minute schedule vs none",
            figures["per minute"]["total"],
            figures["none"]["total"],
        )
    )
    write_json(
        args.json or (None if args.quick else RESULTS / "schedule_idle.json"),
        "schedule_idle",
        figures,
    )
    if figures["per second"]["ticks"] == 0:
        sys.exit("error: the per-second schedule enqueued no tick")


if __name__ == "__main__":
    run(main())
