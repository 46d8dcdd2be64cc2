"""Scale: the cost per job as the backlog and the history grow, and the claim's query plan.

Each case gets a fresh batchworks schema of its own with a backlog of queued no-op jobs
(``enqueue_many``) and, in the history case, finished jobs (inserted directly as ``succeeded``,
as a vacuumed table holds them). Then, round after round, the cases alternating (so that the
machine's drift over the run hits them alike), a worker process (``Runner(concurrency=100,
batch_size=100)``) drains ``--drain`` jobs off the top of a case's backlog and stops; the
backlog is topped up again, and the best of ``--rounds`` counts. Cases: 10k, 100k and 1M
queued; 10k queued with 1M finished. The rate at 10k is the reference: the others should stay
within 20% of it.

Each case runs twice: as enqueued (no planner statistics yet: the state right after a bulk
enqueue, before autovacuum's ANALYZE, and for good where autovacuum is off), and after
``ANALYZE``. Before draining, the claim statement is run under ``EXPLAIN (ANALYZE, BUFFERS)`` in a
transaction that is rolled back; the benchmark prints which index it used, and the whole plan
for the largest case.

Each drain is bounded by ``--max-seconds``. Exits non-zero only if no job ran.

Usage::

    .venv/bin/python bench/scale.py             # 10k/100k/1M backlog, 1M history
    .venv/bin/python bench/scale.py --quick     # 1k/5k backlog, 5k history (CI)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from _common import (
    QUEUE,
    RESULTS,
    describe_machine,
    dsn_of,
    parser,
    rate,
    ratio_line,
    run,
    run_workers,
    scratch_schema,
    summarize,
    worker_command,
    write_json,
)

from batchworks import PostgresBackend
from batchworks.backends._flow import lookahead

CHUNK = 10_000


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    backlog: int
    history: int


FULL = (
    Case("backlog 10k", 10_000, 0),
    Case("backlog 100k", 100_000, 0),
    Case("backlog 1M", 1_000_000, 0),
    Case("backlog 10k + 1M finished", 10_000, 1_000_000),
)
QUICK = (
    Case("backlog 1k", 1_000, 0),
    Case("backlog 5k", 5_000, 0),
    Case("backlog 1k + 5k finished", 1_000, 5_000),
)


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--drain", type=int, default=8_000, help="jobs drained per round")
    parse.add_argument("--rounds", type=int, default=5)
    parse.add_argument("--max-seconds", type=float, default=20.0, help="bound on one drain")
    parse.add_argument("--no-stats-only", action="store_true", help="skip the ANALYZE runs")
    args = parse.parse_args()
    dsn = dsn_of(args)
    cases, drain, rounds = (QUICK, 300, 1) if args.quick else (FULL, args.drain, args.rounds)
    variants = (False,) if args.quick or args.no_stats_only else (False, True)
    print(await describe_machine(dsn, args.uvloop))
    print(f"scale: drain {drain:,} jobs a round off each backlog, best of {rounds}")
    results: dict[str, dict[str, Any]] = {}
    async with contextlib.AsyncExitStack() as stack:
        schemas = [
            await stack.enter_async_context(scratch_schema(dsn, f"bench_scale_c{i}"))
            for i in range(len(cases))
        ]
        for analyzed in variants:
            label = "after ANALYZE" if analyzed else "no statistics"
            print(f"{label}:")
            measured = await measure(
                dsn, list(zip(cases, schemas, strict=True)), drain, rounds, analyzed, args
            )
            for case in cases:
                found = results[f"{case.name}, {label}"] = measured[case.name]
                print(
                    f"  {case.name:<28}{rate(found['rate'])}  "
                    f"({1e6 / found['rate']:.1f} us/job)  claim via {found['index']}, "
                    f"{found['claim_ms']:.2f} ms",
                    flush=True,
                )
                if found["done"] == 0:
                    print(f"error: no job ran in case {case.name}, {label}", file=sys.stderr)
                    return 1
            if not args.quick:
                print(f"  claim plan, {cases[-2].name}, {label}:")
                print("\n".join("    " + line for line in measured[cases[-2].name]["plan"]))
    for analyzed in variants:
        label = "after ANALYZE" if analyzed else "no statistics"
        reference = results[f"{cases[0].name}, {label}"]["rate"]
        for case in cases[1:]:
            value = results[f"{case.name}, {label}"]["rate"]
            print(ratio_line(f"{case.name}/{cases[0].name} ({label})", value, reference, ">= 0.8"))
    if not args.quick:
        for found in results.values():
            found.pop("plan", None)
        write_json(args.json or RESULTS / "scale.json", "scale", {"drain": drain, **results})
    return 0


async def measure(
    dsn: str,
    cases: list[tuple[Case, str]],
    drain: int,
    rounds: int,
    analyzed: bool,
    args: Any,
    *,
    before: Callable[[asyncpg.Connection, Case, str], Awaitable[None]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Build every case's backlog in its own schema, then drain them round after round, the
    cases alternating, so that the machine's drift over the run hits every case alike.

    :param before: called with each case once its backlog is queued, before any statistics
        and plan are taken (``retention.py`` writes its history there)."""
    conn = await asyncpg.connect(dsn)
    plans: dict[str, list[str]] = {}
    best = {case.name: 0.0 for case, _ in cases}
    done = {case.name: 0 for case, _ in cases}
    try:
        async with contextlib.AsyncExitStack() as stack:
            backends = {}
            for case, schema in cases:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                backend = await stack.enter_async_context(PostgresBackend(dsn, schema=schema))
                await backend.migrate()
                await top_up(backend, case.backlog)
                if case.history:
                    await conn.execute(
                        f'INSERT INTO "{schema}".jobs (queue, payload, state, attempts, '
                        "started_at, finished_at) SELECT $1, jsonb_build_object('n', g), "
                        "'succeeded', 1, now(), now() FROM generate_series(1, $2) AS g",
                        QUEUE,
                        case.history,
                    )
                if before is not None:
                    await before(conn, case, schema)
                if analyzed:
                    await conn.execute(f'ANALYZE "{schema}".jobs')
                plans[case.name] = await explain_claim(backend, conn)
                backends[case.name] = backend
            for _ in range(rounds):
                for case, schema in cases:
                    command = worker_command(
                        "batchworks",
                        dsn,
                        schema=schema,
                        batch_size=100,
                        concurrency=100,
                        stop_after=drain,
                        max_seconds=args.max_seconds,
                        uvloop=args.uvloop,
                    )
                    results, _ = await run_workers([command], within=args.max_seconds + 60)
                    found = summarize("batchworks", results[0].done, results)
                    best[case.name] = max(best[case.name], found.rate)
                    done[case.name] = max(done[case.name], found.done)
                    backend = backends[case.name]
                    await top_up(backend, case.backlog - await queued(conn, schema))
    finally:
        await conn.close()
    return {
        name: {
            "rate": best[name],
            "done": done[name],
            "index": _claim_index(plan),
            "claim_ms": _claim_ms(plan),
            "plan": plan,
        }
        for name, plan in plans.items()
    }


