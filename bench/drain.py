"""Drain throughput: N no-op jobs queued beforehand, one worker process drains them to empty.

Side by side in one run, on the same PostgreSQL server, the same N, the same batch size:

- floor: raw asyncpg, the least PostgreSQL and asyncpg allow (see ``_workers.py``): claim B rows
  with FOR UPDATE SKIP LOCKED, run a no-op per row with asyncio.gather, settle the batch with one
  UPDATE ... WHERE id = ANY($1), on one connection;
- batchworks: Runner(concurrency=C, batch_size=B).run_until_empty() on a PostgresBackend;
- pgqueuer: PgQueuer in drain mode, batch_size=B, 5 consumers in the process (each on its own
  connection: the set-up of PgQueuer's own benchmark, and its best here);
- procrastinate: App.run_worker_async(concurrency=C, wait=False), one round: it is slow, and
  slows down as its backlog grows, so its drain stops after 120 s and its rate is over the jobs
  it ran by then.

Each worker is a real process, started and connected before the clock starts; the clock runs
from "go" to the queue being empty. Systems alternate, round after round, and the best round of
each counts. No ANALYZE runs between the enqueue and the drain (autovacuum is off on this
server; elsewhere it runs a minute or more later), unless ``--analyze``. The whole set runs on
asyncio's loop, then again on uvloop when it is installed (the peers too), and the ratios
compare like with like. Exits non-zero only if a job did not run.

Usage::

    .venv/bin/python bench/drain.py                 # 50,000 jobs, 3 rounds, asyncio + uvloop
    .venv/bin/python bench/drain.py --quick         # 2,000 jobs, one round, asyncio (CI)
    .venv/bin/python bench/drain.py --jobs 100000 --batch-size 500 --no-uvloop
"""

from __future__ import annotations

import sys
from typing import Any

from _common import (
    RESULTS,
    describe_machine,
    dsn_of,
    loop_name,
    parser,
    rate,
    ratio_line,
    run,
    uvloop_installed,
    write_json,
)
from _systems import NotAllRun, PgQueuer, drain_once, open_systems

ORDER = ("floor", "batchworks", "pgqueuer", "procrastinate")
TARGETS = {"floor": ">= 0.7", "pgqueuer": ">= 3", "procrastinate": ">= 30"}
PGQUEUER_CONSUMERS = 5


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--jobs", type=int, default=50_000, help="jobs per drain")
    parse.add_argument("--rounds", type=int, default=3, help="rounds per system; best counts")
    parse.add_argument("--batch-size", type=int, default=100)
    parse.add_argument("--concurrency", type=int, default=100)
    parse.add_argument("--no-uvloop", action="store_true", help="asyncio's loop only")
    parse.add_argument("--only", default=",".join(ORDER), help="systems, comma-separated")
    parse.add_argument(
        "--analyze",
        action="store_true",
        help="ANALYZE every system's tables after the enqueue (as autovacuum would, in time)",
    )
    args = parse.parse_args()
    dsn = dsn_of(args)
    jobs, rounds = (2_000, 1) if args.quick else (args.jobs, args.rounds)
    loops = [False]
    if not args.quick and not args.no_uvloop and uvloop_installed():
        loops.append(True)
    print(await describe_machine(dsn, False))
    print(
        f"drain: {jobs:,} no-op jobs, 1 worker process, batch_size {args.batch_size}, "
        f"concurrency {args.concurrency}, best of {rounds}, "
        f"{'ANALYZE after enqueue' if args.analyze else 'no ANALYZE after enqueue'}; loops: "
        + ", ".join(loop_name(u) for u in loops)
    )
    PgQueuer.consumers = PGQUEUER_CONSUMERS
    best: dict[tuple[str, bool], float] = {}
    try:
        async with open_systems(dsn, "drain", args.only.split(",")) as systems:
            for use_uvloop in loops:
                for round_ in range(1, rounds + 1):
                    for name, system in systems.items():
                        if name == "procrastinate" and round_ > 1:
                            continue
                        drain = await drain_once(
                            system,
                            jobs,
                            batch_size=args.batch_size,
                            concurrency=args.concurrency,
                            use_uvloop=use_uvloop,
                            analyze=args.analyze,
                        )
                        key = (name, use_uvloop)
                        best[key] = max(best.get(key, 0.0), drain.rate)
                        cut = f"; stopped, {drain.jobs:,} ran" if drain.jobs != jobs else ""
                        print(
                            f"  {loop_name(use_uvloop)} round {round_}: {name:<14}"
                            f"{rate(drain.rate)}  ({drain.seconds:.2f}s{cut})",
                            flush=True,
                        )
    except NotAllRun as exc:
        print(f"error: not every job ran: {exc}", file=sys.stderr)
        return 1
    report(best, loops)
    if not args.quick:
        figures: dict[str, Any] = {
            "jobs": jobs,
            "batch_size": args.batch_size,
            "concurrency": args.concurrency,
            "analyze": args.analyze,
            "rates": {f"{name}/{loop_name(u)}": value for (name, u), value in best.items()},
        }
        default = RESULTS / ("drain-analyze.json" if args.analyze else "drain.json")
        write_json(args.json or default, "drain", figures)
    return 0


def report(best: dict[tuple[str, bool], float], loops: list[bool]) -> None:
    for use_uvloop in loops:
        loop = loop_name(use_uvloop)
        ours = best.get(("batchworks", use_uvloop))
        print(f"{loop}:")
        for name in ORDER:
            value = best.get((name, use_uvloop))
            if value is not None:
                print(f"  {name:<14}{rate(value)}")
        if ours is None:
            continue
        for name in ORDER:
            theirs = best.get((name, use_uvloop))
            if name != "batchworks" and theirs is not None:
                print(ratio_line(f"batchworks/{name} ({loop})", ours, theirs, TARGETS[name]))
    if len(loops) == 2 and ("batchworks", True) in best and ("batchworks", False) in best:
        gain = best[("batchworks", True)]
        print(ratio_line("batchworks uvloop/asyncio", gain, best[("batchworks", False)]))


if __name__ == "__main__":
    sys.exit(run(main()))
