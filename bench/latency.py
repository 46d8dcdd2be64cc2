"""Latency: enqueue -> handler start on an idle runner (the LISTEN/NOTIFY path), p50 and p99.

A batchworks worker process (``Runner`` with its defaults: concurrency 10, batch_size 50) runs on
an empty queue. The benchmark enqueues one job, carrying ``time.monotonic()`` taken just before
the ``enqueue`` call; the handler prints the time from there to its own start (one monotonic clock
for every process of this machine), and its start. That is issue #18's measure: the enqueue's
call (its commit waits for the WAL flush) is part of it. Printed beside it, from the same
samples: the ``enqueue`` call alone, and from its return to the handler's start.

The references are measured in the same rounds, interleaved with the jobs (one sample of each a
round, 5-15 ms apart, so the runner is idle again and waiting for a NOTIFY each time): this
machine is shared, and a reference measured a minute later is measured on another machine.

- ``SELECT 1``: one round trip on an open asyncpg connection, the floor the issue names;
- raw NOTIFY: ``SELECT pg_notify(...)`` on one connection until its LISTENing twin's callback
  runs, the least any NOTIFY-driven wake-up can take;
- raw insert+NOTIFY: an ``INSERT`` of one row and its ``pg_notify`` in one statement (a commit
  that waits for the WAL flush, as every durable enqueue must) until the twin's callback runs:
  what is left of a wake-up once the enqueue is durable;
- raw insert+NOTIFY+claim: the same, and the callback claims the row (``UPDATE ... FOR UPDATE
  SKIP LOCKED ... RETURNING``, committed asynchronously as batchworks' claim is) on a connection
  it holds: the least a wake-up that claims before it starts a job can take. batchworks adds
  its own claim statement (flow control, fencing, attempts) and its own Python on top.

Exits non-zero only if a job's start (or a reference's callback) was not seen within 5 seconds.

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
    print(f"latency: {count:,} jobs, one at a time, on an idle runner, references interleaved")
    async with scratch_schema(dsn, "bench_latency") as schema:
        async with PostgresBackend(dsn, schema=schema) as backend:
            await backend.migrate()
            raw = await Raw.open(dsn, schema)
            try:
                rows = await measure(dsn, schema, backend, raw, count, args.uvloop)
            except (TimeoutError, RuntimeError) as exc:
                print(f"error: a job did not start: {exc!r}", file=sys.stderr)
                return 1
            finally:
                await raw.close()
    for name, samples in rows.items():
        shown = f"  {name}" if name in (CALL, AFTER) else name  # parts of the first line
        print(
            f"  {shown:<38} p50 {percentile(samples, 50) * 1e3:7.3f} ms   "
            f"p99 {percentile(samples, 99) * 1e3:7.3f} ms   max {max(samples) * 1e3:7.3f} ms"
        )
    ours = rows[OURS]
    p50, p99 = percentile(ours, 50), percentile(ours, 99)
    for what, got, target in (("p50", p50, TARGET_P50), ("p99", p99, TARGET_P99)):
        verdict = "met" if got < target else "MISSED"
        print(f"batchworks {what} {got * 1e3:.3f} ms: target < {target * 1e3:g} ms {verdict}")
    for floor in (INSERT, CLAIM):
        over = p50 - percentile(rows[floor], 50)
        print(f"batchworks p50 minus {floor} p50: {over * 1e3:.3f} ms")
    print(ratio_line("batchworks p50/SELECT 1 p50", p50, percentile(rows[SELECT1], 50)))
    print(ratio_line("batchworks p50/raw NOTIFY p50", p50, percentile(rows[NOTIFY], 50)))
    print(ratio_line("batchworks p50/raw insert+NOTIFY p50", p50, percentile(rows[INSERT], 50)))
    print(
        ratio_line("batchworks p50/raw insert+NOTIFY+claim p50", p50, percentile(rows[CLAIM], 50))
    )
    print(ratio_line("batchworks p99/SELECT 1 p99", p99, percentile(rows[SELECT1], 99)))
    if not args.quick:
        figures: dict[str, Any] = {
            name: {"p50": percentile(s, 50), "p99": percentile(s, 99), "max": max(s)}
            for name, s in rows.items()
        }
        write_json(args.json or RESULTS / "latency.json", "latency", {"jobs": count, **figures})
    return 0


OURS = "batchworks enqueue->start"
CALL = "batchworks enqueue call"
AFTER = "batchworks enqueue returned->start"
SELECT1 = "SELECT 1"
NOTIFY = "raw NOTIFY"
INSERT = "raw insert+NOTIFY"
CLAIM = "raw insert+NOTIFY+claim"


async def measure(
    dsn: str, schema: str, backend: PostgresBackend, raw: Raw, count: int, use_uvloop: bool
) -> dict[str, list[float]]:
    """``count`` rounds: a job through a batchworks worker process, then one sample of each
    reference, each after a pause that leaves the runner idle."""
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
    rows: dict[str, list[float]] = {
        name: [] for name in (OURS, CALL, AFTER, SELECT1, NOTIFY, INSERT, CLAIM)
    }
    try:
        async with asyncio.timeout(WORKER_START_TIMEOUT):
            while (await proc.stdout.readline()).decode().strip() != "ready":
                if proc.stdout.at_eof():
                    raise RuntimeError("the worker exited before it was ready")
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        await asyncio.sleep(0.2)  # let it settle into waiting for work
        for _ in range(count):
            sent = time.monotonic()
            await backend.enqueue(QUEUE, {"t": sent})
            returned = time.monotonic()
            async with asyncio.timeout(START_TIMEOUT):
                line = (await proc.stdout.readline()).decode()
            if not line.startswith("started "):
                raise RuntimeError(f"unexpected line from the worker: {line!r}")
            started = float(line.split()[2])
            rows[OURS].append(started - sent)
            rows[CALL].append(returned - sent)
            rows[AFTER].append(started - returned)
            for name, sample in (
                (SELECT1, raw.select1),
                (NOTIFY, raw.notify),
                (INSERT, raw.insert),
                (CLAIM, raw.insert_and_claim),
            ):
                await idle()
                rows[name].append(await sample())
            await idle()
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        async with asyncio.timeout(30):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return rows


async def idle() -> None:
    """A pause long enough for the runner to be waiting for a NOTIFY again."""
    await asyncio.sleep(random.uniform(0.005, 0.015))


class Raw:
    """The references: a talker, its LISTENing twin and a claimer, on a table of their own."""

    def __init__(self, connections: list[asyncpg.Connection], schema: str) -> None:
        self._talker, self._listener, self._claimer = connections
        self._heard: asyncio.Queue[float] = asyncio.Queue()
        self._channel = scratch_name("bench_latency")  # of this run only
        table = f'"{schema}".raw_jobs'
        self._table = table
        # One row a sample: 'done' for insert+NOTIFY, 'queued' for the claim to take; the
        # NOTIFY's payload says which, as batchworks' says the queue.
        self._insert = (
            f"WITH ins AS (INSERT INTO {table} (state, payload) VALUES ($2, '{{}}') RETURNING id) "
            "SELECT pg_notify($1, $2) FROM ins"
        )
        self._claim = (
            f"UPDATE {table} SET state = 'running' WHERE id = ANY(ARRAY("
            f"SELECT id FROM {table} WHERE state = 'queued' ORDER BY id LIMIT 50 "
            "FOR UPDATE SKIP LOCKED)) "
            "AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off' "
            "RETURNING id, payload"
        )
        self._claims: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, dsn: str, schema: str) -> Raw:
        raw = cls([await asyncpg.connect(dsn) for _ in range(3)], schema)
        await raw._talker.execute(
            f"CREATE TABLE {raw._table} (id bigserial PRIMARY KEY, state text NOT NULL, "
            f"payload jsonb); CREATE INDEX ON {raw._table} (id) WHERE state = 'queued'"
        )
        await raw._listener.add_listener(raw._channel, raw._on_notify)
        return raw

    async def close(self) -> None:
        for conn in (self._talker, self._listener, self._claimer):
            await conn.close()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload != "queued":
            self._heard.put_nowait(time.monotonic())
            return
        task = asyncio.create_task(self._take())
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)

    async def _take(self) -> None:
        rows = await self._claimer.fetch(self._claim)
        if rows:
            self._heard.put_nowait(time.monotonic())

    async def _timed(self, statement: str, *args: Any) -> float:
        start = time.monotonic()
        await self._talker.execute(statement, *args)
        async with asyncio.timeout(START_TIMEOUT):
            return await self._heard.get() - start

    async def select1(self) -> float:
        start = time.monotonic()
        await self._talker.fetchval("SELECT 1")
        return time.monotonic() - start

    async def notify(self) -> float:
        return await self._timed("SELECT pg_notify($1, '')", self._channel)

    async def insert(self) -> float:
        return await self._timed(self._insert, self._channel, "done")

    async def insert_and_claim(self) -> float:
        return await self._timed(self._insert, self._channel, "queued")


if __name__ == "__main__":
    sys.exit(run(main(), use_uvloop="--uvloop" in sys.argv))
