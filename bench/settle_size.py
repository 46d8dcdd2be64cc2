"""The settle statements' cost by flush size: 100, 1,000 and 5,000 outcomes a flush (#18).

For each size N the benchmark enqueues N no-op jobs in a scratch schema, claims them all for
one worker, and times ``PostgresBackend`` writing N outcomes in one statement, for each of the
four settle statements: SETTLE_SUCCEEDED (every job succeeded with nothing to keep) and SETTLE
(a mix: one job in ten retried), each with the batch bookkeeping and without
(``*_UNBATCHED``). Best of 3. The figure is microseconds per outcome; the ratio is that at one
size over that at the size before: a statement linear in its flush size stays at 1.0x or below
(the round trip is shared by more outcomes), one quadratic in it grows with N (SETTLE_SUCCEEDED's
EXISTS over the unnested ids did: 5,000 outcomes took 3.7 s against 9 ms for 1,000).

A benchmark reports: it exits non-zero only when a settle did not write every outcome.

Usage::

    .venv/bin/python bench/settle_size.py            # 100, 1,000, 5,000; best of 3
    .venv/bin/python bench/settle_size.py --quick    # 100 and 1,000, one round (CI)
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

import _common as common
import asyncpg

from batchworks import PostgresBackend
from batchworks.outcome import Outcome, OutcomeKind

QUEUE = "bench"
SIZES = (100, 1_000, 5_000)


def _outcomes(claimed: list[Any], mixed: bool) -> list[Outcome]:
    return [
        Outcome(
            job.id,
            OutcomeKind.RETRIED if mixed and i % 10 == 0 else OutcomeKind.SUCCEEDED,
            1.0 if mixed and i % 10 == 0 else 0.0,
            queue=QUEUE,
            attempt=job.attempt,
        )
        for i, job in enumerate(claimed)
    ]


async def _once(
    backend: PostgresBackend,
    conn: asyncpg.Connection,
    schema: str,
    size: int,
    mixed: bool,
    batched: bool,
) -> float:
    await backend.enqueue_many(QUEUE, [{"n": i} for i in range(size)])
    token = await backend.register_worker("bench-settle", [QUEUE])
    claimed: list[Any] = []
    while len(claimed) < size:
        got = await backend.claim(
            token, [QUEUE], min(1_000, size - len(claimed)), lease=600.0, max_attempts=3
        )
        if not got:
            raise SystemExit(f"claimed {len(claimed)} of {size} jobs")
        claimed.extend(got)
    outcomes = _outcomes(claimed, mixed)
    started = time.perf_counter()
    settled = await backend._settle(token, outcomes, batched=batched)
    took = time.perf_counter() - started
    if len(settled) != size:
        raise SystemExit(f"a settle of {size} outcomes wrote {len(settled)}")
    await backend.unregister_worker(token)
    await conn.execute(
        f'DELETE FROM "{schema}".jobs'
    )  # the retried ones too: same table each round
    return took


async def main() -> int:
    args = common.parser(__doc__).parse_args()
    dsn = common.dsn_of(args)
    sizes = SIZES[:2] if args.quick else SIZES
    rounds = 1 if args.quick else 3
    print(await common.describe_machine(dsn, False))
    figures: dict[str, Any] = {}
    async with common.scratch_schema(dsn, "bench_settle_size") as schema:
        conn = await asyncpg.connect(dsn)
        async with PostgresBackend(dsn, schema=schema) as backend:
            await backend.migrate()
            for mixed in (False, True):
                for batched in (True, False):
                    name = ("SETTLE" if mixed else "SETTLE_SUCCEEDED") + (
                        "" if batched else "_UNBATCHED"
                    )
                    per: dict[int, float] = {}
                    for size in sizes:
                        best = min(
                            [
                                await _once(backend, conn, schema, size, mixed, batched)
                                for _ in range(rounds)
                            ]
                        )
                        per[size] = best / size * 1e6
                        print(
                            f"{name:28} {size:>6,} outcomes: {best * 1e3:8.1f} ms, "
                            f"{per[size]:6.1f} us/outcome"
                        )
                    for smaller, size in itertools.pairwise(sizes):
                        print(
                            common.ratio_line(
                                f"{name} us/outcome at {size:,} over {smaller:,}",
                                per[size],
                                per[smaller],
                            )
                        )
                    figures[name] = per
        await conn.close()
    common.write_json(
        None if args.quick else common.RESULTS / "settle_size.json", "settle_size", figures
    )
    return 0


if __name__ == "__main__":
    sys.exit(common.run(main()))
