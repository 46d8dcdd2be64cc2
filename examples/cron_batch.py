"""One cron run: drain a queue with ``run_until_empty()`` and exit 0, or 1 if a job failed.

What it shows: the shape of a nightly batch run from cron or a Kubernetes CronJob. It
enqueues tonight's invoices (with a ``dedupe_key`` each, so that a cron run started twice
does not bill twice), drains the queue, prints the ``RunReport``, and turns it into the exit
code a scheduler alerts on. The same run from the command line, without writing this file:
``batchworks run myapp.jobs:make_runner --until-empty``.

Run it from the repository root::

    .venv/bin/python examples/cron_batch.py; echo "exit code $?"
"""

from __future__ import annotations

import asyncio
import os
import sys

import tenacity

from batchworks import Backend, Job, MemoryBackend, PostgresBackend, RetryPolicy, Runner

CUSTOMERS = 200


async def send_invoice(job: Job) -> dict[str, int]:
    customer = job.payload["customer"]
    if customer % 50 == 13 and job.attempt == 1:
        raise ConnectionError("billing API timed out")  # transient: retried
    await asyncio.sleep(0.002)
    return {"amount_cents": 1000 + customer}


async def main() -> int:
    dsn = os.environ.get("BATCHWORKS_DSN")
    backend: Backend = (
        PostgresBackend(dsn, schema=os.environ.get("BATCHWORKS_SCHEMA", "batchworks_cron_example"))
        if dsn
        else MemoryBackend()
    )
    async with backend:
        await backend.migrate()
        night = "2026-11-23"
        await backend.enqueue_many(
            "invoices",
            [{"customer": c, "night": night} for c in range(CUSTOMERS)],
            dedupe_keys=[f"{night}:{c}" for c in range(CUSTOMERS)],
        )
        policy = RetryPolicy(max_attempts=3, wait=tenacity.wait_fixed(0.1))
        runner = Runner(backend, {"invoices": send_invoice}, concurrency=20, retry=policy)
        report = await runner.run_until_empty(max_delay=1.0)
    print(
        f"invoices: succeeded {report.succeeded}, failed {report.failed}, "
        f"retried {report.retried} in {report.duration:.2f}s"
    )
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
