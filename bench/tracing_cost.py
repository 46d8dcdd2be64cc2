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

``--breakdown`` adds the two halves of the last mode on their own: ``sdk, traces only`` (the
same TracerProvider, no MeterProvider) and ``sdk, metrics only`` (the MeterProvider alone).

The jobs are enqueued untimed, by default in one ``enqueue_many`` call, so that they all carry
the trace context of one ``send`` span; ``--enqueue-batch 1`` gives each job its own (each
``process`` span then links to a different ``send`` span).

Modes alternate, the best of ``--rounds`` counts; the garbage collector is off while timing, as
in ``overhead.py``. Exits non-zero only if the thing measured did not happen: a job did not
succeed, a mode with an exporter got fewer ``process`` spans than jobs, or a mode with a
MeterProvider counted other than one ``batchworks.jobs.settled`` per job.

Usage::

    .venv/bin/python bench/tracing_cost.py                    # 50,000 jobs, 3 rounds
    .venv/bin/python bench/tracing_cost.py --breakdown        # also traces and metrics alone
    .venv/bin/python bench/tracing_cost.py --enqueue-batch 1  # a trace context per job
    .venv/bin/python bench/tracing_cost.py --quick            # 2,000 jobs, 1 round (CI)
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
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT, rate, ratio_line, write_json

QUEUE = "bench"
MODES = ("off", "sdk, unsampled", "sdk + no-op exporter")
BREAKDOWN = ("sdk, traces only", "sdk, metrics only")
#: the modes that export spans, and must have made one per job at least
EXPORTING = ("sdk + no-op exporter", "sdk, traces only")


def install(mode: str) -> tuple[Any, Any]:
    """Install the mode's providers; returns the exporter that counts spans and the metric
    reader (each None when the mode has none)."""
    if mode == "off":
        return None, None
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
        return None, None

    class Dropping(SpanExporter):
        """Counts the spans it is handed, and drops them."""

        def __init__(self) -> None:
            self.count = 0
            self.process = 0

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            self.count += len(spans)
            self.process += sum(1 for span in spans if span.name.startswith("process "))
            return SpanExportResult.SUCCESS

    exporter = reader = None
    if mode != "sdk, metrics only":
        exporter = Dropping()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    if mode != "sdk, traces only":
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return exporter, reader


def settled_count(reader: Any) -> int:
    """The sum of ``batchworks.jobs.settled`` as the reader collects it."""
    total = 0
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "batchworks.jobs.settled":
                    total += sum(point.value for point in metric.data.data_points)
    return total


async def child(mode: str, jobs: int, enqueue_batch: int) -> None:
    from batchworks import Job, MemoryBackend, Runner

    exporter, reader = install(mode)

    async def noop(job: Job) -> None:
        """Does nothing: all that is measured is what runs it."""

    backend = MemoryBackend()
    for start in range(0, jobs, enqueue_batch):
        await backend.enqueue_many(QUEUE, [None] * min(enqueue_batch, jobs - start))
    runner = Runner(backend, {QUEUE: noop}, concurrency=100, batch_size=100)
    gc.collect()
    gc.disable()
    start = time.perf_counter()
    report = await runner.run_until_empty()
    elapsed = time.perf_counter() - start
    gc.enable()
    result = {"rate": jobs / elapsed, "succeeded": report.succeeded}
    result |= {"spans": 0, "process_spans": 0, "settled": 0}
    if exporter is not None:
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
        result.update(spans=exporter.count, process_spans=exporter.process)
    if reader is not None:
        result["settled"] = settled_count(reader)
    print(json.dumps(result))


def measure(mode: str, jobs: int, enqueue_batch: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--jobs", str(jobs)]
    command += ["--enqueue-batch", str(enqueue_batch)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{mode}: exited {done.returncode}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def check(mode: str, result: dict[str, Any], jobs: int) -> str | None:
    """What did not happen that the mode measures (None: all of it did)."""
    if result["succeeded"] != jobs:
        return f"{result['succeeded']} of {jobs} jobs succeeded"
    if mode in EXPORTING and result["process_spans"] < jobs:
        return f"only {result['process_spans']} process spans exported"
    if mode in ("sdk + no-op exporter", "sdk, metrics only") and result["settled"] != jobs:
        return f"batchworks.jobs.settled counted {result['settled']}"
    return None


def main() -> int:
    parse = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Modes: " + "; ".join(MODES + BREAKDOWN) + ".",
    )
    parse.add_argument("--jobs", type=int, default=50_000, help="jobs per run (default 50,000)")
    parse.add_argument("--rounds", type=int, default=3, help="runs per mode, best kept")
    parse.add_argument("--quick", action="store_true", help="2,000 jobs, 1 round (for CI)")
    parse.add_argument(
        "--breakdown", action="store_true", help="also run traces only and metrics only"
    )
    parse.add_argument(
        "--enqueue-batch",
        type=int,
        default=None,
        metavar="N",
        help="enqueue N jobs per call (default: all in one call, so one trace context)",
    )
    parse.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the figures here (default: bench/results/tracing.json; not with --quick)",
    )
    parse.add_argument("--child", choices=MODES + BREAKDOWN, help=argparse.SUPPRESS)
    args = parse.parse_args()
    jobs, rounds = (2_000, 1) if args.quick else (args.jobs, args.rounds)
    enqueue_batch = max(1, args.enqueue_batch or jobs)
    if args.child:
        asyncio.run(child(args.child, args.jobs, enqueue_batch))
        return 0
    modes = MODES + BREAKDOWN if args.breakdown else MODES
    print(
        f"tracing cost: {jobs:,} no-op jobs on MemoryBackend, enqueued {enqueue_batch:,} per "
        f"call, best of {rounds}, a process each"
    )
    best: dict[str, float] = {}
    for round_ in range(1, rounds + 1):
        for mode in modes:
            result = measure(mode, jobs, enqueue_batch)
            failed = check(mode, result, jobs)
            if failed:
                print(f"error: {mode}: {failed}", file=sys.stderr)
                return 1
            best[mode] = max(best.get(mode, 0.0), result["rate"])
            spans = f", {result['spans']:,} spans" if result["spans"] else ""
            print(f"  round {round_}: {mode:<22}{rate(result['rate'])}{spans}", flush=True)
    off = best["off"]
    for mode in modes:
        extra = "" if mode == "off" else f", +{1e6 / best[mode] - 1e6 / off:.1f} over off"
        print(f"  {mode:<22}{rate(best[mode])}  ({1e6 / best[mode]:.1f} us/job{extra})")
    for mode in modes[1:]:
        extra = 1e6 / best[mode] - 1e6 / off
        print(ratio_line(f"{mode}/off (throughput)", best[mode], off) + f"; +{extra:.1f} us/job")
    if not args.quick:
        path = RESULTS / "tracing.json" if args.json is None else args.json
        figures = {"jobs": jobs, "enqueue_batch": enqueue_batch, "rates": best}
        write_json(path, "tracing", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
