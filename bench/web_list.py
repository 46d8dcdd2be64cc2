"""Dashboard list pages at 1M jobs: PostgreSQL's execution time of the statements behind the
jobs list (LIST_JOB_SUMMARIES, keyset paging; LIST_JOBS, the same page with whole jobs) and the
overview, against an OFFSET page (#17).

Fills a scratch schema with ``--jobs`` finished jobs (default 1,000,000; 97% succeeded, 2%
failed with a ValueError or KeyError, 1% cancelled, in three queues), VACUUM ANALYZEs it, and
runs each statement as the backend sends it (``Queries.fill``), prepared, under ``EXPLAIN
(ANALYZE)``; the list pages with a custom plan, as the backend runs them (it sets
``plan_cache_mode = force_custom_plan`` for them: a generic plan reads the optional filters'
``$1 IS NULL OR queue = $1`` without an index), the other statements with both plans, the
worse counted. The figure is the execution time PostgreSQL reports, best of ``--rounds``; the
dashboard's target is under 200 ms for a page of the list. Three filters match few jobs (a
queue and a schedule with one job in 20,000, a schedule with none): migration 0011's
``jobs_schedule_list`` serves the schedule ones; and a batch of 50 members half way down
(read within the batch's span of ids).

The reference, in the same run: the page at the same depth fetched with ``OFFSET`` instead of
the keyset cursor, which the ratio compares with (keyset / OFFSET, lower is better).

Exits non-zero only if a page came back with the wrong rows (not the page it asked for).

Usage::

    .venv/bin/python bench/web_list.py             # 1,000,000 jobs
    .venv/bin/python bench/web_list.py --quick     # 20,000 jobs, 2 rounds (CI)
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import asyncpg
from _common import RESULTS, dsn_of, parser, ratio_line, run, scratch_schema, write_json

from batchworks import PostgresBackend
from batchworks.backends.postgres.backend import Queries

PAGE = 51  # the dashboard asks for a page of 50 and one more, to know whether there is a next
TARGET_MS = 200.0

FILL = """
INSERT INTO {schema}.jobs (queue, payload, state, attempts, max_attempts, run_at, created_at,
                           started_at, finished_at, errors, result)
SELECT (ARRAY['emails', 'reports', 'thumbnails'])[1 + i % 3],
       jsonb_build_object('to', 'user' || i || '@example.com', 'n', i),
       CASE WHEN i % 100 < 97 THEN 'succeeded' WHEN i % 100 < 99 THEN 'failed'
            ELSE 'cancelled' END,
       1, 5, t, t, t, t + interval '1 second',
       CASE WHEN i % 100 IN (97, 98) THEN jsonb_build_array(jsonb_build_object(
                'attempt', 1, 'type', CASE WHEN i % 2 = 0 THEN 'ValueError' ELSE 'KeyError' END,
                'message', 'bad input', 'traceback', NULL, 'at', t))
            ELSE '[]'::jsonb END,
       CASE WHEN i % 100 < 97 THEN '{{"sent": true}}'::jsonb END
FROM generate_series(1, $1) AS i,
     LATERAL (SELECT now() - make_interval(secs => ($1 - i) * 0.05)) AS when_(t)
"""

RARE = """
UPDATE {schema}.jobs SET queue = 'rare' WHERE id % 20000 = 0;
UPDATE {schema}.jobs SET schedule = 'hourly' WHERE id % 20000 = 10000;
"""

# A batch of 50 members half way down the history (#16), its span of ids as enqueue_batch
# keeps it.
BATCH = """
WITH b AS (
    INSERT INTO {schema}.batches (name, queue, state, total, succeeded, first_job, last_job)
    VALUES ('bench', 'emails', 'finished', 50, 50, $1::bigint, $1::bigint + 49) RETURNING id
), members AS (
    UPDATE {schema}.jobs SET batch_id = (SELECT id FROM b)
    WHERE id BETWEEN $1::bigint AND $1::bigint + 49
)
SELECT id FROM b
"""

# The reference: the same rows as a deep keyset page, reached by OFFSET.
OFFSET_PAGE = """
SELECT id, queue, payload, state, attempts, max_attempts, priority, run_at, created_at,
       started_at, finished_at, errors, result, dedupe_key, checkpoint, worker_name, timeout,
       schedule, scheduled_for, lease_until, cancel_requested
