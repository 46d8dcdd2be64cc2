"""Latency: enqueue -> handler start on an idle runner (the LISTEN/NOTIFY path), p50 and p99.

A batchworks worker process (``Runner`` with its defaults: concurrency 10, batch_size 50) runs on
an empty queue. The benchmark enqueues one job, carrying ``time.monotonic()`` taken just before
the ``enqueue`` call; the handler prints the time from there to its own start (one monotonic clock
for every process of this machine). Once the benchmark has read that line it pauses 5-15 ms, so
the runner is idle again and waiting for a NOTIFY, and enqueues the next job.

Floors, measured in the same run over as many samples:

- ``SELECT 1``: one round trip on an open asyncpg connection, the floor the issue names;
- raw NOTIFY: ``SELECT pg_notify(...)`` on one connection until its LISTENing twin's callback
  runs, the least any NOTIFY-driven wake-up can take;
- raw insert+NOTIFY: an ``INSERT`` of one row and its ``pg_notify`` in one statement (a commit
  that waits for the WAL flush, as every durable enqueue must) until the twin's callback runs:
  what is left of a wake-up once the enqueue is durable. batchworks adds the claim's round trip
  (which commits asynchronously, see docs/durability.md) and its own Python on top.

Exits non-zero only if a job's start was not seen within 5 seconds.

Usage::

    .venv/bin/python bench/latency.py           # 1,000 jobs
    .venv/bin/python bench/latency.py --quick   # 50 jobs (CI)
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from typing import Any

import asyncpg
from _common import (
    QUEUE,
    RESULTS,
    ROOT,
    WORKER_START_TIMEOUT,
    describe_machine,
    dsn_of,
    parser,
    percentile,
    ratio_line,
    run,
    scratch_name,
    scratch_schema,
    worker_command,
    write_json,
)

from batchworks import PostgresBackend

START_TIMEOUT = 5.0  # seconds a job may take to start before the run counts as broken
TARGET_P50 = 0.0015  # seconds (issue #18)
TARGET_P99 = 0.005  # seconds


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--jobs", type=int, default=1_000)
    args = parse.parse_args()
    dsn = dsn_of(args)
    count = 50 if args.quick else args.jobs
    print(await describe_machine(dsn, args.uvloop))
    print(f"latency: {count:,} jobs, one at a time, on an idle runner")
    async with scratch_schema(dsn, "bench_latency") as schema:
        async with PostgresBackend(dsn, schema=schema) as backend:
            await backend.migrate()
            try:
                ours = await batchworks_latency(dsn, schema, backend, count, args.uvloop)
            except (TimeoutError, RuntimeError) as exc:
                print(f"error: a job did not start: {exc!r}", file=sys.stderr)
                return 1
        select1 = await select1_latency(dsn, count)
        notify = await notify_latency(dsn, count)
        insert = await notify_latency(dsn, count, insert=schema)
    rows = {
        "batchworks enqueue->start": ours,
        "SELECT 1": select1,
        "raw NOTIFY": notify,
        "raw insert+NOTIFY": insert,
    }
    for name, samples in rows.items():
        print(
            f"  {name:<28} p50 {percentile(samples, 50) * 1e3:7.3f} ms   "
            f"p99 {percentile(samples, 99) * 1e3:7.3f} ms   max {max(samples) * 1e3:7.3f} ms"
        )
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    for what, got, target in (("p50", p50, TARGET_P50), ("p99", p99, TARGET_P99)):
        verdict = "met" if got < target else "MISSED"
        print(f"batchworks {what} {got * 1e3:.3f} ms: target < {target * 1e3:g} ms {verdict}")
    print(ratio_line("batchworks p50/SELECT 1 p50", p50, percentile(select1, 50)))
    print(ratio_line("batchworks p50/raw NOTIFY p50", p50, percentile(notify, 50)))
    print(ratio_line("batchworks p50/raw insert+NOTIFY p50", p50, percentile(insert, 50)))
    print(ratio_line("batchworks p99/SELECT 1 p99", percentile(ours, 99), percentile(select1, 99)))
    if not args.quick:
        figures: dict[str, Any] = {
            name: {"p50": percentile(s, 50), "p99": percentile(s, 99), "max": max(s)}
            for name, s in rows.items()
        }
        write_json(args.json or RESULTS / "latency.json", "latency", {"jobs": count, **figures})
    return 0


async def batchworks_latency(
    dsn: str, schema: str, backend: PostgresBackend, count: int, use_uvloop: bool
) -> list[float]:
    command = worker_command(
        "batchworks",
        dsn,
        schema=schema,
        latency=True,
        uvloop=use_uvloop,
        batch_size=50,
        concurrency=10,
    )
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
    )
    assert proc.stdin is not None and proc.stdout is not None
    samples = []
    try:
        async with asyncio.timeout(WORKER_START_TIMEOUT):
            while (await proc.stdout.readline()).decode().strip() != "ready":
                if proc.stdout.at_eof():
                    raise RuntimeError("the worker exited before it was ready")
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        await asyncio.sleep(0.2)  # let it settle into waiting for work
        for _ in range(count):
            await backend.enqueue(QUEUE, {"t": time.monotonic()})
            async with asyncio.timeout(START_TIMEOUT):
                line = (await proc.stdout.readline()).decode()
            if not line.startswith("started "):
                raise RuntimeError(f"unexpected line from the worker: {line!r}")
            samples.append(float(line.split()[1]))
            await asyncio.sleep(random.uniform(0.005, 0.015))  # idle again before the next
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        async with asyncio.timeout(30):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return samples


async def select1_latency(dsn: str, count: int) -> list[float]:
    conn = await asyncpg.connect(dsn)
    try:
        samples = []
        for _ in range(count):
            start = time.monotonic()
            await conn.fetchval("SELECT 1")
            samples.append(time.monotonic() - start)
        return samples
    finally:
        await conn.close()


async def notify_latency(dsn: str, count: int, *, insert: str | None = None) -> list[float]:
    """A NOTIFY until the listener's callback; with ``insert`` (a schema), sent by an INSERT
    of one row into a table of that schema, in the same statement."""
    talker, listener = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    heard: asyncio.Queue[float] = asyncio.Queue()
    channel = scratch_name("bench_latency")  # of this run only
    await listener.add_listener(channel, lambda *_: heard.put_nowait(time.monotonic()))
    statement = "SELECT pg_notify($1, '')"
    if insert is not None:
        table = f'"{insert}".raw_jobs'
        await talker.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, payload jsonb)")
        statement = (
            f"WITH ins AS (INSERT INTO {table} (payload) VALUES ('{{}}') RETURNING id) "
            "SELECT pg_notify($1, id::text) FROM ins"
        )
    try:
        samples = []
        for _ in range(count):
            start = time.monotonic()
            await talker.execute(statement, channel)
            async with asyncio.timeout(START_TIMEOUT):
                samples.append(await heard.get() - start)
            await asyncio.sleep(random.uniform(0.005, 0.015))  # paced as the jobs are
        return samples
    finally:
        await talker.close()
        await listener.close()


if __name__ == "__main__":
    sys.exit(run(main(), use_uvloop="--uvloop" in sys.argv))
