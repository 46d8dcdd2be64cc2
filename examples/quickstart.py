"""Quickstart: sync 2,000 customer records to a (simulated) CRM with batchworks.

What it shows, in one run of about three seconds:

- enqueueing a batch of jobs with ``enqueue_many`` and draining it with a ``Runner``
  (``concurrency`` handler calls at once, jobs claimed ``batch_size`` at a time);
- each job settled on its own: one bad record never fails or re-runs its neighbours;
- transient errors (``ConnectionError``, ``TimeoutError``) retried with exponential backoff
  and jitter, and given up on after ``max_attempts``;
- errors no retry can fix (a ``ValueError`` the policy calls terminal, or ``Terminal``)
  failing at once;
- ``Snooze`` for a rate limit: the job runs again later without using an attempt;
- live progress from ``runner.report``, and each failed job's error history read back with
  ``backend.get_job(id)``.

Run it from the repository root::

    make demo                            # or: .venv/bin/python examples/quickstart.py

It uses the in-memory backend, so it needs no database; with ``BATCHWORKS_DSN`` set it runs
the same batch on PostgreSQL (schema ``batchworks``).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import tenacity

from batchworks import (
    Backend,
    Job,
    JobState,
    MemoryBackend,
    PostgresBackend,
    RetryPolicy,
    Runner,
    RunReport,
    Snooze,
    Terminal,
)

QUEUE = "crm-sync"
RECORDS = 2_000
SEED = 2024  # the same records and the same troubles on every run
PROGRESS_EVERY = 0.25  # seconds


# -- a simulated CRM ------------------------------------------------------------------------


class RateLimited(Exception):
    """The CRM asks us to come back later (an HTTP 429 with Retry-After)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after}s")
        self.retry_after = retry_after


class FakeCRM:
    """Answers in 5-25 ms, and misbehaves for some customers like a real one does.

    Which customers get which trouble is drawn once from a seeded ``random.Random``, so every
    run of the demo has the same flaky, closed and rate-limited accounts.
    """

    def __init__(self, customer_ids: list[str], rng: random.Random) -> None:
        self._rng = rng
        self._calls: Counter[str] = Counter()
        # customer id -> (trouble, how many calls it lasts)
        self._trouble: dict[str, tuple[str, int]] = {}
        for customer_id in customer_ids:
            roll = rng.random()
            if roll < 0.08:
                self._trouble[customer_id] = ("flaky", rng.choice((1, 1, 2)))
            elif roll < 0.085:
                self._trouble[customer_id] = ("down", 99)  # outlasts every retry
            elif roll < 0.09:
                self._trouble[customer_id] = ("closed", 99)
            elif roll < 0.10:
                self._trouble[customer_id] = ("rate_limited", 1)

    async def upsert(self, customer: dict[str, Any]) -> str:
        await asyncio.sleep(self._rng.uniform(0.005, 0.025))  # the network round trip
        customer_id = customer["id"]
        self._calls[customer_id] += 1
        trouble, lasts = self._trouble.get(customer_id, ("none", 0))
        if self._calls[customer_id] <= lasts:
            if trouble == "flaky":
                raise self._rng.choice(
                    (ConnectionError("connection reset by CRM"), TimeoutError("CRM timed out"))
                )
            if trouble == "down":
                raise ConnectionError("CRM shard unreachable")
            if trouble == "closed":
                raise Terminal("account is closed in the CRM")
            if trouble == "rate_limited":
                raise RateLimited(retry_after=round(self._rng.uniform(0.2, 0.5), 2))
        return f"crm-{customer_id}"


def make_customers(rng: random.Random) -> list[dict[str, Any]]:
    """Customer records as an export would give them: about 2% have a broken email."""
    customers = []
    for n in range(1, RECORDS + 1):
        email = f"customer{n}@example.com"
        if rng.random() < 0.02:
            email = email.replace("@", " at ")
        plan = rng.choice(("free", "team", "enterprise"))
        customers.append({"id": f"C{n:05d}", "email": email, "plan": plan})
    return customers


# -- the handler ----------------------------------------------------------------------------


def make_handler(crm: FakeCRM) -> Callable[[Job], Awaitable[dict[str, str]]]:
    async def sync_customer(job: Job) -> dict[str, str]:
        customer = job.payload
        if "@" not in customer["email"]:
            # Bad data: the policy below treats ValueError as terminal, so no retry is wasted.
            raise ValueError("email address is not valid")
        try:
            crm_id = await crm.upsert(customer)
        except RateLimited as exc:
            # Being throttled is not a failure: Snooze gives the attempt back.
            raise Snooze(exc.retry_after) from exc
        return {"crm_id": crm_id}  # kept as the job's result (JSON)

    return sync_customer


