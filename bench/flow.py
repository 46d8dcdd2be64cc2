"""Flow control's cost (#14): the same drain of N no-op jobs with and without queue limits,
and the unlimited drain against the claim of the version before flow control.

In one process, one ``Runner(concurrency=100, batch_size=100)`` on a ``PostgresBackend``
drains N queued no-op jobs (``run_until_empty``; only the drain is timed), on a fresh schema
per drain, four ways, alternating round after round (the best round of each counts):

- unlimited: a queue with nothing set (the reference);
- concurrency 100: ``configure_queue(q, concurrency=100)``: every claim takes the queue's row
  lock and counts its running jobs;
- 1,000 keys: ``key_concurrency=1``, the jobs spread over 1,000 ``concurrency_key`` values;
- today: the claim statement of the version before flow control (``TODAY_CLAIM_ONE`` below, no
  probe of the queues table) on a schema without the index of running jobs migration 7 adds
  (``jobs_slots``): what an unlimited queue cost before #14.

Targets: concurrency 100 >= 0.85x unlimited, 1,000 keys >= 0.7x unlimited, unlimited within
noise of today (>= 0.95x). Exits non-zero only if a drain did not run every job.

Usage::

    .venv/bin/python bench/flow.py              # 20,000 jobs, 3 rounds
    .venv/bin/python bench/flow.py --quick      # 1,000 jobs, one round (CI)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from _common import (
    RESULTS,
    dsn_of,
    median,
    parser,
    rate,
    ratio_line,
    run,
    scratch_schema,
    write_json,
)

from batchworks import Job, PostgresBackend, Runner
from batchworks.backends.base import ClaimedJob, WorkerToken
from batchworks.backends.postgres.backend import _claimed

MODES = ("unlimited", "concurrency 100", "1,000 keys", "today")
TARGETS = {"concurrency 100": ">= 0.85", "1,000 keys": ">= 0.7", "today": ">= 0.95"}
KEYS = 1000
CONCURRENCY = 100
BATCH_SIZE = 100

# CLAIM_ONE as it was on main without flow control (#14), for the "today" drain (with a NULL
# batch_id, the column batches (#16) added, and started_at, which the settle's fence of the
# claim reads, for _claimed).
TODAY_CLAIM_ONE = """
WITH claimed AS (
    UPDATE __SCHEMA__.jobs AS j
    SET state = 'running',
        attempts = j.attempts + 1,
        max_attempts = coalesce(j.max_attempts, $5),
        worker_token = $1,
        worker_name = w.name,
        started_at = now(),
        lease_until = now() + make_interval(secs => $4)
    FROM __SCHEMA__.workers AS w
    WHERE w.token = $1 AND w.state = 'active'
      AND (SELECT set_config('synchronous_commit', 'off', true)) = 'off'
      AND j.id = ANY(ARRAY(
          SELECT id FROM __SCHEMA__.jobs
          WHERE state = 'queued' AND queue = $2 AND run_at <= now()
          ORDER BY priority DESC, run_at, id
          LIMIT $3
          FOR UPDATE SKIP LOCKED))
    RETURNING j.id, j.queue, j.payload, j.attempts, j.max_attempts, j.checkpoint, j.timeout,
              j.trace_context, extract(epoch FROM now() - j.run_at)::float8 AS waited,
              CASE WHEN jsonb_array_length(j.errors) = 0 THEN 0
                   ELSE (SELECT count(*)::int FROM jsonb_array_elements(j.errors) AS e
                         WHERE e ->> 'type' = 'WorkerLost') END AS lost,
              j.priority, j.run_at, j.schedule, j.scheduled_for, j.started_at
)
SELECT id, queue, payload, attempts, max_attempts, checkpoint, timeout, trace_context, waited,
       lost, schedule, scheduled_for, NULL::bigint AS batch_id, started_at
