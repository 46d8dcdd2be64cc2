"""Batches (#16): what a batch costs against the same work without one, in the same run.

Three measurements, each a ratio of two figures taken side by side in this process, on the
same PostgreSQL server, rounds alternating, the best round of each counting:

- drain: N no-op jobs queued beforehand, in one batch (``enqueue_batch``, with an
  ``on_complete`` callback) or in none (``enqueue_many``), drained to empty by ``--runners``
  Runners (concurrency 100, batch_size 100) on a backend each. Every settle of a member also
  updates the batch row, and the runners' settles queue on its lock: target >= 0.85x.
- enqueue: N payloads enqueued in calls of ``--chunk`` payloads, each call a batch
  (``enqueue_batch``) or not (``enqueue_many``): target >= 0.9x.
- memory (flat: not in proportion to the members): Python's traced memory (tracemalloc) at
  its peak while one Runner drains a batch of S members and a reader calls ``get_batch``
  throughout, for S from ``--sizes``, and while ``batch_results`` streams it (pages of 500;
  over what the drain left), the least of the rounds: the drain's against the same drain of
  no batch (target <= 1.1x), the bytes more a member from the smallest S to the largest, what
  is left allocated after the drain, and the batch row's size in PostgreSQL (the same).

Usage::

    .venv/bin/python bench/batches.py           # 50,000 jobs, 3 rounds, sizes 1,000-50,000
    .venv/bin/python bench/batches.py --quick   # 2,000 jobs, one round (CI)
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import tracemalloc
from typing import Any

import asyncpg
from _common import (
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

from batchworks import Callback, Job, PostgresBackend, Runner

QUEUE = "bench"
DONE = Callback("bench_done", {"report": True})
KB = 1024


async def noop(job: Job) -> None:
    return None


async def _reset(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'TRUNCATE "{schema}".jobs, "{schema}".batches')
    finally:
        await conn.close()


async def _drain(dsn: str, schema: str, jobs: int, runners: int, *, batched: bool) -> float:
    """Enqueue ``jobs`` (in one batch or none), then time ``runners`` draining them."""
    await _reset(dsn, schema)
    async with PostgresBackend(dsn, schema=schema, min_size=1, max_size=4) as producer:
        payloads = [{"i": i} for i in range(jobs)]
        if batched:
            batch = await producer.enqueue_batch(QUEUE, payloads, on_complete=DONE)
        else:
            await producer.enqueue_many(QUEUE, payloads)
        backends = [
            PostgresBackend(dsn, schema=schema, min_size=2, max_size=4) for _ in range(runners)
        ]
        for backend in backends:
            await backend.open()
        try:
            workers = [
                Runner(b, {QUEUE: noop}, concurrency=100, batch_size=100, poll_interval=0.2)
                for b in backends
            ]
            began = time.perf_counter()
            await asyncio.gather(*(w.run_until_empty() for w in workers))
            seconds = time.perf_counter() - began
        finally:
            for backend in backends:
                await backend.aclose()
        if batched:
            record = await producer.get_batch(batch.id)
            assert record is not None and record.succeeded == jobs and record.done, record
            assert record.complete_job is not None
    return jobs / seconds


async def _enqueue(dsn: str, schema: str, jobs: int, chunk: int, *, batched: bool) -> float:
    await _reset(dsn, schema)
    payloads = [{"i": i} for i in range(chunk)]
    async with PostgresBackend(dsn, schema=schema, min_size=1, max_size=2) as backend:
        began = time.perf_counter()
        for _ in range(jobs // chunk):
            if batched:
                await backend.enqueue_batch(QUEUE, payloads, on_complete=DONE)
            else:
                await backend.enqueue_many(QUEUE, payloads)
        return (jobs // chunk) * chunk / (time.perf_counter() - began)


async def _memory(dsn: str, schema: str, size: int, *, batched: bool = True) -> dict[str, int]:
    """Peak traced bytes of a drain of ``size`` jobs in one batch (reading it throughout) or
    in none, of streaming the batch's results, and the batch row's size."""
    await _reset(dsn, schema)
    async with PostgresBackend(dsn, schema=schema, min_size=2, max_size=4) as backend:
        payloads = [{"i": i} for i in range(size)]
        batch_id, first = None, 0
        if batched:
            batch_id = (await backend.enqueue_batch(QUEUE, payloads)).id
        else:
            first = (await backend.enqueue_many(QUEUE, payloads))[0]
        del payloads  # what the producer holds is not what is measured
        runner = Runner(backend, {QUEUE: noop}, concurrency=100, batch_size=100)
        gc.collect()
        tracemalloc.start()
        try:
            drain = asyncio.create_task(runner.run_until_empty())
            while not drain.done():  # a reader throughout, in both: a record a read
                if batch_id is not None:
                    await backend.get_batch(batch_id)
                else:
                    await backend.get_job(first)
                await asyncio.sleep(0.05)
            await drain
            gc.collect()
            retained, drain_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            count = 0
            if batch_id is not None:
                async for _record in backend.batch_results(batch_id, page_size=500):
                    count += 1
                assert count == size, (count, size)
            # what the stream itself took, over what the drain left
            results_peak = tracemalloc.get_traced_memory()[1] - retained
        finally:
            tracemalloc.stop()
        row_bytes = await backend._require_pool().fetchval(
            f'SELECT coalesce(max(pg_column_size(b.*)), 0) FROM "{schema}".batches AS b'
        )
    return {
        "drain_peak": drain_peak,
        "retained": retained,
        "results_peak": results_peak,
        "row_bytes": row_bytes,
    }


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--jobs", type=int, default=50_000, help="jobs per drain and enqueue")
    parse.add_argument("--rounds", type=int, default=3)
    parse.add_argument("--runners", type=int, default=2, help="Runners draining at once")
    parse.add_argument("--chunk", type=int, default=1_000, help="payloads per enqueue call")
    parse.add_argument("--sizes", default="1000,10000,50000", help="batch sizes for memory")
    args = parse.parse_args()
    dsn = dsn_of(args)
    jobs, rounds = (2_000, 1) if args.quick else (args.jobs, args.rounds)
    sizes = [500, 2_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    print(await describe_machine(dsn, False))
    print(
        f"batches: drain {jobs:,} no-op jobs by {args.runners} runners, enqueue {jobs:,} in "
        f"calls of {args.chunk:,}, best of {rounds}; memory at batch sizes {sizes}"
    )
    figures: dict[str, Any] = {"jobs": jobs, "runners": args.runners, "chunk": args.chunk}
    async with scratch_schema(dsn, "bench_batches") as schema:
        async with PostgresBackend(dsn, schema=schema, min_size=1, max_size=1) as setup:
            await setup.migrate()
        best: dict[str, float] = {}
        for round_ in range(1, rounds + 1):
            for name, batched in (("drain/plain", False), ("drain/batch", True)):
                value = await _drain(dsn, schema, jobs, args.runners, batched=batched)
                best[name] = max(best.get(name, 0.0), value)
                print(f"  round {round_}: {name:<16}{rate(value)}", flush=True)
            for name, batched in (("enqueue/many", False), ("enqueue/batch", True)):
                value = await _enqueue(dsn, schema, jobs, min(args.chunk, jobs), batched=batched)
                best[name] = max(best.get(name, 0.0), value)
                print(f"  round {round_}: {name:<16}{rate(value)}", flush=True)
        memory, plain = {}, {}
        for size in sizes:
            # The least of the rounds: a peak is the drain's plus whatever garbage a collection
            # had not freed yet at that moment, which varies from one run to the next.
            runs = [await _memory(dsn, schema, size) for _ in range(rounds)]
            memory[size] = {key: min(run[key] for run in runs) for key in runs[0]}
            runs = [await _memory(dsn, schema, size, batched=False) for _ in range(rounds)]
            plain[size] = {key: min(run[key] for run in runs) for key in runs[0]}
    for size, used in memory.items():
        print(
            f"  {size:>7,} jobs: drain peak {used['drain_peak'] / KB:6.0f} KiB in a batch, "
            f"{plain[size]['drain_peak'] / KB:6.0f} KiB in none (left after it: "
            f"{used['retained'] / KB:.0f} and {plain[size]['retained'] / KB:.0f} KiB); "
            f"results peak {used['results_peak'] / KB:6.0f} KiB; "
            f"batch row {used['row_bytes']} bytes"
        )
    print(ratio_line("drain batch/plain", best["drain/batch"], best["drain/plain"], ">= 0.85"))
    print(ratio_line("enqueue batch/many", best["enqueue/batch"], best["enqueue/many"], ">= 0.9"))
    small, large = memory[sizes[0]], memory[sizes[-1]]
    print(
        ratio_line(
            f"drain peak memory batch/no batch at {sizes[-1]:,}",
            large["drain_peak"],
            plain[sizes[-1]]["drain_peak"],
            "<= 1.1",
        )
    )
    # A longer drain reaches a somewhat higher peak with or without a batch (more flushes in
    # flight at some moment): printed, not judged.
    for name, figures_of in (("batch", memory), ("no batch", plain)):
        print(
            ratio_line(
                f"drain peak memory {sizes[-1]:,}/{sizes[0]:,} ({name})",
                figures_of[sizes[-1]]["drain_peak"],
                figures_of[sizes[0]]["drain_peak"],
            )
        )
    print(
        ratio_line(
            f"results peak memory {sizes[-1]:,}/{sizes[0]:,}",
            large["results_peak"],
            small["results_peak"],
        )
    )
    # Flat means: not in proportion to the members. Bytes more a member, from the smallest
    # batch to the largest (a JobRecord alone is several hundred bytes).
    extra = sizes[-1] - sizes[0]
    for what in ("drain_peak", "results_peak"):
        grown = (large[what] - small[what]) / extra if extra else 0.0
        print(f"  {what}: {grown:+.1f} bytes a member from {sizes[0]:,} to {sizes[-1]:,}")
    if not args.quick:
        figures["rates"] = best
        figures["memory"] = memory
        figures["memory_no_batch"] = plain
        write_json(args.json or RESULTS / "batches.json", "batches", figures)
    return 0


if __name__ == "__main__":
    sys.exit(run(main()))
