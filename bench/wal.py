"""Bytes written per job: WAL and index entries of an enqueue and of a drain, for batchworks, the
naive floor and PgQueuer, in one run (issue #18, item 4).

Each system queues N no-op jobs with its own API, then one worker process drains them (B=100,
C=100), as in ``drain.py``. Around each step the benchmark reads ``pg_current_wal_insert_lsn()``
and then decodes that stretch of WAL with ``pg_waldump``. The server is shared (other sessions
write WAL meanwhile), so a record counts for a system only when it touches one of the system's
relations (its tables, their TOAST and indexes, by relfilenode), and a commit record when its
transaction wrote such a record. Per job it prints:

- WAL bytes, with the share of full-page images apart (those depend on when the last
  checkpoint ran, not on the system: the figure without them is the one to compare);
- index entries written (btree leaf inserts, plain or into a posting list, per index), heap
  records by kind (an UPDATE that is HOT writes no index entry; a LOCK beside an UPDATE marks
  one whose new version did not fit on the old one's page) and commits;
- ``n_tup_hot_upd`` against ``n_tup_upd`` from ``pg_stat_user_tables``, for the job table.

Ratios: batchworks over the floor (target <= 1.3x) and over PgQueuer, for the drain and for
enqueue plus drain. Needs ``pg_waldump`` and read access to the server's ``pg_wal`` (this machine:
root, the server local); without them it says so and exits 0, measuring nothing.

Usage::

    .venv/bin/python bench/wal.py              # 20,000 jobs, best of 2
    .venv/bin/python bench/wal.py --quick      # 2,000 jobs, one round (CI)
"""

from __future__ import annotations

import asyncio
import collections
import glob
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
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

SYSTEMS = ("floor", "batchworks", "pgqueuer")
TARGET = "<= 1.3"  # batchworks' drain WAL over the floor's (issue #18)

RECORD = re.compile(
    r"rmgr: (?P<rmgr>\w+)\s+len \(rec/tot\):\s*(?P<rec>\d+)/\s*(?P<tot>\d+), "
    r"tx:\s*(?P<tx>\d+), lsn: \S+, prev \S+, desc: (?P<desc>\w+)"
)
BLOCK = re.compile(r"blkref #\d+: rel (\d+/\d+/\d+)(?: fork \w+)? blk \d+(?P<fpw> FPW)?")


