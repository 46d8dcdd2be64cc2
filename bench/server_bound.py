"""What bounds one PostgreSQL server: the drain rate with 1, 2 and 4 worker processes, and
where its time goes (issue #18, item 6; figures for docs/scaling.md).

For each process count, batchworks and the naive floor alternate (round after round, best
counts), each draining ``--jobs`` queued no-op jobs (B=100, C=100), as in ``drain.py``. Around
each drain the benchmark reads:

- the CPU time of the worker processes from "go" to the end of the drain, as each reports it
  (``worker``), and over their whole lives (``getrusage`` of its children, which have exited:
  ``+start``, their imports and connections on top, about 0.18 s for a batchworks worker and
  0.06 s for the floor's: 6 and 2 us a job of a drain of 30,000, which the figures before
  2026-12-06 counted in);
- the CPU time of PostgreSQL's processes (children of the postmaster, from ``/proc``: on a
  shared server this includes other sessions' work, so it is an upper bound);
- the WAL written (``pg_current_wal_insert_lsn()``, the whole server's: an upper bound too).

Per job that gives microseconds of worker CPU, of server CPU, and WAL bytes; against the wall
time and the machine's cores it says which of them is the bound. Ratio: batchworks over the
floor at each process count. Exits non-zero only if a job did not run.

``--statements`` also reads ``pg_stat_statements`` around each drain (reset before it), and
prints, for each system and process count (its best round), every statement the drain ran:
calls, rows, PostgreSQL's execution time per call, per row and per job, and shared buffers
hit or read per job. Statements are named after their constant in ``queries.py`` (nested ones,
run inside ``flow_pick``, are marked ``flow_pick:``). The extension must be preloaded
(``shared_preload_libraries``): the shared server here does not, so ``--statements`` without a
``--dsn`` of such a server starts a throwaway cluster of its own (initdb into a temporary
directory, autovacuum off as on the shared server, ``track_io_timing`` on) and drops it after.

Usage::

    .venv/bin/python bench/server_bound.py            # 30,000 jobs, 1/2/4 processes, best of 2
    .venv/bin/python bench/server_bound.py --quick    # 2,000 jobs, 1 process, one round (CI)
    .venv/bin/python bench/server_bound.py --processes 1 --statements   # + per statement
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import os
import pwd
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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
    parse.add_argument(
        "--statements",
        action="store_true",
        help="per statement figures from pg_stat_statements (a throwaway cluster unless --dsn)",
    )
    args = parse.parse_args()
    with contextlib.ExitStack() as stack:
        if args.statements and args.dsn is None:
            args.dsn = stack.enter_context(_stats_cluster())
            print(f"--statements: a throwaway cluster with pg_stat_statements at {args.dsn}")
        return await _main(args)


async def _main(args: Any) -> int:
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
    if args.statements and not await _statements_ready(conn):
        await conn.close()
        return 1
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
            f"  {key:<14} {got['rate']:>8,.0f} jobs/s  worker {got['worker_us']:5.1f} us/job "
            f"(+start {got['worker_life_us'] - got['worker_us']:4.1f})  "
            f"server {got['server_us']:5.1f} us/job  WAL {got['wal_bytes']:6.0f} B/job "
            f"({got['wal_bytes'] * got['rate'] / 1e6:5.1f} MB/s)  CPU busy {busy:.2f} of {cores}"
        )
    if args.statements:
        for key, got in best.items():
            print_statements(key, got["statements"], got["rate"])
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


async def _statements_ready(conn: asyncpg.Connection) -> bool:
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
    except asyncpg.PostgresError as exc:
        print(f"error: --statements needs pg_stat_statements preloaded: {exc}", file=sys.stderr)
        return False
    return True


async def measure(
    system: System, conn: asyncpg.Connection, postmaster: int, jobs: int, processes: int, args: Any
) -> dict[str, float]:
    await system.prepare(jobs)
    lsn = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"
    wal0, worker0 = await conn.fetchval(lsn), _children_cpu()
    server0 = _server_cpu(postmaster) if postmaster > 0 else 0.0
    if args.statements:
        await conn.execute("SELECT pg_stat_statements_reset()")
    commands = system.commands(processes, batch_size=100, concurrency=100, use_uvloop=args.uvloop)
    results, _ = await run_workers(commands, within=900.0)
    wal1, worker1 = await conn.fetchval(lsn), _children_cpu()
    statements = await read_statements(conn, system.schema, jobs) if args.statements else []
    server1 = _server_cpu(postmaster) if postmaster > 0 else 0.0
    drain = summarize(system.name, jobs, results)
    problem = await system.verify(drain)
    if problem is not None:
        raise NotAllRun(f"{system.name}: {problem}")
    return {
        "rate": drain.rate,
        "worker_us": sum(r.extra["cpu"] for r in results) / jobs * 1e6,
        "worker_life_us": (worker1 - worker0) / jobs * 1e6,
        "server_us": (server1 - server0) / jobs * 1e6,
        "wal_bytes": float(wal1 - wal0) / jobs,
        "statements": statements,
    }


STATEMENTS = """
SELECT query, toplevel, calls, rows, total_exec_time, shared_blks_hit, shared_blks_read,
       shared_blks_dirtied, wal_records, wal_bytes
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND strpos(query, $1) > 0 AND calls > 0
ORDER BY total_exec_time DESC
"""


def _shape(sql: str, schema: str = "") -> str:
    """A statement's text with what differs between queries.py and pg_stat_statements taken
    out: the schema, placeholders, literals (the channels, which pg_stat_statements replaces
    by $n), whitespace."""
    if schema:
        sql = sql.replace(f'"{schema}"', "S").replace(schema, "S")
    sql = sql.replace("__SCHEMA__", "S")
    sql = re.sub(r"__[A-Z]+__|'(?:[^']|'')*'|\$\d+", "?", sql)
    return re.sub(r"\s+", " ", sql).strip().lower()


def _named_statements() -> dict[str, str]:
    from batchworks.backends.postgres import queries

    return {
        _shape(text): name
        for name, text in vars(queries).items()
        if name.isupper() and isinstance(text, str) and "__SCHEMA__" in text
    }


async def read_statements(conn: asyncpg.Connection, schema: str, jobs: int) -> list[dict[str, Any]]:
    """What pg_stat_statements counted for the drain in ``schema``, a row a statement."""
    named = _named_statements()
    found = []
    for row in await conn.fetch(STATEMENTS, schema):
        shape = _shape(row["query"], schema)
        name = named.get(shape)
        if name is None:
            close = difflib.get_close_matches(shape, named, n=1, cutoff=0.9)
            name = named[close[0]] if close else shape[:48]
        if not row["toplevel"]:
            name = f"flow_pick: {shape[:40]}" if name == shape[:48] else f"(nested) {name}"
        found.append(
            {
                "statement": name,
                "calls": row["calls"],
                "rows": row["rows"],
                "ms": row["total_exec_time"],
                "hit": row["shared_blks_hit"],
                "read": row["shared_blks_read"],
                "wal_bytes": float(row["wal_bytes"]),
                "jobs": jobs,
            }
        )
    return found


def print_statements(key: str, statements: list[dict[str, Any]], rate: float) -> None:
    if not statements:
        print(f"  {key}: no statement counted")
        return
    jobs = statements[0]["jobs"]
    total = sum(s["ms"] for s in statements)
    print(
        f"\n  {key} ({rate:,.0f} jobs/s): PostgreSQL's execution time "
        f"{total * 1e3 / jobs:.1f} us a job"
    )
    print(
        f"  {'statement':<44} {'calls':>7} {'rows':>8} {'us/call':>8} {'us/row':>7} "
        f"{'us/job':>7} {'bufs/job':>8} {'WAL B/job':>9}"
    )
    for s in statements:
        per_row = s["ms"] * 1e3 / s["rows"] if s["rows"] else float("nan")
        print(
            f"  {s['statement'][:44]:<44} {s['calls']:>7,} {s['rows']:>8,} "
            f"{s['ms'] * 1e3 / s['calls']:>8.1f} {per_row:>7.2f} {s['ms'] * 1e3 / jobs:>7.2f} "
            f"{(s['hit'] + s['read']) / jobs:>8.1f} {s['wal_bytes'] / jobs:>9.0f}"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _stats_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster with pg_stat_statements preloaded (as tests/pgserver.py
    starts one), with the shared server's settings that matter here: fsync and
    synchronous_commit on, autovacuum off."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if not found:
        raise SystemExit("--statements: PostgreSQL's initdb and pg_ctl are not installed")
    bin_ = os.path.dirname(found[0])
    root = tempfile.mkdtemp(prefix="bench-statements-")
    data = os.path.join(root, "data")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c autovacuum=off "
        "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all "
        "-c track_io_timing=on"
    )
    ctl = [*prefix, os.path.join(bin_, "pg_ctl"), "-D", data, "-w", "-l", f"{root}/log"]
    try:
        subprocess.run(
            [*prefix, os.path.join(bin_, "initdb"), "-D", data, "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
        )
        subprocess.run([*ctl, "-o", options, "start"], check=True, capture_output=True)
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*ctl, "-m", "fast", "stop"], capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(run(main(), use_uvloop="--uvloop" in sys.argv))
