"""Memory: the resident set size of a worker process draining 1M jobs, sampled over time.

1,000,000 no-op jobs are queued (``enqueue_many``, then ANALYZE: without planner statistics
each claim sorts the whole backlog, see ``scale.py``, and the drain would take an hour), then
one batchworks worker process (``Runner(concurrency=100, batch_size=100).run_until_empty()``)
drains them while the benchmark reads its RSS from ``/proc/PID/status`` every ``--every``
seconds. After warm-up (the first 10% of the run) the RSS should stay flat: the benchmark
compares the median of the last quarter of the samples with the median of the samples just
after warm-up (10-25% of the run); the ratio is the growth, which should stay at most 1.1x.
Exits non-zero only if not every job succeeded.

Usage::

    .venv/bin/python bench/memory.py           # 1,000,000 jobs, a sample every 0.5 s
    .venv/bin/python bench/memory.py --quick   # 5,000 jobs, a sample every 0.02 s (CI)
"""

from __future__ import annotations

import sys
from typing import Any

from _common import (
    RESULTS,
    describe_machine,
    dsn_of,
    median,
    parser,
    rate,
    ratio_line,
    run,
    write_json,
)
from _systems import NotAllRun, drain_once, open_systems

MB = 1024 * 1024


async def main() -> int:
    parse = parser(__doc__)
    parse.add_argument("--jobs", type=int, default=1_000_000)
    parse.add_argument("--every", type=float, default=0.5, help="seconds between samples")
    args = parse.parse_args()
    dsn = dsn_of(args)
    jobs, every = (5_000, 0.02) if args.quick else (args.jobs, args.every)
    print(await describe_machine(dsn, args.uvloop))
    print(f"memory: RSS of one worker process draining {jobs:,} jobs, sampled every {every} s")
    try:
        async with open_systems(dsn, "memory", ["batchworks"]) as systems:
            drain = await drain_once(
                systems["batchworks"],
                jobs,
                batch_size=100,
                concurrency=100,
                use_uvloop=args.uvloop,
                within=1800,
                sample_rss=every,
                analyze=True,
            )
    except NotAllRun as exc:
        print(f"error: not every job ran: {exc}", file=sys.stderr)
        return 1
    samples = drain.rss_samples
    if len(samples) < 8:
        print(f"too few samples ({len(samples)}) to judge growth; lower --every")
        return 0
    t0, t1 = samples[0][0], samples[-1][0]

    def window(lo: float, hi: float) -> list[float]:
        return [rss for t, rss in samples if lo <= (t - t0) / (t1 - t0) <= hi]

    warm = median(window(0.10, 0.25))
    late = median(window(0.75, 1.00))
    print(f"drained at {rate(drain.rate)} in {drain.seconds:.1f}s; {len(samples)} samples")
    print("  RSS over the run (MB, one column per tenth):")
    print("   " + " ".join(f"{median(window(i / 10, (i + 1) / 10)) / MB:6.1f}" for i in range(10)))
    print(
        f"  after warm-up {warm / MB:.1f} MB, last quarter {late / MB:.1f} MB, "
        f"peak {max(r for _, r in samples) / MB:.1f} MB"
    )
    print(ratio_line("RSS last quarter/after warm-up", late, warm, "<= 1.1"))
    if not args.quick:
        figures: dict[str, Any] = {
            "jobs": jobs,
            "rate": drain.rate,
            "rss_after_warmup": warm,
            "rss_last_quarter": late,
            "rss_peak": max(r for _, r in samples),
            "samples": [(round(t - t0, 3), rss) for t, rss in samples],
        }
        write_json(args.json or RESULTS / "memory.json", "memory", figures)
    return 0


if __name__ == "__main__":
    sys.exit(run(main(), use_uvloop="--uvloop" in sys.argv))
