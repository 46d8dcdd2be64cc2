"""Overhead of the Runner over a bare asyncio loop, on no-op jobs.

Runs the same no-op coroutine N times two ways, in one process, at the same concurrency:

- runner: ``Runner`` + ``MemoryBackend``, jobs enqueued with ``enqueue_many`` beforehand;
  only the ``run_until_empty()`` drain is timed (claim, run, settle, report);
- bare: ``asyncio.gather`` over the coroutines under an ``asyncio.Semaphore``, the least an
  asyncio program can do to run N calls with a concurrency limit.

The ratio (runner time / bare time) is what batchworks costs per job beyond asyncio itself;
the target is at most 3x. Each side runs several rounds, alternating, and the best round of
each counts. The garbage collector is off while a round is timed, as ``timeit`` does: with it
on, the bare side's N live tasks (gather starts them all at once) make each full collection
walk them all, so at 100,000 jobs the baseline slows down more than the Runner does and the
ratio looks better than it is; ``--gc`` measures with it on.

A benchmark reports: it exits 0 whatever the ratio, and non-zero only if the Runner did not
succeed every job.

Usage::

    make bench                                   # or: .venv/bin/python bench/overhead.py
    .venv/bin/python bench/overhead.py --quick   # 5,000 jobs, one round (CI)
    .venv/bin/python bench/overhead.py --jobs 20000 --rounds 5 --gc
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import sys
import time
from collections.abc import Iterator
from typing import Any

from batchworks import MemoryBackend, Runner

QUEUE = "bench"
CONCURRENCY = 100
BATCH_SIZE = 100
TARGET_RATIO = 3.0


async def noop(job: Any) -> None:
    """The job: does nothing, so all that is measured is what runs it."""


@contextlib.contextmanager
def gc_off(keep_gc: bool) -> Iterator[None]:
    gc.collect()  # start clean: no garbage from the previous round
    if keep_gc:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def time_runner(n: int, *, keep_gc: bool) -> float:
    backend = MemoryBackend()
    await backend.enqueue_many(QUEUE, [None] * n)
    runner = Runner(backend, {QUEUE: noop}, concurrency=CONCURRENCY, batch_size=BATCH_SIZE)
    with gc_off(keep_gc):
        start = time.perf_counter()
        report = await runner.run_until_empty()
        elapsed = time.perf_counter() - start
    if report.succeeded != n:
        sys.exit(f"error: the Runner succeeded {report.succeeded} of {n} jobs: {report}")
    return elapsed


async def time_bare(n: int, *, keep_gc: bool) -> float:
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Any) -> None:
        async with limit:
            await noop(job)

    with gc_off(keep_gc):
        start = time.perf_counter()
        await asyncio.gather(*(one(None) for _ in range(n)))
        return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side; best counts")
    parser.add_argument("--quick", action="store_true", help="5,000 jobs, one round (for CI)")
    parser.add_argument("--gc", action="store_true", help="keep the garbage collector on")
    args = parser.parse_args()
    n, rounds = (5_000, 1) if args.quick else (args.jobs, args.rounds)
    if n < 1 or rounds < 1:
        parser.error("--jobs and --rounds must be >= 1")

    print(
        f"{n:,} no-op jobs, concurrency {CONCURRENCY}, batch_size {BATCH_SIZE}, "
        f"best of {rounds}, gc {'on' if args.gc else 'off'}; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    runner_times, bare_times = [], []
    for round_ in range(1, rounds + 1):
        # Alternate the sides so that drift (CPU frequency, a noisy neighbour) hits both.
        runner_times.append(await time_runner(n, keep_gc=args.gc))
        bare_times.append(await time_bare(n, keep_gc=args.gc))
        print(f"  round {round_}: runner {runner_times[-1]:.3f}s, bare {bare_times[-1]:.3f}s")

    runner_best, bare_best = min(runner_times), min(bare_times)
    ratio = runner_best / bare_best
    print(f"runner (Runner + MemoryBackend): {n / runner_best:>10,.0f} jobs/s")
    print(f"bare (gather + Semaphore):       {n / bare_best:>10,.0f} jobs/s")
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"ratio (runner time / bare time): {ratio:.2f}x; target <= {TARGET_RATIO:g}x {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
