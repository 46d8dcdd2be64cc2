"""A worker process of the benchmarks: ``python bench/_workers.py SYSTEM --dsn DSN [options]``.

It connects and sets up everything it needs, prints ``ready``, waits for ``go`` on its standard
input, drains the queue to empty with SYSTEM's own API, and prints one line
``result {"start": t0, "end": t1, "done": n, "cpu": s}``, where t0 and t1 are
``time.monotonic()`` (one clock for every process of this machine), n the jobs its handler
ran and s the CPU seconds the process used from go to the report. The jobs were
enqueued beforehand by the benchmark, which also checks afterwards that all of them ended.

SYSTEM is one of:

- ``floor``: the least asyncpg and PostgreSQL allow. Claims B rows with ``FOR UPDATE SKIP
  LOCKED``, runs a no-op per row with ``asyncio.gather``, settles the batch with one
  ``UPDATE ... WHERE id = ANY($1)``, on one connection, until a claim comes back empty;
- ``batchworks``: ``Runner(concurrency=C, batch_size=B).run_until_empty()`` on a
  ``PostgresBackend``;
- ``pgqueuer``: K ``PgQueuer`` consumers (each on its own connection, as PgQueuer's own benchmark
  does) running with ``batch_size=B`` in drain mode;
- ``procrastinate``: ``App.run_worker_async(concurrency=C, wait=False)``, stopped gracefully at
  ``--max-seconds`` if the queue is not empty by then (it reports the jobs it ran).

``--stop-after N`` (batchworks only): run until N jobs ran (or ``--max-seconds`` passed) and
report those, leaving the rest of a backlog queued.

``--latency`` (batchworks only): the worker runs until told ``stop`` and prints, for each job it
starts, ``started <queue latency in seconds> <its start>``: the latency from the enqueue time
carried in the payload, the start as ``time.monotonic()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from typing import Any

QUEUE = "bench"


_cpu_at_go = 0.0


async def wait_for_go() -> None:
    global _cpu_at_go
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        sys.exit(f"worker: expected 'go', got {line!r}")
    _cpu_at_go = time.process_time()


def report(start: float, end: float, done: int, **extra: Any) -> None:
    """The result line; ``cpu`` is this process's CPU seconds since go (its imports and
    connections, made before, are not the drain's)."""
    cpu = time.process_time() - _cpu_at_go
    line = {"start": start, "end": end, "done": done, "cpu": cpu, **extra}
    print("result " + json.dumps(line), flush=True)


async def floor(args: argparse.Namespace) -> None:
    import asyncpg

    table = f'"{args.schema}".floor_jobs'
    claim = f"""
        UPDATE {table} SET state = 'running', attempts = attempts + 1
        WHERE id = ANY(ARRAY(
            SELECT id FROM {table} WHERE state = 'queued' AND queue = $1
            ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED))
        RETURNING id, payload"""
    settle = f"UPDATE {table} SET state = 'succeeded' WHERE id = ANY($1::bigint[])"
    done = 0

    async def noop(payload: Any) -> None:
        nonlocal done
        done += 1

    conn = await asyncpg.connect(args.dsn)
    await wait_for_go()
    start = time.monotonic()
    while rows := await conn.fetch(claim, QUEUE, args.batch_size):
        await asyncio.gather(*(noop(json.loads(row["payload"])) for row in rows))
        await conn.execute(settle, [row["id"] for row in rows])
    end = time.monotonic()
    await conn.close()
    report(start, end, done)


async def batchworks(args: argparse.Namespace) -> None:
    from batchworks import Job, PostgresBackend, Runner

    done = 0
    stopped_at: float | None = None

    async def noop(job: Job) -> None:
        nonlocal done, stopped_at
        done += 1
        if done == args.stop_after:
            stopped_at = time.monotonic()
            runner.stop()

    async def timed(job: Job) -> None:
        now = time.monotonic()
        print(f"started {now - job.payload['t']:.6f} {now:.6f}", flush=True)

    async with PostgresBackend(args.dsn, schema=args.schema) as backend:
        runner = Runner(
            backend,
            {QUEUE: timed if args.latency else noop},
            concurrency=args.concurrency,
            batch_size=args.batch_size,
        )
        if args.latency:
            await latency_run(runner)
            return
        await wait_for_go()
        start = time.monotonic()
        if args.stop_after:
            # Drain part of a backlog: stop once stop_after jobs ran, or at max_seconds.
            loop = asyncio.get_running_loop()
            loop.call_later(args.max_seconds, runner.stop)
            await runner.run()
            report(start, stopped_at or time.monotonic(), min(done, args.stop_after))
            return
        result = await runner.run_until_empty()
        end = time.monotonic()
    if result.succeeded != done:
        sys.exit(f"worker: ran {done} jobs but the report says {result}")
    report(start, end, done, failed=result.failed, retried=result.retried)