FROM claimed ORDER BY priority DESC, run_at, id
"""


class TodayBackend(PostgresBackend):
    """The backend with the claim of one queue as it was before flow control."""

    async def claim(
        self,
        worker: WorkerToken,
        queues: Sequence[str],
        limit: int,
        *,
        lease: float,
        max_attempts: int,
        caps: Any = None,
    ) -> list[ClaimedJob]:
        statement = TODAY_CLAIM_ONE.replace("__SCHEMA__", f'"{self.schema}"')
        rows = await self._fetch(statement, worker, queues[0], limit, lease, max_attempts)
        return [_claimed(row) for row in rows]


async def noop(job: Job) -> None:
    """The job: does nothing, so what is measured is claiming and settling it."""


async def drain(dsn: str, mode: str, jobs: int, batch_size: int) -> float:
    """Seconds the drain of ``jobs`` took in ``mode``."""
    async with scratch_schema(dsn, "bench_flow") as schema:
        kind = TodayBackend if mode == "today" else PostgresBackend
        async with kind(dsn, schema=schema) as backend:
            await backend.migrate()
            keys = None
            if mode == "today":
                # Before #14 the running jobs had one index, jobs_running (by worker), and no
                # jobs_slots; migration 12 drops jobs_running instead, so it is put back here.
                pool = backend._require_pool()
                await pool.execute(
                    f'CREATE INDEX IF NOT EXISTS jobs_running ON "{schema}".jobs (worker_token) '
                    "WHERE state = 'running'"
                )
                await pool.execute(f'DROP INDEX "{schema}".jobs_slots')
            elif mode == "concurrency 100":
                await backend.configure_queue("q", concurrency=CONCURRENCY)
            elif mode == "1,000 keys":
                await backend.configure_queue("q", key_concurrency=1)
                keys = [f"k{i % KEYS}" for i in range(jobs)]
            for start in range(0, jobs, 10_000):
                chunk = slice(start, start + 10_000)
                await backend.enqueue_many(
                    "q",
                    [None] * len(range(jobs)[chunk]),
                    concurrency_keys=None if keys is None else keys[chunk],
                )
            runner = Runner(backend, {"q": noop}, concurrency=CONCURRENCY, batch_size=BATCH_SIZE)
            began = time.perf_counter()
            report = await runner.run_until_empty()
            elapsed = time.perf_counter() - began
    if report.succeeded != jobs:
        sys.exit(f"error: {mode}: {report.succeeded} of {jobs} jobs succeeded: {report}")
    return elapsed


async def main() -> None:
    parse = parser(__doc__)
    parse.add_argument("--jobs", type=int, default=20_000, help="jobs per drain")
    parse.add_argument("--rounds", type=int, default=3, help="rounds per mode; best counts")
    parse.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="the Runner's")
    args = parse.parse_args()
    dsn = dsn_of(args)
    jobs, rounds = (1_000, 1) if args.quick else (args.jobs, args.rounds)
    print(
        f"flow: {jobs:,} no-op jobs, 1 Runner in-process, concurrency {CONCURRENCY}, "
        f"batch_size {args.batch_size}, best of {rounds}"
    )
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(1, rounds + 1):
        for mode in MODES:  # alternating: drift hits every mode alike
            times[mode].append(await drain(dsn, mode, jobs, args.batch_size))
        print(f"  round {round_}: " + ", ".join(f"{m} {t[-1]:.2f}s" for m, t in times.items()))
    rates = {mode: jobs / min(spent) for mode, spent in times.items()}
    medians = {mode: jobs / median(spent) for mode, spent in times.items()}
    for mode in MODES:
        print(f"{mode:<16} {rate(rates[mode])} best, {rate(medians[mode])} median")
    print(
        ratio_line(
            "concurrency 100 / unlimited",
            rates["concurrency 100"],
            rates["unlimited"],
            TARGETS["concurrency 100"],
        )
    )
    print(
        ratio_line(
            "1,000 keys / unlimited", rates["1,000 keys"], rates["unlimited"], TARGETS["1,000 keys"]
        )
    )
    print(ratio_line("unlimited / today", rates["unlimited"], rates["today"], TARGETS["today"]))
    print(
        "medians: "
        + ", ".join(
            f"{name} {medians[mode] / medians[ref]:.2f}x"
            for name, mode, ref in (
                ("concurrency 100 / unlimited", "concurrency 100", "unlimited"),
                ("1,000 keys / unlimited", "1,000 keys", "unlimited"),
                ("unlimited / today", "unlimited", "today"),
            )
        )
    )
    figures = {"jobs": jobs, "rounds": rounds, "rates": rates, "medians": medians}
    write_json(args.json or (None if args.quick else RESULTS / "flow.json"), "flow", figures)


if __name__ == "__main__":
    run(main(), use_uvloop=parser(None).parse_known_args()[0].uvloop)
