"""Enqueue throughput: ``enqueue_many`` against raw bulk inserts, and ``enqueue`` per call.

In one process, on one PostgreSQL server, N small JSON payloads (``{"n": i}``) are written in
calls of ``--chunk`` jobs each, four ways:

- batchworks ``enqueue_many``: validation, JSON encoding, one statement per call (ids returned);
- floor, unnest: ``INSERT INTO floor_jobs (queue, payload) SELECT $1, p FROM unnest($2::jsonb[])``
  on one asyncpg connection, payloads encoded with ``json.dumps``, into a minimal job table
  (primary key and one partial index);
- floor, COPY: ``copy_records_to_table`` of the same rows into the same table;
- diagnostic, raw unnest into batchworks' own table (``RETURNING id``): the same statement shape as
  the floor on batchworks' schema (its indexes and trigger), which splits batchworks' cost into
  what its schema costs and what its Python side costs.

Then ``--calls`` single jobs, one call each: batchworks ``enqueue`` in a loop against a raw
``INSERT ... VALUES ($1, $2) RETURNING id`` in a loop (the per-call cost).

Tables are emptied between rounds; the best of ``--rounds`` counts, methods alternating. Exits
non-zero only if a table does not hold the jobs written.

Usage::

    .venv/bin/python bench/enqueue.py             # 100,000 jobs in calls of 1,000; 5,000 calls
    .venv/bin/python bench/enqueue.py --quick     # 2,000 jobs, 200 calls (CI)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from _common import (
    QUEUE,
    RESULTS,
    describe_machine,
    dsn_of,
    parser,
    rate,
    ratio_line,
    run,
    scratch_schema,
    write_json,
)
from _systems import FLOOR_TABLE

from batchworks import PostgresBackend

Method = Callable[[int, int], Awaitable[None]]


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--jobs", type=int, default=100_000, help="jobs per bulk round")
    parse.add_argument("--chunk", type=int, default=1_000, help="jobs per enqueue_many call")
    parse.add_argument("--calls", type=int, default=5_000, help="single-job calls per round")
    parse.add_argument("--rounds", type=int, default=3)
    args = parse.parse_args()
    dsn = dsn_of(args)
    jobs, calls, rounds = (2_000, 200, 1) if args.quick else (args.jobs, args.calls, args.rounds)
    print(await describe_machine(dsn, args.uvloop))
    print(f"enqueue: {jobs:,} jobs in calls of {args.chunk:,}; {calls:,} single calls; ")
    async with (
        scratch_schema(dsn, "bench_enqueue_floor") as floor_schema,
        scratch_schema(dsn, "bench_enqueue_bw") as bw_schema,
        PostgresBackend(dsn, schema=bw_schema) as backend,
    ):
        await backend.migrate()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'CREATE SCHEMA "{floor_schema}"')
            await conn.execute(FLOOR_TABLE.replace("__S__", f'"{floor_schema}"'))
            bench = Bench(conn, backend, floor_schema, bw_schema, args.chunk)
            bulk = {
                "batchworks enqueue_many": bench.enqueue_many,
                "floor unnest": bench.floor_unnest,
                "floor COPY": bench.floor_copy,
                "raw unnest into batchworks' table": bench.raw_into_batchworks,
            }
            single = {
                "batchworks enqueue": bench.enqueue_one,
                "floor INSERT": bench.floor_insert_one,
            }
            best_bulk = await bench.rounds(bulk, jobs, rounds)
            best_single = await bench.rounds(single, calls, rounds)
        finally:
            await conn.close()
    if bench.problems:
        print("error: " + "; ".join(bench.problems), file=sys.stderr)
        return 1
    print("bulk:")
    for name, value in best_bulk.items():
        print(f"  {name:<36}{rate(value)}")
    print("one call per job:")
    for name, value in best_single.items():
        print(f"  {name:<36}{rate(value)}  ({1e6 / value:,.0f} us a call)")
    ours = best_bulk["batchworks enqueue_many"]
    print(ratio_line("enqueue_many/floor unnest", ours, best_bulk["floor unnest"], ">= 0.8"))
    print(ratio_line("enqueue_many/floor COPY", ours, best_bulk["floor COPY"]))
    print(
        ratio_line(
            "enqueue_many/raw unnest into batchworks' table",
            ours,
            best_bulk["raw unnest into batchworks' table"],
        )
    )
    one = best_single["batchworks enqueue"]
    print(ratio_line("enqueue/floor INSERT (per call)", one, best_single["floor INSERT"]))
    if not args.quick:
        figures: dict[str, Any] = {
            "jobs": jobs,
            "chunk": args.chunk,
            "calls": calls,
            "bulk": best_bulk,
            "single": best_single,
        }
        write_json(args.json or RESULTS / "enqueue.json", "enqueue", figures)
    return 0


class Bench:
    def __init__(
        self,
        conn: asyncpg.Connection,
        backend: PostgresBackend,
        floor_schema: str,
        bw_schema: str,
        chunk: int,
    ) -> None:
        self.conn = conn
        self.backend = backend
        self.floor = f'"{floor_schema}".floor_jobs'
        self.jobs = f'"{bw_schema}".jobs'
        self.chunk = chunk
        self.problems: list[str] = []

    async def rounds(self, methods: dict[str, Method], count: int, rounds: int) -> dict[str, float]:
        best: dict[str, float] = {}
        for round_ in range(1, rounds + 1):
            for name, method in methods.items():
                await self.conn.execute(f"TRUNCATE {self.floor}, {self.jobs}")
                start = time.perf_counter()
                for first in range(0, count, self.chunk):
                    await method(first, min(first + self.chunk, count))
                elapsed = time.perf_counter() - start
                await self.check(name, count)
                best[name] = max(best.get(name, 0.0), count / elapsed)
                print(f"  round {round_}: {name:<36}{rate(count / elapsed)}", flush=True)
        return best

    async def check(self, name: str, count: int) -> None:
        table = self.jobs if name.startswith(("batchworks", "raw")) else self.floor
        stored = await self.conn.fetchval(f"SELECT count(*) FROM {table}")
        if stored != count:
            self.problems.append(f"{name}: {stored} of {count} jobs stored")

    async def enqueue_many(self, first: int, stop: int) -> None:
        await self.backend.enqueue_many(QUEUE, [{"n": i} for i in range(first, stop)])

    async def floor_unnest(self, first: int, stop: int) -> None:
        await self.conn.execute(
            f"INSERT INTO {self.floor} (queue, payload) SELECT $1, p FROM unnest($2::jsonb[]) p",
            QUEUE,
            [json.dumps({"n": i}) for i in range(first, stop)],
        )

    async def floor_copy(self, first: int, stop: int) -> None:
        await self.conn.copy_records_to_table(
            "floor_jobs",
            schema_name=self.floor.split(".")[0].strip('"'),
            columns=["queue", "payload"],
            records=[(QUEUE, json.dumps({"n": i})) for i in range(first, stop)],
        )

    async def raw_into_batchworks(self, first: int, stop: int) -> None:
        await self.conn.fetch(
            f"INSERT INTO {self.jobs} (queue, payload) SELECT $1, p FROM unnest($2::jsonb[]) p "
            "RETURNING id",
            QUEUE,
            [json.dumps({"n": i}) for i in range(first, stop)],
        )

    async def enqueue_one(self, first: int, stop: int) -> None:
        for i in range(first, stop):
            await self.backend.enqueue(QUEUE, {"n": i})

    async def floor_insert_one(self, first: int, stop: int) -> None:
        query = f"INSERT INTO {self.floor} (queue, payload) VALUES ($1, $2) RETURNING id"
        for i in range(first, stop):
            await self.conn.fetchval(query, QUEUE, json.dumps({"n": i}))


if __name__ == "__main__":
    sys.exit(run(main(), use_uvloop="--uvloop" in sys.argv))