@dataclass
class Written:
    """What one step wrote to the WAL for one system."""

    bytes: int = 0
    fpi_bytes: int = 0
    commits: int = 0
    records: collections.Counter[str] = field(default_factory=collections.Counter)
    record_bytes: collections.Counter[str] = field(default_factory=collections.Counter)
    index_entries: collections.Counter[str] = field(default_factory=collections.Counter)

    def per_job(self, jobs: int) -> dict[str, Any]:
        heap = {k: v / jobs for k, v in sorted(self.records.items()) if k.startswith("Heap")}
        return {
            "wal_bytes": self.bytes / jobs,
            "wal_bytes_without_fpi": (self.bytes - self.fpi_bytes) / jobs,
            "index_entries": sum(self.index_entries.values()) / jobs,
            "index_entries_by_index": {k: v / jobs for k, v in sorted(self.index_entries.items())},
            "heap_records": heap,
            "commits": self.commits / jobs,
            "bytes_by_record": {k: v / jobs for k, v in self.record_bytes.most_common()},
        }


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--jobs", type=int, default=20_000)
    parse.add_argument("--rounds", type=int, default=2)
    parse.add_argument("--only", default=",".join(SYSTEMS), help="systems, comma-separated")
    args = parse.parse_args()
    dsn = dsn_of(args)
    jobs, rounds = (2_000, 1) if args.quick else (args.jobs, args.rounds)
    waldump, wal_dir = await _waldump(dsn)
    if waldump is None:
        print(f"wal: skipped ({wal_dir})")
        return 0
    print(await describe_machine(dsn, args.uvloop))
    print(f"wal: {jobs:,} jobs queued, then drained by one worker (B=100, C=100), best of {rounds}")
    best: dict[str, dict[str, dict[str, Any]]] = {}
    async with open_systems(dsn, "wal", args.only.split(",")) as systems:
        for _ in range(rounds):
            for name, system in systems.items():
                try:
                    steps = await measure(system, jobs, waldump, wal_dir, args.uvloop)
                except NotAllRun as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                kept = best.get(name)
                if (
                    kept is None
                    or steps["drain"]["wal_bytes_without_fpi"]
                    < kept["drain"]["wal_bytes_without_fpi"]
                ):
                    best[name] = steps
    for name, steps in best.items():
        print(f"{name}:")
        for step, figures in steps.items():
            if step == "stats":
                print(f"  {step:<8} {figures}")
                continue
            print(
                f"  {step:<8} WAL {figures['wal_bytes']:7.0f} B/job "
                f"({figures['wal_bytes_without_fpi']:6.0f} without full-page images), "
                f"index entries {figures['index_entries']:.2f}/job "
                f"{_short(figures['index_entries_by_index'])}, commits "
                f"{figures['commits']:.3f}/job, heap {_short(figures['heap_records'])}"
            )
            by_record = ", ".join(f"{k} {v:.0f}" for k, v in figures["bytes_by_record"].items())
            print(f"           bytes/job by record: {by_record}")
    for other in ("floor", "pgqueuer"):
        if "batchworks" in best and other in best:
            ours, theirs = best["batchworks"], best[other]
            target = TARGET if other == "floor" else None
            for key in ("wal_bytes_without_fpi", "index_entries"):
                print(
                    ratio_line(
                        f"batchworks/{other} drain {key}",
                        ours["drain"][key],
                        theirs["drain"][key],
                        target if key == "wal_bytes_without_fpi" else None,
                    )
                )
            print(
                ratio_line(
                    f"batchworks/{other} enqueue+drain wal_bytes_without_fpi",
                    ours["enqueue"]["wal_bytes_without_fpi"]
                    + ours["drain"]["wal_bytes_without_fpi"],
                    theirs["enqueue"]["wal_bytes_without_fpi"]
                    + theirs["drain"]["wal_bytes_without_fpi"],
                )
            )
    if not args.quick:
        write_json(args.json or RESULTS / "wal.json", "wal", {"jobs": jobs, **best})
    return 0


def _short(counts: dict[str, float], digits: int = 2) -> str:
    return "(" + ", ".join(f"{k.split('/')[-1]} {v:.{digits}f}" for k, v in counts.items()) + ")"


async def measure(
    system: System, jobs: int, waldump: str, wal_dir: str, use_uvloop: bool
) -> dict[str, dict[str, Any]]:
    """Enqueue and drain ``jobs`` jobs; what each step wrote, per job."""
    conn = await asyncpg.connect(system.dsn)
    try:
        before = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        await system.prepare(jobs)
        queued = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        commands = system.commands(1, batch_size=100, concurrency=100, use_uvloop=use_uvloop)
        results, _ = await run_workers(commands, within=600.0)
        drained = await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        drain = summarize(system.name, jobs, results)
        problem = await system.verify(drain)
        if problem is not None:
            raise NotAllRun(f"{system.name}: {problem}")
        await conn.execute("SELECT pg_switch_wal()")  # every record written out to a file
        relations, table = await _relations(conn, system)
        stats = await _hot_updates(conn, table)
    finally:
        await conn.close()
    enqueue = await _decode(waldump, wal_dir, before, queued, relations)
    drained_step = await _decode(waldump, wal_dir, queued, drained, relations)
    return {
        "enqueue": enqueue.per_job(jobs),
        "drain": drained_step.per_job(jobs),
        "stats": stats,
    }