async def latency_run(runner: Any) -> None:
    """Run until the benchmark writes ``stop``; it times each job from its payload."""
    task = asyncio.create_task(runner.run())
    await runner.wait_ready()
    await wait_for_go()
    start = time.monotonic()
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "stop":
        sys.exit(f"worker: expected 'stop', got {line!r}")
    runner.stop()
    await task
    report(start, time.monotonic(), runner.report.succeeded)


async def pgqueuer(args: argparse.Namespace) -> None:
    import asyncpg
    from pgqueuer import PgQueuer, types
    from pgqueuer.db import AsyncpgDriver

    done = 0
    consumers = []
    for _ in range(args.consumers):
        pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(args.dsn)))

        @pgq.entrypoint(QUEUE)
        async def noop(job: Any) -> None:
            nonlocal done
            done += 1

        consumers.append(pgq)
    await wait_for_go()
    start = time.monotonic()
    await asyncio.gather(
        *(
            pgq.run(batch_size=args.batch_size, mode=types.QueueExecutionMode.drain)
            for pgq in consumers
        )
    )
    end = time.monotonic()
    report(start, end, done)


async def procrastinate(args: argparse.Namespace) -> None:
    import logging

    import procrastinate as pc

    # It warns that the app is defined in __main__: true here, and harmless for a drain.
    logging.getLogger("procrastinate").setLevel(logging.ERROR)
    done = 0
    app = pc.App(
        connector=pc.PsycopgConnector(
            conninfo=args.dsn, min_size=2, max_size=max(4, min(args.concurrency + 2, args.pool_max))
        )
    )

    @app.task(queue=QUEUE, name="noop")
    async def noop(n: int) -> None:
        nonlocal done
        done += 1

    async with app.open_async():
        await wait_for_go()
        start = time.monotonic()
        worker = asyncio.create_task(
            app.run_worker_async(
                queues=[QUEUE],
                concurrency=args.concurrency,
                wait=False,
                install_signal_handlers=False,
            )
        )
        # Bounded: at --max-seconds, cancel it, which Procrastinate takes as a graceful stop
        # (running jobs finish), and report the jobs it ran by then.
        done_in_time, _ = await asyncio.wait({worker}, timeout=args.max_seconds)
        end = time.monotonic()
        if not done_in_time:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        else:
            worker.result()
    report(start, end, done, stopped=not done_in_time)


SYSTEMS = {
    "floor": floor,
    "batchworks": batchworks,
    "pgqueuer": pgqueuer,
    "procrastinate": procrastinate,
}


def main() -> None:
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parse.add_argument("system", choices=sorted(SYSTEMS))
    parse.add_argument("--dsn", required=True)
    parse.add_argument("--schema", default="bench")
    parse.add_argument("--batch-size", type=int, default=100)
    parse.add_argument("--concurrency", type=int, default=100)
    parse.add_argument("--consumers", type=int, default=1, help="pgqueuer: consumers in-process")
    parse.add_argument("--pool-max", type=int, default=20, help="procrastinate: pool size at most")
    parse.add_argument("--uvloop", action="store_true")
    parse.add_argument("--latency", action="store_true")
    parse.add_argument("--stop-after", type=int, default=0, help="batchworks: stop after n jobs")
    parse.add_argument(
        "--max-seconds", type=float, default=300.0, help="with --stop-after, and procrastinate"
    )
    args = parse.parse_args()
    work = SYSTEMS[args.system](args)
    if args.uvloop:
        import uvloop

        uvloop.run(work)
    else:
        asyncio.run(work)


if __name__ == "__main__":
    main()
