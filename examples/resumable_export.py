"""Resumable jobs: an export of 10,000 items that checkpoints after each chunk of 500.

What it shows: a handler walks a large input in chunks and calls ``job.save_checkpoint(...)``
after each one. When its worker goes away mid-way, the next attempt reads ``job.checkpoint``
and carries on from there, so only the chunk in flight is done twice, not the whole export.

- On the in-memory backend (the default) the worker is stopped mid-export with
  ``runner.stop(now=True)``, as a deploy would: the job goes back to the queue without using
  an attempt, and a second worker resumes it.
- With ``BATCHWORKS_DSN`` set, the worker is a real process that gets SIGKILLed mid-export
  and started again under the same name: the restart recovers the job at once and resumes
  from the last checkpoint in PostgreSQL.

Run it from the repository root::

    .venv/bin/python examples/resumable_export.py
    BATCHWORKS_DSN=postgresql://postgres@127.0.0.1/test \\
        .venv/bin/python examples/resumable_export.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter

from batchworks import Backend, Job, MemoryBackend, PostgresBackend, Runner

ITEMS = 10_000
CHUNK = 500
SCHEMA = os.environ.get("BATCHWORKS_SCHEMA", "batchworks_export_example")

# Each item exported, as (attempt, item): in a real export this is rows written to a file.
exported: Counter[int] = Counter()
halfway = asyncio.Event()


async def export(job: Job) -> dict[str, int]:
    offset = job.checkpoint["offset"] if job.checkpoint else 0
    if offset:
        print(f"  attempt {job.attempt}: resuming at item {offset:,}", flush=True)
    while offset < job.payload["items"]:
        end = min(offset + CHUNK, job.payload["items"])
        await asyncio.sleep(0.02)  # the work of one chunk: read, transform, write
        exported.update(range(offset, end))
        if end >= ITEMS // 2:
            halfway.set()
        # Durable progress, written at once and fenced: if this worker had lost the job,
        # save_checkpoint would raise LeaseLost instead of overwriting the new owner's.
        await job.save_checkpoint({"offset": end})
        offset = end
    return {"exported": offset}


def runner_for(backend: Backend) -> Runner:
    return Runner(backend, {"exports": export}, worker_name="exporter", shutdown_timeout=0)


async def in_memory() -> None:
    backend = MemoryBackend()
    job_id = await backend.enqueue("exports", {"items": ITEMS})

    first = runner_for(backend)
    run = asyncio.create_task(first.run_until_empty())
    await halfway.wait()
    print(f"stopping the worker after {len(exported):,} items (a deploy)")
    first.stop(now=True)
    await run

    record = await backend.get_job(job_id)
    assert record is not None
    print(f"job is {record.state}, checkpoint {record.checkpoint}, attempts {record.attempts}")
    await runner_for(backend).run_until_empty()
    await summary(backend, job_id)


async def on_postgres(dsn: str) -> None:
    async with PostgresBackend(dsn, schema=SCHEMA) as backend:
        await backend.migrate()
        job_id = await backend.enqueue("exports", {"items": ITEMS})
        worker = await start_worker(dsn)
        while True:  # wait for a checkpoint about half way, then kill the worker
            record = await backend.get_job(job_id)
            if record and record.checkpoint and record.checkpoint["offset"] >= ITEMS // 2:
                break
            await asyncio.sleep(0.01)
        print(f"SIGKILL to the worker at checkpoint {record.checkpoint}")
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        worker = await start_worker(dsn)  # same worker_name: recovers the job at once
        while True:
            record = await backend.get_job(job_id)
            if record is None or record.state.is_final:
                break
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        await worker.wait()
        await summary(backend, job_id)


async def start_worker(dsn: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, __file__, "--worker", dsn)


async def worker(dsn: str) -> None:
    async with PostgresBackend(dsn, schema=SCHEMA) as backend:
        await runner_for(backend).run()


async def summary(backend: Backend, job_id: int) -> None:
    record = await backend.get_job(job_id)
    assert record is not None
    print(f"job {job_id} {record.state} after {record.attempts} attempts: {record.result}")
    if exported:  # the in-memory run counts items itself; worker processes have their own
        twice = sum(1 for count in exported.values() if count > 1)
        print(f"items exported: {len(exported):,} of {ITEMS:,}; done twice: {twice:,}")


async def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        await worker(sys.argv[2])
    elif dsn := os.environ.get("BATCHWORKS_DSN"):
        await on_postgres(dsn)
    else:
        await in_memory()


if __name__ == "__main__":
    asyncio.run(main())
