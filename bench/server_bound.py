"""What bounds one PostgreSQL server: the drain rate with 1, 2 and 4 worker processes, and
where its time goes (issue #18, item 6; figures for docs/scaling.md).

For each process count, batchworks and the naive floor alternate (round after round, best
counts), each draining ``--jobs`` queued no-op jobs (B=100, C=100), as in ``drain.py``. Around
each drain the benchmark reads:

- the CPU time of the worker processes (``getrusage`` of its children, which have exited);
- the CPU time of PostgreSQL's processes (children of the postmaster, from ``/proc``: on a
  shared server this includes other sessions' work, so it is an upper bound);
- the WAL written (``pg_current_wal_insert_lsn()``, the whole server's: an upper bound too).

Per job that gives microseconds of worker CPU, of server CPU, and WAL bytes; against the wall
time and the machine's cores it says which of them is the bound. Ratio: batchworks over the
floor at each process count. Exits non-zero only if a job did not run.

Usage::

    .venv/bin/python bench/server_bound.py            # 30,000 jobs, 1/2/4 processes, best of 2
    .venv/bin/python bench/server_bound.py --quick    # 2,000 jobs, 1 process, one round (CI)
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

import asyncpg
from _common import (
    RESULTS,
    describe_machine,
    dsn_of,
    parser,
    ratio_line,
    run,
    run_workers,
    summarize,
    write_json,
)
from _systems import NotAllRun, System, open_systems

TICK = os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(postmaster: int) -> float:
    """CPU seconds used so far by the postmaster's children: those still running, and those
    that exited (the postmaster waited for them: its cutime and cstime)."""
    with open(f"/proc/{postmaster}/stat") as stat:
        own = stat.read().rsplit(")", 1)[1].split()
    total = int(own[13]) + int(own[14])  # cutime, cstime
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:  # ppid
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def _postmaster(data: str) -> int:
    with open(os.path.join(data, "postmaster.pid")) as pidfile:
        return int(pidfile.readline())


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--jobs", type=int, default=30_000)
    parse.add_argument("--rounds", type=int, default=2)
    parse.add_argument("--processes", default="1,2,4")
    args = parse.parse_args()
    dsn = dsn_of(args)
    jobs, rounds = (2_000, 1) if args.quick else (args.jobs, args.rounds)
    counts = [1] if args.quick else [int(n) for n in args.processes.split(",")]
    print(await describe_machine(dsn, args.uvloop))
    print(f"server_bound: {jobs:,} jobs a drain, B=100 C=100, {counts} processes, best of {rounds}")
    conn = await asyncpg.connect(dsn)
    try:
        data = await conn.fetchval("SHOW data_directory")
        postmaster = _postmaster(data)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"(server CPU not measured: {exc})")
        postmaster = -1
    best: dict[str, dict[str, Any]] = {}
    try:
        async with open_systems(dsn, "bound", ["floor", "batchworks"]) as systems:
            for _ in range(rounds):
                for processes in counts:
                    for name, system in systems.items():
                        got = await measure(system, conn, postmaster, jobs, processes, args)
                        key = f"{name} x{processes}"
                        if key not in best or got["rate"] > best[key]["rate"]:
                            best[key] = got
    except NotAllRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    cores = os.cpu_count() or 1
    for key, got in best.items():
        busy = (got["worker_us"] + got["server_us"]) * got["rate"] / 1e6
        print(
            f"  {key:<14} {got['rate']:>8,.0f} jobs/s  worker {got['worker_us']:5.1f} us/job  "
            f"server {got['server_us']:5.1f} us/job  WAL {got['wal_bytes']:6.0f} B/job "
            f"({got['wal_bytes'] * got['rate'] / 1e6:5.1f} MB/s)  CPU busy {busy:.2f} of {cores}"
        )
    for processes in counts:
        print(
            ratio_line(
                f"batchworks/floor x{processes}",
                best[f"batchworks x{processes}"]["rate"],
                best[f"floor x{processes}"]["rate"],
            )
        )
    if not args.quick:
        write_json(
            args.json or RESULTS / "server_bound.json", "server_bound", {"jobs": jobs, **best}
        )
    return 0


async def measure(
    system: System, conn: asyncpg.Connection, postmaster: int, jobs: int, processes: int, args: Any
) -> dict[str, float]:
    await system.prepare(jobs)
    lsn = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
    wal0, worker0 = await conn.fetchval(lsn), _children_cpu()
    server0 = _server_cpu(postmaster) if postmaster > 0 else 0.0
    commands = system.commands(processes, batch_size=100, concurrency=100, use_uvloop=args.uvloop)
    results, _ = await run_workers(commands, within=900.0)
    wal1, worker1 = await conn.fetchval(lsn), _children_cpu()
    server1 = _server_cpu(postmaster) if postmaster > 0 else 0.0
    drain = summarize(system.name, jobs, results)
    problem = await system.verify(drain)
    if problem is not None:
        raise NotAllRun(f"{system.name}: {problem}")
    return {
        "rate": drain.rate,
        "worker_us": (worker1 - worker0) / jobs * 1e6,
        "server_us": (server1 - server0) / jobs * 1e6,
        "wal_bytes": float(wal1 - wal0) / jobs,
    }


if __name__ == "__main__":
    sys.exit(run(main(), use_uvloop="--uvloop" in sys.argv))
