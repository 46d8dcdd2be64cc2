"""A worker process for the crash tests: ``python -m tests.postgres.worker DSN SCHEMA NAME MODE``.

It prints ``ready <pid>`` once registered, then runs until SIGTERM/SIGINT. Each handler call
records ``(job_id, attempt, pid)`` in the schema's ``effects`` table before it does anything
else, so a test counts executions from outside. MODE picks the handler:

- ``sleep:<ms>``: sleeps that long, returns the pid
- ``hang``: awaits forever (until cancelled)
- ``block:<s>``: blocks the event loop (time.sleep) that long, then returns the pid
- ``export:<items>:<chunk>``: walks ``items`` items in chunks, recording each chunk's items
  in ``effects.item`` and saving ``{"offset": n}`` as a checkpoint after each chunk; resumes
  from the checkpoint
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import asyncpg

from batchworks import Job, PostgresBackend, Runner


async def main(dsn: str, schema: str, name: str, mode: str, options: dict[str, float]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    effects = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    kind, _, arg = mode.partition(":")

    async def export(job: Job) -> Any:
        total, chunk = (int(part) for part in arg.split(":"))
        offset = job.checkpoint["offset"] if job.checkpoint else 0
        while offset < total:
            end = min(offset + chunk, total)
            await asyncio.sleep(0.02)  # the work of one chunk
            await effects.execute(
                f'INSERT INTO "{schema}".effects (job_id, attempt, pid, item) '
                "SELECT $1, $2, $3, generate_series($4::int, $5::int - 1)",
                job.id,
                job.attempt,
                os.getpid(),
                offset,
                end,
            )
            await job.save_checkpoint({"offset": end})
            offset = end
        return offset

    async def handler(job: Job) -> Any:
        if kind == "export":
            return await export(job)
        await effects.execute(
            f'INSERT INTO "{schema}".effects (job_id, attempt, pid) VALUES ($1, $2, $3)',
            job.id,
            job.attempt,
            os.getpid(),
        )
        if kind == "sleep":
            await asyncio.sleep(float(arg) / 1000)
        elif kind == "hang":
            await asyncio.Event().wait()
        elif kind == "block":
            time.sleep(float(arg))  # noqa: ASYNC251 - a handler that blocks the loop, on purpose
        return os.getpid()

    async with PostgresBackend(dsn, schema=schema) as backend:
        runner = Runner(
            backend,
            {"q": handler},
            worker_name=name,
            concurrency=int(options.get("concurrency", 10)),
            batch_size=int(options.get("batch_size", 10)),
            heartbeat_interval=options.get("heartbeat_interval", 0.2),
            prune_after=options.get("prune_after", 2.0),
            shutdown_timeout=options.get("shutdown_timeout", 2.0),
            poll_interval=options.get("poll_interval", 0.2),
        )
        task = asyncio.create_task(runner.run())
        await runner.wait_ready()
        print(f"ready {os.getpid()}", flush=True)  # noqa: T201 - the line tests wait for
        await task
    await effects.close()


if __name__ == "__main__":
    dsn, schema, name, mode, *rest = sys.argv[1:]
    opts = {key: float(value) for key, _, value in (item.partition("=") for item in rest)}
    asyncio.run(main(dsn, schema, name, mode, opts))
