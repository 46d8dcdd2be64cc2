"""Traces of a batch in the console: batchworks' OpenTelemetry spans, exported by the SDK.

What it shows: batchworks depends only on ``opentelemetry-api``; the application installs the
SDK and its exporters. Here the console exporter prints every span: a PRODUCER ``send jobs``
span for the enqueue, a CONSUMER ``receive jobs`` span per claim, and a CONSUMER ``process
jobs`` span per attempt, linked to the ``send`` span, with the handler's own span inside it.
The retried attempt carries the exception and ERROR status. Swap ``ConsoleSpanExporter`` for
an OTLP exporter (``opentelemetry-exporter-otlp``) to send them to a collector.

Needs ``opentelemetry-sdk`` (in the ``dev`` extra). Run it from the repository root::

    .venv/bin/python examples/tracing.py
"""

from __future__ import annotations

import asyncio
import sys

import tenacity
from opentelemetry import trace

from batchworks import Job, MemoryBackend, RetryPolicy, Runner

try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
except ImportError:
    sys.exit("this example needs the OpenTelemetry SDK: pip install opentelemetry-sdk")


async def resize(job: Job) -> str:
    # The handler's own spans are children of batchworks' "process" span.
    with trace.get_tracer("example").start_as_current_span("resize image"):
        if job.payload["image"] == "b.png" and job.attempt == 1:
            raise ConnectionError("storage timed out")
        return f"thumb-{job.payload['image']}"


async def main() -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "thumbnailer"}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)  # before batchworks runs: its spans go here

    backend = MemoryBackend()
    await backend.enqueue_many("jobs", [{"image": "a.png"}, {"image": "b.png"}])
    policy = RetryPolicy(wait=tenacity.wait_none())
    report = await Runner(backend, {"jobs": resize}, retry=policy).run_until_empty(max_delay=1)
    provider.shutdown()
    print(f"traced: succeeded {report.succeeded}, retried {report.retried}")


if __name__ == "__main__":
    asyncio.run(main())
