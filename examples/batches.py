"""Batches: a nightly import of 1,000 rows as one batch, with progress, a report run exactly
once when every row is done, and another only if every row succeeded.

What it shows:

- ``enqueue_batch`` with ``on_complete`` and ``on_success`` callbacks (``Callback(queue,
  payload)``): the rows and the batch are stored in one go;
- a handler that adds to its own batch (``job.batch_id``): rows that need a second pass;
- ``wait_batch`` (woken when the last row ends, no polling), then ``wait_job`` for the
  callback's job;
- the callback's handler reading the batch and its failures, and ``batch_results`` streaming
  the rows' results in pages;
- ``on_success`` never running here: some rows fail for good.

Run it from the repository root::

    .venv/bin/python examples/batches.py

It uses the in-memory backend; with ``BATCHWORKS_DSN`` set it runs on PostgreSQL (schema
``batchworks_example_batches``).
"""

from __future__ import annotations

import asyncio
import os

from batchworks import (
    Backend,
    BatchRecord,
    Callback,
    Job,
    MemoryBackend,
    PostgresBackend,
    Runner,
    Terminal,
)

SCHEMA = "batchworks_example_batches"
ROWS = 1_000


async def main() -> None:
    dsn = os.environ.get("BATCHWORKS_DSN")
    backend: Backend = PostgresBackend(dsn, schema=SCHEMA) if dsn else MemoryBackend()
    reports: list[str] = []

    async def import_row(job: Job) -> object:
        row = job.payload["row"]
        if job.payload.get("pass") != 2 and row % 100 == 7:  # needs a second pass
            assert job.batch_id is not None
            await backend.add_to_batch(job.batch_id, [{"row": row, "pass": 2}])
        if row % 250 == 3:
            raise Terminal(f"row {row}: no such customer")
        return {"row": row, "imported": True}

    async def report(job: Job) -> None:
        batch = await backend.get_batch(job.payload["batch_id"])
        assert batch is not None
        failures = await backend.batch_failures(batch.id)
        imported = 0
        async for member in backend.batch_results(batch.id, page_size=200):
            imported += member.result is not None
        reports.append(
            f"{job.payload['callback']}: batch {batch.id} {batch.state.value}, "
            f"{batch.succeeded} of {batch.total} rows imported ({imported} results read), "
            f"{batch.failed} failed: "
            + "; ".join(f"{f.count}x {f.type}: {f.message}" for f in failures)
        )

    async with backend:
        await backend.migrate()
        batch = await backend.enqueue_batch(
            "rows",
            [{"row": i} for i in range(ROWS)],
            name="nightly import",
            on_complete=Callback("reports", {"to": "ops"}),
            on_success=Callback("reports", {"to": "ceo"}),
        )
        print(f"enqueued batch {batch.id}: {len(batch.job_ids)} rows")
        runner = Runner(backend, {"rows": import_row, "reports": report}, concurrency=50)
        async with runner:
            record: BatchRecord = await backend.wait_batch(batch.id, timeout=30)
            print(
                f"batch {record.id} done: {record.progress:.0%} of {record.total} members, "
                f"{record.succeeded} succeeded, {record.failed} failed"
            )
            assert record.complete_job is not None  # enqueued by the step that ended the last row
            await backend.wait_job(record.complete_job, timeout=30)
        for line in reports:
            print(line)
        print(f"on_success enqueued: {record.success_job is not None}")
        if dsn:
            await backend.purge(0)


if __name__ == "__main__":
    asyncio.run(main())