def _claim_index(plan: list[str]) -> str:
    """The index the claim reads its candidates from, as EXPLAIN names it."""
    return next(
        (
            line.split(" using ")[1].split()[0]
            for line in plan
            if " using " in line and "jobs_pkey" not in line and "workers_pkey" not in line
        ),
        "?",
    )


def _claim_ms(plan: list[str]) -> float:
    return next(
        (
            float(line.split(":")[1].split()[0])
            for line in plan
            if line.startswith("Execution Time")
        ),
        float("nan"),
    )


async def top_up(backend: PostgresBackend, count: int) -> None:
    for start in range(0, max(0, count), CHUNK):
        await backend.enqueue_many(
            QUEUE, [{"n": i} for i in range(start, min(start + CHUNK, count))]
        )


async def queued(conn: asyncpg.Connection, schema: str) -> int:
    return int(
        await conn.fetchval(f"SELECT count(*) FROM \"{schema}\".jobs WHERE state = 'queued'")
    )


async def explain_claim(backend: PostgresBackend, conn: asyncpg.Connection) -> list[str]:
    """The claim of 100 jobs under EXPLAIN ANALYZE, rolled back: batchworks' own statement,
    read from its backend (internal: if that changes shape, the plan is skipped)."""
    token = await backend.register_worker("bench-explain", [QUEUE])
    try:
        claim = backend._q.claim_one  # a runner of one queue claims with this one
        async with conn.transaction():
            # The arguments PostgresBackend.claim passes: no runner cap, its key look-ahead.
            args = (token, QUEUE, 100, 30.0, 5, None, lookahead(100), [], [])
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + claim, *args)
            plan = [row[0] for row in rows]
            raise _Rollback
    except _Rollback:
        return plan
    except (AttributeError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return [f"could not explain the claim: {exc!r}"]
    finally:
        await backend.unregister_worker(token)


class _Rollback(Exception):
    pass


if __name__ == "__main__":
    sys.exit(run(main(), use_uvloop="--uvloop" in sys.argv))