async def _relations(conn: asyncpg.Connection, system: System) -> tuple[dict[str, str], str]:
    """``{"tblspc/db/filenode": relation name}`` for every relation of the system, and the
    qualified name of its job table."""
    tables = {
        "floor": ["floor_jobs"],
        "batchworks": ["jobs", "workers"],
        "pgqueuer": ["pgqueuer", "pgqueuer_log", "pgqueuer_statistics"],
    }[system.name]
    rows = await conn.fetch(
        """
        SELECT c.relname,
               concat_ws('/', CASE WHEN c.reltablespace = 0
                                   THEN (SELECT dattablespace FROM pg_database
                                         WHERE datname = current_database())
                                   ELSE c.reltablespace END,
                         (SELECT oid FROM pg_database WHERE datname = current_database()),
                         pg_relation_filenode(c.oid)) AS rel
        FROM pg_class AS c
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND pg_relation_filenode(c.oid) IS NOT NULL
          AND (c.relname = ANY($2::text[])
               OR c.oid IN (SELECT indexrelid FROM pg_index
                            WHERE indrelid IN (SELECT oid FROM pg_class
                                               WHERE relnamespace = n.oid
                                                 AND relname = ANY($2::text[])))
               OR c.oid IN (SELECT reltoastrelid FROM pg_class
                            WHERE relnamespace = n.oid AND relname = ANY($2::text[])))
        """,
        system.schema,
        tables,
    )
    return {row["rel"]: row["relname"] for row in rows}, f'"{system.schema}".{tables[0]}'


async def _hot_updates(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    await asyncio.sleep(1.5)  # backends report their counts within a second of going idle
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables "
        "WHERE relid = $1::regclass",
        table,
    )
    return dict(row) if row is not None else {}


async def _decode(
    waldump: str, wal_dir: str, start: str, end: str, relations: dict[str, str]
) -> Written:
    proc = await asyncio.create_subprocess_exec(
        waldump,
        "-p",
        wal_dir,
        "-s",
        start,
        "-e",
        end,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0 and b"error in WAL record" not in err:
        raise RuntimeError(f"pg_waldump failed: {err.decode(errors='replace')[-500:]}")
    written = Written()
    ours: set[str] = set()
    commits: dict[str, int] = {}
    for line in out.decode(errors="replace").splitlines():
        record = RECORD.search(line)
        if record is None:
            continue
        if record["rmgr"] == "Transaction" and record["desc"] == "COMMIT":
            commits[record["tx"]] = int(record["tot"])
            continue
        blocks = BLOCK.findall(line)
        mine = [rel for rel, _ in blocks if rel in relations]
        if not mine:
            continue
        if record["tx"] != "0":
            ours.add(record["tx"])
        total = int(record["tot"])
        written.bytes += total
        if any(fpw for rel, fpw in blocks if rel in relations):
            written.fpi_bytes += total - int(record["rec"])
        kind = f"{record['rmgr']}/{record['desc']}"
        written.records[kind] += 1
        written.record_bytes[kind] += total
        if record["rmgr"] == "Btree" and record["desc"] in ("INSERT_LEAF", "INSERT_POST"):
            written.index_entries[relations[mine[0]]] += 1
    for tx, size in commits.items():
        if tx in ours:
            written.commits += 1
            written.bytes += size
    return written


async def _waldump(dsn: str) -> tuple[str | None, str]:
    """pg_waldump and the server's pg_wal directory, or None and why not."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_waldump"), reverse=True)
    waldump = found[0] if found else shutil.which("pg_waldump")
    if waldump is None:
        return None, "pg_waldump is not installed"
    conn = await asyncpg.connect(dsn)
    try:
        data = await conn.fetchval("SHOW data_directory")
    except asyncpg.PostgresError as exc:
        return None, f"cannot read data_directory ({exc})"
    finally:
        await conn.close()
    wal_dir = os.path.join(data, "pg_wal")
    if not os.access(wal_dir, os.R_OK | os.X_OK):
        return None, f"{wal_dir} is not readable here"
    return waldump, wal_dir


if __name__ == "__main__":
    sys.exit(run(main(), use_uvloop="--uvloop" in sys.argv))
