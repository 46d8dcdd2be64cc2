"""Retention: the claim's cost with a large history present, and the retention purge's own cost
(issue #18, item 5).

Two batchworks schemas, built as ``scale.py`` builds its cases: a backlog of 10k queued no-op
jobs, and the same backlog beside ``--history`` finished jobs (10M; inserted directly as
``succeeded``, finished a month ago, so all of it is past any retention). Round after round,
the two alternating, a worker process (``Runner(concurrency=100, batch_size=100)``) drains
``--drain`` jobs off the top of each backlog; the best round counts, and the rate without
history is the reference: with history the rate should stay within 20% of it (the claim reads
only the partial index of queued rows). The claim's plan and time come from ``EXPLAIN
(ANALYZE)``, rolled back.

Then the purge, on the history schema: ``purge_batch(limit=1000)`` as the retention loop runs
it, ``--batches`` times: milliseconds a batch (p50, p99, max: how long its row locks last) and
jobs deleted a second, first and last batches apart (the cost must not grow as the history's
oldest end moves). Last, one more drain of the history case with the purge running beside it
at the pace of the steady state (as many jobs purged as the reference drain finishes: a batch
every 1,000 / rate seconds), against the reference.

No ANALYZE runs (autovacuum is off here; the worst case for the plans) unless ``--analyze``.
Exits non-zero only if no job ran or a batch deleted nothing.

Usage::

    .venv/bin/python bench/retention.py                     # 10M finished, 100 batches
    .venv/bin/python bench/retention.py --history 1000000   # a smaller history
    .venv/bin/python bench/retention.py --quick             # 20k finished (CI)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

import asyncpg
from _common import (
    QUEUE,
    RESULTS,
    describe_machine,
    dsn_of,
    parser,
    percentile,
    rate,
    ratio_line,
    run,
    run_workers,
    scratch_schema,
    summarize,
    worker_command,
    write_json,
)
from scale import Case, measure, queued, top_up

from batchworks import PostgresBackend

BACKLOG = 10_000
BATCH = 1_000  # the retention loop's batch (batchworks._retention.PURGE_BATCH)
HISTORY_CHUNK = 1_000_000  # rows an INSERT of history writes at once


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--history", type=int, default=10_000_000, help="finished jobs")
    parse.add_argument("--drain", type=int, default=8_000, help="jobs drained per round")
    parse.add_argument("--rounds", type=int, default=3)
    parse.add_argument("--batches", type=int, default=100, help="purge batches timed")
    parse.add_argument("--max-seconds", type=float, default=20.0, help="bound on one drain")
    parse.add_argument("--analyze", action="store_true", help="ANALYZE before measuring")
    args = parse.parse_args()
    dsn = dsn_of(args)
    if args.quick:
        args.history, args.drain, args.rounds, args.batches = 20_000, 300, 1, 5
    print(await describe_machine(dsn, args.uvloop))
    print(
        f"retention: backlog {BACKLOG:,}, history {args.history:,}; drain {args.drain:,} a "
        f"round, best of {args.rounds}; {args.batches} purge batches of {BATCH:,}"
    )
    reference = Case("no history", BACKLOG, 0)
    # measure() inserts no history itself here (history=0): _history writes it, finished a
    # month ago, in chunks.
    with_history = Case(f"{args.history:,} finished", BACKLOG, 0)
    async with contextlib.AsyncExitStack() as stack:
        schemas = [
            await stack.enter_async_context(scratch_schema(dsn, f"bench_retention_c{i}"))
            for i in range(2)
        ]
        started = time.monotonic()
        found = await measure(
            dsn,
            [(reference, schemas[0]), (with_history, schemas[1])],
            args.drain,
            args.rounds,
            args.analyze,
            args,
            before=lambda conn, case, schema: (
                _history(conn, schema, args.history) if case is with_history else _nothing()
            ),
        )
        print(f"  (built and drained in {time.monotonic() - started:.0f} s)")
        for case in (reference, with_history):
            got = found[case.name]
            print(
                f"  {case.name:<22}{rate(got['rate'])}  ({1e6 / got['rate']:.1f} us/job)  "
                f"claim via {got['index']}, {got['claim_ms']:.2f} ms"
            )
            if got["done"] == 0:
                print(f"error: no job ran in case {case.name}", file=sys.stderr)
                return 1
        base = found[reference.name]["rate"]
        print(
            ratio_line(
                "with history/without (drain rate)",
                found[with_history.name]["rate"],
                base,
                ">= 0.8",
            )
        )
        purge = await purge_batches(dsn, schemas[1], args.batches)
        if purge["deleted"] == 0:
            print("error: the purge deleted nothing", file=sys.stderr)
            return 1
        print(
            f"  purge: {purge['deleted']:,} jobs in {args.batches} batches, "
            f"{purge['per_second']:,.0f} jobs/s; a batch p50 {purge['p50_ms']:.1f} ms, "
            f"p99 {purge['p99_ms']:.1f} ms, max {purge['max_ms']:.1f} ms"
        )
        print(ratio_line("last/first purge batches (ms)", purge["last_ms"], purge["first_ms"]))
        beside = await drain_while_purging(dsn, schemas[1], args, pace=BATCH / base)
        print(
            f"  drain beside the purge: {rate(beside['rate'])} ({beside['purged']:,} purged, a "
            f"batch every {BATCH / base * 1e3:.0f} ms)"
        )
        print(ratio_line("drain beside the purge/without history", beside["rate"], base, ">= 0.8"))
    if not args.quick:
        for got in found.values():
            got.pop("plan", None)
        figures: dict[str, Any] = {"history": args.history, **found, "purge": purge}
        figures["drain_beside_purge"] = beside
        write_json(args.json or RESULTS / "retention.json", "retention", figures)
    return 0


async def _nothing() -> None:
    return None


async def _history(conn: asyncpg.Connection, schema: str, count: int) -> None:
    for start in range(0, count, HISTORY_CHUNK):
        await conn.execute(
            f'INSERT INTO "{schema}".jobs (queue, payload, state, attempts, started_at, '
            "finished_at) SELECT $1, jsonb_build_object('n', g), 'succeeded', 1, "
            "now() - interval '30 days', now() - interval '30 days' + g * interval '1 ms' "
            "FROM generate_series($2::bigint, $3::bigint) AS g",
            QUEUE,
            start,
            min(start + HISTORY_CHUNK, count) - 1,
        )


async def purge_batches(dsn: str, schema: str, batches: int) -> dict[str, float]:
    """``batches`` retention batches, one after the other, timed each."""
    times = []
    deleted = 0
    async with PostgresBackend(dsn, schema=schema, min_size=1) as backend:
        start = time.perf_counter()
        for _ in range(batches):
            began = time.perf_counter()
            count = await backend.purge_batch(7 * 86400, limit=BATCH)
            times.append(time.perf_counter() - began)
            deleted += count or 0
        total = time.perf_counter() - start
    tenth = max(1, batches // 10)
    return {
        "deleted": deleted,
        "per_second": deleted / total,
        "p50_ms": percentile(times, 50) * 1e3,
        "p99_ms": percentile(times, 99) * 1e3,
        "max_ms": max(times) * 1e3,
        "first_ms": sum(times[:tenth]) / tenth * 1e3,
        "last_ms": sum(times[-tenth:]) / tenth * 1e3,
    }


async def drain_while_purging(dsn: str, schema: str, args: Any, *, pace: float) -> dict[str, float]:
    """One drain of ``args.drain`` jobs with a purge batch every ``pace`` seconds beside it
    until it ends."""
    conn = await asyncpg.connect(dsn)
    try:
        async with PostgresBackend(dsn, schema=schema, min_size=1) as backend:
            await top_up(backend, BACKLOG - await queued(conn, schema))
            stop = asyncio.Event()
            purged = 0

            async def purge() -> None:
                nonlocal purged
                loop = asyncio.get_running_loop()
                due = loop.time()
                while not stop.is_set():
                    purged += await backend.purge_batch(7 * 86400, limit=BATCH) or 0
                    due += pace
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, due - loop.time())):
                            await stop.wait()

            purger = asyncio.create_task(purge())
            command = worker_command(
                "batchworks",
                dsn,
                schema=schema,
                batch_size=100,
                concurrency=100,
                stop_after=args.drain,
                max_seconds=args.max_seconds,
                uvloop=args.uvloop,
            )
            try:
                results, _ = await run_workers([command], within=args.max_seconds + 60)
            finally:
                stop.set()
                await purger
    finally:
        await conn.close()
    found = summarize("batchworks", results[0].done, results)
    return {"rate": found.rate, "purged": purged}


if __name__ == "__main__":
    sys.exit(run(main(), use_uvloop="--uvloop" in sys.argv))
