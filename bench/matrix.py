"""Drain throughput across batch size, concurrency and worker processes, with the chart.

The drain of ``drain.py`` (N no-op jobs queued beforehand, drained to empty by worker processes
started before the clock), repeated over:

- batch_size 1, 10, 100, 500 x concurrency 1, 10, 100 for batchworks, one worker process;
- the raw asyncpg floor and PgQueuer (5 consumers) at each batch size (the floor runs a whole
  batch at once, PgQueuer has no concurrency limit by default);
- Procrastinate at each concurrency (it claims one job at a time: no batch size), on fewer jobs
  (``--peer-jobs``) because it is about 50 times slower;
- 1, 2 and 4 worker processes at batch_size 100, concurrency 100, for batchworks, the floor and
  PgQueuer.

Each cell is the best of ``--rounds`` drains, systems alternating. Prints a table, the ratio of
batchworks (at concurrency 100) to the floor and PgQueuer at each batch size and process count,
and in a full run writes ``results/matrix.json`` and the chart ``throughput_by_batch_size.png``
(needs matplotlib, from the ``bench`` extra). Exits non-zero only if a job did not run.

Usage::

    .venv/bin/python bench/matrix.py              # 30,000 jobs a cell, best of 2
    .venv/bin/python bench/matrix.py --quick      # 300 jobs a cell, a reduced grid (CI)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from _common import (
    BENCH,
    RESULTS,
    describe_machine,
    dsn_of,
    installed,
    loop_name,
    parser,
    rate,
    ratio_line,
    run,
    write_json,
)
from _systems import NotAllRun, PgQueuer, System, drain_once, open_systems

BATCH_SIZES = (1, 10, 100, 500)
CONCURRENCIES = (1, 10, 100)
PROCESSES = (1, 2, 4)
CHART = BENCH / "throughput_by_batch_size.png"

Cell = tuple[str, int, int, int]  # system, batch_size, concurrency, processes


@dataclass(slots=True)
class Grid:
    jobs: int
    peer_jobs: int
    rounds: int
    batch_sizes: tuple[int, ...]
    concurrencies: tuple[int, ...]
    processes: tuple[int, ...]
    use_uvloop: bool
    best: dict[Cell, float] = field(default_factory=dict)

    async def measure(self, system: System, count: int, b: int, c: int, p: int) -> None:
        cell = (system.name, b, c, p)
        if cell in self.best:
            return  # measured already (P=1 at B=100 is also a cell of the batch-size sweep)
        for _ in range(self.rounds):
            drain = await drain_once(
                system, count, processes=p, batch_size=b, concurrency=c, use_uvloop=self.use_uvloop
            )
            self.best[cell] = max(self.best.get(cell, 0.0), drain.rate)
        print(f"  {system.name:<14} B={b:<4} C={c:<4} P={p}: {rate(self.best[cell])}", flush=True)

    async def sweep(self, systems: dict[str, System]) -> None:
        for b in self.batch_sizes:
            if "floor" in systems:
                await self.measure(systems["floor"], self.jobs, b, b, 1)
            for c in self.concurrencies:
                await self.measure(systems["batchworks"], self.jobs, b, c, 1)
            if "pgqueuer" in systems:
                await self.measure(systems["pgqueuer"], self.jobs, b, 0, 1)
        if "procrastinate" in systems:
            for c in self.concurrencies:
                await self.measure(systems["procrastinate"], self.peer_jobs, 1, c, 1)
        for p in self.processes:
            for name in ("floor", "batchworks", "pgqueuer"):
                if name in systems:
                    c = 0 if name == "pgqueuer" else 100
                    await self.measure(systems[name], self.jobs, 100, c, p)


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--jobs", type=int, default=30_000, help="jobs per drain")
    parse.add_argument("--peer-jobs", type=int, default=3_000, help="jobs per Procrastinate drain")
    parse.add_argument("--rounds", type=int, default=2, help="drains per cell; best counts")
    args = parse.parse_args()
    dsn = dsn_of(args)
    if args.quick:
        grid = Grid(300, 100, 1, (1, 100), (1, 100), (1, 2), args.uvloop)
    else:
        grid = Grid(
            args.jobs,
            args.peer_jobs,
            args.rounds,
            BATCH_SIZES,
            CONCURRENCIES,
            PROCESSES,
            args.uvloop,
        )
    print(await describe_machine(dsn, args.uvloop))
    print(
        f"matrix: {grid.jobs:,} no-op jobs a drain ({grid.peer_jobs:,} for procrastinate), "
        f"best of {grid.rounds}, loop {loop_name(args.uvloop)}"
    )
    PgQueuer.consumers = 5
    try:
        names = ("floor", "batchworks", "pgqueuer", "procrastinate")
        async with open_systems(dsn, "matrix", names) as systems:
            await grid.sweep(systems)
    except NotAllRun as exc:
        print(f"error: not every job ran: {exc}", file=sys.stderr)
        return 1
    best = grid.best
    report(best, grid.batch_sizes, grid.concurrencies, grid.processes)
    if not args.quick:
        figures: dict[str, Any] = {
            "jobs": grid.jobs,
            "peer_jobs": grid.peer_jobs,
            "loop": loop_name(args.uvloop),
            "cells": [
                {"system": s, "batch_size": b, "concurrency": c, "processes": p, "rate": v}
                for (s, b, c, p), v in sorted(best.items())
            ],
        }
        write_json(args.json or RESULTS / "matrix.json", "matrix", figures)
        chart(best, grid.batch_sizes)
    return 0


def report(
    best: dict[Cell, float],
    batch_sizes: tuple[int, ...],
    concurrencies: tuple[int, ...],
    processes: tuple[int, ...],
) -> None:
    print("\nbatchworks, 1 process (jobs/s): rows batch_size, columns concurrency")
    print("  B \\ C " + "".join(f"{c:>12}" for c in concurrencies))
    for b in batch_sizes:
        cells = [best.get(("batchworks", b, c, 1)) for c in concurrencies]
        print(f"  {b:>6} " + "".join(f"{v:>12,.0f}" if v else f"{'-':>12}" for v in cells))
    top = max(concurrencies)
    for b in batch_sizes:
        ours = best.get(("batchworks", b, top, 1))
        for peer, c in (("floor", b), ("pgqueuer", 0)):
            theirs = best.get((peer, b, c, 1))
            if ours and theirs:
                print(ratio_line(f"batchworks/{peer} B={b} C={top}", ours, theirs))
    peers = {k: v for k, v in best.items() if k[0] == "procrastinate"}
    for (_, _, c, _), value in sorted(peers.items()):
        ours = best.get(("batchworks", 100, c, 1))
        if ours:
            print(ratio_line(f"batchworks B=100/procrastinate C={c}", ours, value))
    for p in processes:
        ours = best.get(("batchworks", 100, 100, p))
        for peer, c in (("floor", 100), ("pgqueuer", 0)):
            theirs = best.get((peer, 100, c, p))
            if ours and theirs:
                print(ratio_line(f"batchworks/{peer} B=100 P={p}", ours, theirs))


def chart(best: dict[Cell, float], batch_sizes: tuple[int, ...]) -> None:
    if not installed("matplotlib"):
        print("matplotlib not installed: no chart (pip install -e '.[bench]')")
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    series = [
        ("floor (raw asyncpg)", "floor", None, "k--"),
        ("batchworks C=100", "batchworks", 100, "C0-o"),
        ("batchworks C=10", "batchworks", 10, "C0:s"),
        ("PgQueuer (5 consumers)", "pgqueuer", 0, "C1-^"),
    ]
    for label, system, c, style in series:
        xs = [b for b in batch_sizes if best.get((system, b, b if c is None else c, 1))]
        ys = [best[(system, b, b if c is None else c, 1)] for b in xs]
        if xs:
            ax.plot(xs, ys, style, label=label)
    procrastinate = best.get(("procrastinate", 1, 100, 1))
    if procrastinate:
        ax.axhline(procrastinate, color="C3", linestyle="-.", label="Procrastinate C=100")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
    ax.set_xlabel("batch size (jobs claimed per round trip)")
    ax.set_ylabel("drain throughput, no-op jobs/s (log)")
    ax.set_title("Drain throughput by batch size, 1 worker process, 2 cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(CHART)
    print(f"chart: {CHART.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    sys.exit(run(main()))