FROM {schema}.jobs ORDER BY id DESC OFFSET $1 LIMIT $2
"""


async def execution_ms(
    conn: asyncpg.Connection,
    sql: str,
    args: list[Any],
    rounds: int,
    modes: tuple[str, ...] = ("force_custom_plan", "force_generic_plan"),
) -> tuple[float, list[int]]:
    """The worse of the ``modes``' plans' best execution times, and the ids (if the statement
    returns ``id``) of its result."""
    statement = await conn.prepare(sql)
    explain = await conn.prepare(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
    worst = 0.0
    for mode in modes:
        await conn.execute(f"SET plan_cache_mode = {mode}")
        best = float("inf")
        for _ in range(rounds):
            plan = json.loads(await explain.fetchval(*args))
            best = min(best, plan[0]["Execution Time"])
        worst = max(worst, best)
    await conn.execute("RESET plan_cache_mode")
    rows = await statement.fetch(*args)
    ids = [row["id"] for row in rows] if rows and "id" in rows[0].keys() else []
    return worst, ids


async def _best_wall(call: Any, rounds: int) -> tuple[float, Any]:
    """The best wall time of ``call()`` over ``rounds``, in ms, and what it returned."""
    best, result = float("inf"), None
    for _ in range(rounds):
        started = time.perf_counter()
        result = await call()
        best = min(best, (time.perf_counter() - started) * 1000)
    return best, result


def _overview_errors(exact: Any, sampled: Any, figures: dict[str, Any]) -> list[str]:
    """What the estimated overview got wrong: a live count that differs from the exact one,
    or the finished count of a group of 10,000 jobs or more off by over 25% (its sample holds
    hundreds of them: more is a bug, not chance). Each finished group's error goes into
    ``figures``."""
    wrong, errors = [], {}
    for name, queue in exact.items():
        guess = sampled.get(name)
        for state, truth in queue.counts.items():
            got = guess.counts[state] if guess is not None else 0
            if state in ("queued", "running", "failed"):
                if got != truth:
                    wrong.append(f"overview(estimate=True): {name} {state} {got}, not {truth}")
                continue
            if truth:
                errors[f"{name} {state} ({truth:,})"] = round((got - truth) / truth, 3)
            if truth >= 10_000 and abs(got - truth) > 0.25 * truth:
                wrong.append(f"overview(estimate=True): {name} {state} {got} for {truth}")
    figures["overview_estimate_errors"] = errors
    print(
        "overview(estimate=True), error by group: "
        + ", ".join(f"{group} {error:+.1%}" for group, error in errors.items())
    )
    return wrong


async def main() -> int:
    args = parser(__doc__).parse_args()
    dsn = dsn_of(args)
    jobs = 20_000 if args.quick else 1_000_000
    rounds = 2 if args.quick else 5
    figures: dict[str, Any] = {"jobs": jobs, "page": PAGE, "target_ms": TARGET_MS}
    async with scratch_schema(dsn, "web_list") as schema:
        async with PostgresBackend(dsn, schema=schema, min_size=1) as backend:
            await backend.migrate()
        q = Queries.fill(schema)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(FILL.format(schema=f'"{schema}"'), jobs)
            # Filters that match few jobs: one in 20,000 in a queue of its own, one in 20,000
            # enqueued by a schedule, spread over the whole history.
            await conn.execute(RARE.format(schema=f'"{schema}"'))
            await conn.execute(f'VACUUM ANALYZE "{schema}".jobs')
            top = await conn.fetchval(f'SELECT max(id) FROM "{schema}".jobs')
            middle = top - jobs // 2
            # LIST_JOBS: $1 queue, $2 state, $3 schedule, $4 error type, $5 before, $6 limit
            cases = {
                "first page": [None, None, None, None, None, PAGE],
                "deep page (keyset, half way)": [None, None, None, None, middle + 1, PAGE],
                "state=failed": [None, "failed", None, None, None, PAGE],
                "queue=emails state=failed": ["emails", "failed", None, None, None, PAGE],
                "error type=KeyError": [None, None, None, "KeyError", None, PAGE],
                "deep page of state=failed": [None, "failed", None, None, middle + 1, PAGE],
                "schedule=none (no match)": [None, None, "none", None, None, PAGE],
                "queue=rare (1 in 20,000)": ["rare", None, None, None, None, PAGE],
                "schedule=hourly (1 in 20,000)": [None, None, "hourly", None, None, PAGE],
                "queue=none (no match)": ["none", None, None, None, None, PAGE],
            }
            # LIST_JOB_SUMMARIES binds a JobFilter's up_to ($5, None here) and batch_id ($6)
            # before the cursor
            summaries = {name: [*p[:4], None, None, *p[4:]] for name, p in cases.items()}
            batch = await conn.fetchval(BATCH.format(schema=f'"{schema}"'), middle)
            summaries["batch (50 members half way)"] = [*[None] * 5, batch, None, PAGE]
            list_ms = {}
            wrong = []
            for name in summaries:
                # The backend runs the list under plan_cache_mode = force_custom_plan
                # (_reads.py: a generic plan cannot use an index for an optional filter).
                ms, ids = await execution_ms(
                    conn, q.list_job_summaries, summaries[name], rounds, ("force_custom_plan",)
                )
                list_ms[name] = ms
                print(f"list {name:<32} {ms:8.2f} ms  ({len(ids)} rows)")
                if name.startswith("deep page (keyset") and ids[:1] != [middle]:
                    wrong.append(name)
                if name.startswith("batch") and ids != list(range(middle + 49, middle - 1, -1)):
                    wrong.append(name)
            offset_ms, offset_ids = await execution_ms(
                conn, OFFSET_PAGE.format(schema=f'"{schema}"'), [top - middle, PAGE], rounds
            )
            _, keyset_ids = await execution_ms(
                conn, q.list_jobs, cases["deep page (keyset, half way)"], 1
            )
            if offset_ids != keyset_ids:
                wrong.append("the OFFSET page and the keyset page differ")
            print(f"list {'deep page (OFFSET, reference)':<32} {offset_ms:8.2f} ms")
            whole = {}
            for name in ("first page", "deep page (keyset, half way)"):
                whole[name], _ = await execution_ms(conn, q.list_jobs, cases[name], rounds)
                print(f"list_jobs (whole jobs) {name:<32} {whole[name]:8.2f} ms")
            overview_ms, _ = await execution_ms(conn, q.overview, [], rounds)
            # THROUGHPUT: $1 since (None: the whole window), $2 a bucket's seconds, $3 the window
            throughput_ms, _ = await execution_ms(conn, q.throughput, [None, 60.0, 3600.0], rounds)
            since = await conn.fetchval("SELECT extract(epoch FROM now())::float8 - 240")
            refresh_ms, _ = await execution_ms(conn, q.throughput, [since, 60.0, 3600.0], rounds)
            print(f"overview (counts by queue and state) {overview_ms:8.2f} ms")
            print(f"overview (last hour's throughput)    {throughput_ms:8.2f} ms")
            print(f"overview (throughput, a refresh: 4 min) {refresh_ms:6.2f} ms")
            async with PostgresBackend(dsn, schema=schema, min_size=1, max_size=1) as backend:
                exact_wall, exact = await _best_wall(backend.overview, rounds)
                sampled_wall, sampled = await _best_wall(
                    lambda: backend.overview(estimate=True), rounds
                )
            print(f"overview(), the whole call            {exact_wall:8.2f} ms")
            print(f"overview(estimate=True), the dashboard's {sampled_wall:5.2f} ms")
            wrong += _overview_errors(exact, sampled, figures)
        finally:
            await conn.close()
    worst = max(list_ms.values())
    figures |= {
        "list_ms": list_ms,
        "offset_reference_ms": offset_ms,
        "list_jobs_whole_ms": whole,
        "overview_ms": overview_ms,
        "overview_call_ms": exact_wall,
        "overview_estimate_call_ms": sampled_wall,
        "throughput_ms": throughput_ms,
        "throughput_refresh_ms": refresh_ms,
        "worst_list_ms": worst,
    }
    print(
        f"worst list page: {worst:.2f} ms of database time "
        f"(target < {TARGET_MS:.0f} ms: {'met' if worst < TARGET_MS else 'MISSED'})"
    )
    print(
        ratio_line(
            "deep page keyset/OFFSET", list_ms["deep page (keyset, half way)"], offset_ms, "<= 1"
        )
    )
    print(ratio_line("throughput refresh/first read", refresh_ms, throughput_ms, "<= 0.25"))
    print(ratio_line("overview estimate/exact (the calls)", sampled_wall, exact_wall, "<= 0.25"))
    write_json(
        args.json or (None if args.quick else RESULTS / "web_list.json"), "web_list", figures
    )
    if wrong:
        print(f"error: wrong rows: {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(main()))
