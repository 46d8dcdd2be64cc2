"""A long-running service that runs its jobs in the background with ``async with Runner(...)``.

What it shows:

- ``async with runner:`` starts the runner in the background of a service's own main loop,
  and leaving the block stops it gracefully (running jobs finish, unstarted ones go back);
- the service enqueues a job for each order it takes. On PostgreSQL (``BATCHWORKS_DSN`` set)
  it does so inside the same transaction as the order itself, with ``connection=``: the job
  exists only if the order commits, and the runner is woken at the commit;
- SIGTERM/SIGINT handled by the service, which then leaves the ``async with`` block.

The service takes 30 orders over about two seconds and then shuts down by itself, so it runs
as a demo; a real one would wait for a signal. Run it from the repository root::

    .venv/bin/python examples/service.py
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from typing import Any

import asyncpg

from batchworks import Backend, Job, MemoryBackend, PostgresBackend, Runner

ORDERS = 30
SCHEMA = os.environ.get("BATCHWORKS_SCHEMA", "batchworks_service_example")

receipts_sent: list[int] = []


async def send_receipt(job: Job) -> dict[str, Any]:
    await asyncio.sleep(random.uniform(0.005, 0.03))  # the mail provider's API call
    receipts_sent.append(job.payload["order"])
    return {"sent_to": job.payload["email"]}


async def take_orders(backend: Backend, pool: asyncpg.Pool | None, stop: asyncio.Event) -> int:
    """The service's own work: take orders and ask for a receipt for each."""
    for number in range(1, ORDERS + 1):
        if stop.is_set():
            return number - 1
        order = {"order": number, "email": f"customer{number}@example.com"}
        if pool is None:
            await backend.enqueue("receipts", order)
        else:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.orders (id, email) VALUES ($1, $2)",
                    order["order"],
                    order["email"],
                )
                # The same transaction: no receipt for an order that rolls back.
                await backend.enqueue("receipts", order, connection=conn)
        await asyncio.sleep(0.06)
    return ORDERS


async def main() -> None:
    dsn = os.environ.get("BATCHWORKS_DSN")
    backend: Backend = PostgresBackend(dsn, schema=SCHEMA) if dsn else MemoryBackend()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2) if dsn else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with backend:
            await backend.migrate()
            if pool is not None:
                await pool.execute(
                    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.orders (id int PRIMARY KEY, email text)"
                )
                await pool.execute(f"TRUNCATE {SCHEMA}.orders")
            runner = Runner(backend, {"receipts": send_receipt}, concurrency=5, shutdown_timeout=5)
            async with runner:  # the runner works in the background from here on
                taken = await take_orders(backend, pool, stop)
                print(f"took {taken} orders; shutting down")
            # Leaving the block stopped the runner gracefully: its jobs are settled.
            report = runner.report
            print(f"receipts sent: {len(receipts_sent)} of {taken} orders")
            print(f"runner: succeeded {report.succeeded}, failed {report.failed}")
    finally:
        if pool is not None:
            await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