# -- progress and summary -------------------------------------------------------------------


def progress_line(report: RunReport) -> str:
    done = report.succeeded + report.failed
    return (
        f"{done:>5,}/{RECORDS:,} done | succeeded {report.succeeded:,} | "
        f"failed {report.failed:,} | retried {report.retried:,} | snoozed {report.snoozed:,}"
    )


async def show_progress(runner: Runner) -> None:
    # On a terminal one line is rewritten in place; in a log or a pipe, one line per tick.
    tty = sys.stdout.isatty()
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        line = progress_line(runner.report)
        print(f"\r{line}" if tty else line, end="" if tty else "\n", flush=True)


async def failure_reasons(backend: MemoryBackend, ids: list[int]) -> dict[str, list[int]]:
    """Group the failed jobs by the last error in their history."""
    reasons: dict[str, list[int]] = defaultdict(list)
    for job_id in ids:
        record = await backend.get_job(job_id)
        if record is None or record.state is not JobState.FAILED:
            continue
        last = record.errors[-1]
        attempts = "" if record.attempts == 1 else f" (after {record.attempts} attempts)"
        reasons[f"{last['type']}: {last['message']}{attempts}"].append(job_id)
    return reasons


def print_summary(report: RunReport, reasons: dict[str, list[int]]) -> None:
    rate = RECORDS / report.duration if report.duration else float("inf")
    print()
    print(f"Synced {RECORDS:,} customer records in {report.duration:.2f}s ({rate:,.0f} jobs/s)")
    print(f"  succeeded  {report.succeeded:>6,}")
    print(f"  failed     {report.failed:>6,}")
    print(f"  retried    {report.retried:>6,}  times (transient errors, backed off and run again)")
    print(f"  snoozed    {report.snoozed:>6,}  times (rate limited; no attempt used)")
    print()
    print("Failures by reason:")
    for reason, job_ids in sorted(reasons.items(), key=lambda item: -len(item[1])):
        examples = ", ".join(map(str, job_ids[:3])) + (", ..." if len(job_ids) > 3 else "")
        print(f"  {len(job_ids):>4}  {reason}  [jobs {examples}]")


# -- main -----------------------------------------------------------------------------------


async def main() -> None:
    dsn = os.environ.get("BATCHWORKS_DSN")
    backend: Backend = PostgresBackend(dsn) if dsn else MemoryBackend()

    rng = random.Random(SEED)
    customers = make_customers(rng)
    crm = FakeCRM([customer["id"] for customer in customers], rng)

    policy = RetryPolicy(
        max_attempts=4,
        # 0.05 s, 0.1 s, 0.2 s ... up to 0.5 s, plus up to 0.05 s of jitter so that jobs that
        # failed together do not retry in lockstep. (tenacity's wait_exponential_jitter does
        # the same, but its `initial=` is deprecated from tenacity 9.2 and `multiplier=` does
        # not exist before it.)
        wait=tenacity.wait_exponential(multiplier=0.05, max=0.5) + tenacity.wait_random(0, 0.05),
        # Every exception is worth a retry except ValueError: bad data stays bad.
        retry=tenacity.retry_if_not_exception_type(ValueError),
    )
    runner = Runner(
        backend,
        {QUEUE: make_handler(crm)},
        concurrency=50,  # CRM calls in flight at once
        batch_size=100,  # jobs claimed, and outcomes written, per backend call
        retry=policy,
    )

    async with backend:
        await backend.migrate()  # creates the tables on PostgreSQL; nothing to do in memory
        ids = await backend.enqueue_many(QUEUE, customers)
        print(f"Enqueued {len(ids):,} jobs on queue {QUEUE!r}; syncing...")

        progress = asyncio.create_task(show_progress(runner))
        try:
            # Drain the queue. max_delay keeps the run going while retries and snoozes fall due
            # within 2 s, so they finish in this run instead of waiting for the next one.
            report = await runner.run_until_empty(max_delay=2.0)
        finally:
            progress.cancel()
        print(("\r" if sys.stdout.isatty() else "") + progress_line(report))

        reasons = await failure_reasons(backend, ids)
        print_summary(report, reasons)

        unfinished = RECORDS - report.succeeded - report.failed
        if unfinished:
            sys.exit(f"error: {unfinished} jobs did not reach a final state")


if __name__ == "__main__":
    asyncio.run(main())
