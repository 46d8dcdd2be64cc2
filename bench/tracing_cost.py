"""Tracing cost: what batchworks' OpenTelemetry hooks (``batchworks/tracing.py``) add per job.

The same drain, N no-op jobs on ``MemoryBackend`` with ``Runner(concurrency=100,
batch_size=100)`` (where the per-job cost is not hidden behind database round trips), runs in a
fresh process per mode, since an OpenTelemetry provider is global to a process:

- off: the OpenTelemetry API only, no SDK installed. batchworks has no other switch: without an
  SDK provider its hooks return at once, checked once per batch. This is the reference;
- sdk, unsampled: the SDK's TracerProvider with the ALWAYS_OFF sampler and no MeterProvider:
  the cost of the hooks creating non-recording spans;
- sdk + no-op exporter: the SDK's TracerProvider with a BatchSpanProcessor feeding an exporter
  that counts spans and drops them, and the SDK's MeterProvider with an in-memory reader: every
  span and metric is made, none leaves the process.

Modes alternate, the best of ``--rounds`` counts; the garbage collector is off while timing, as
in ``overhead.py``. Exits non-zero only if a job did not succeed, or if the SDK mode produced no
spans (the thing measured did not happen).

Usage::

    .venv/bin/python bench/tracing_cost.py            # 50,000 jobs, 3 rounds
    .venv/bin/python bench/tracing_cost.py --quick    # 2,000 jobs, 1 round (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from _common import RESULTS, ROOT, rate, ratio_line, write_json

QUEUE = "bench"
MODES = ("off", "sdk, unsampled", "sdk + no-op exporter")


def install(mode: str) -> Any:
    """Install the mode's providers; returns the exporter that counts spans (or None)."""
    if mode == "off":
        return None
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    if mode == "sdk, unsampled":
        trace.set_tracer_provider(TracerProvider(sampler=ALWAYS_OFF))
        return None

    class Dropping(SpanExporter):
        """Counts the spans it is handed, and drops them."""

        def __init__(self) -> None:
            self.count = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.count += len(spans)
            return SpanExportResult.SUCCESS

    exporter = Dropping()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return exporter


async def child(mode: str, jobs: int) -> None:
    from batchworks import Job, MemoryBackend, Runner

    exporter = install(mode)

    async def noop(job: Job) -> None:
        """Does nothing: all that is measured is what runs it."""

    backend = MemoryBackend()
    await backend.enqueue_many(QUEUE, [None] * jobs)
    runner = Runner(backend, {QUEUE: noop}, concurrency=100, batch_size=100)
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    report = await runner.run_until_empty()
    elapsed = time.perf_counter() - start
    gc.enable()
    spans = 0
    if exporter is not None:
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
        spans = exporter.count
    print(json.dumps({"rate": jobs / elapsed, "succeeded": report.succeeded, "spans": spans}))


def measure(mode: str, jobs: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--jobs", str(jobs)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{mode}: exited {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parse = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parse.add_argument("--jobs", type=int, default=50_000)
    parse.add_argument("--rounds", type=int, default=3)
    parse.add_argument("--quick", action="store_true", help="2,000 jobs, 1 round (for CI)")
    parse.add_argument("--json", default=None)
    parse.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parse.parse_args()
    if args.child:
        asyncio.run(child(args.child, args.jobs))
        return 0
    jobs, rounds = (2_000, 1) if args.quick else (args.jobs, args.rounds)
    print(f"tracing cost: {jobs:,} no-op jobs on MemoryBackend, best of {rounds}, a process each")
    best: dict[str, float] = {}
    for round_ in range(1, rounds + 1):
        for mode in MODES:
            result = measure(mode, jobs)
            if result["succeeded"] != jobs:
                print(f"error: {mode}: {result['succeeded']} of {jobs} succeeded", file=sys.stderr)
                return 1
            if mode == "sdk + no-op exporter" and result["spans"] < jobs:
                print(f"error: {mode}: only {result['spans']} spans made", file=sys.stderr)
                return 1
            best[mode] = max(best.get(mode, 0.0), result["rate"])
            spans = f", {result['spans']:,} spans" if result["spans"] else ""
            print(f"  round {round_}: {mode:<22}{rate(result['rate'])}{spans}", flush=True)
    for mode in MODES:
        print(f"  {mode:<22}{rate(best[mode])}  ({1e6 / best[mode]:.1f} us/job)")
    off = best["off"]
    for mode in MODES[1:]:
        extra = 1e6 / best[mode] - 1e6 / off
        print(ratio_line(f"{mode}/off (throughput)", best[mode], off) + f"; +{extra:.1f} us/job")
    if not args.quick:
        path = RESULTS / "tracing.json" if args.json is None else args.json
        write_json(path, "tracing", {"jobs": jobs, "rates": best})
    return 0


if __name__ == "__main__":
    sys.exit(main())
