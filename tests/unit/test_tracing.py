"""Traces and metrics through the real OpenTelemetry SDK, with in-memory exporters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import opentelemetry.metrics._internal as metrics_internal
import pytest
import tenacity
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from batchworks import Job, RetryPolicy, Runner, Terminal
from batchworks.backends.base import Backend
from batchworks.tracing import metrics_enabled, tracing_enabled


@dataclass
class Otel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        found = []
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        found.extend(item.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    """The SDK installed as the global providers for one test, then the API's defaults again
    (the reset is what opentelemetry's own test utilities do)."""
    saved = (
        trace._TRACER_PROVIDER,
        trace._TRACER_PROVIDER_SET_ONCE,
        metrics_internal._METER_PROVIDER,
        metrics_internal._METER_PROVIDER_SET_ONCE,
    )
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    metrics_internal._METER_PROVIDER, metrics_internal._METER_PROVIDER_SET_ONCE = None, Once()
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    trace.set_tracer_provider(tracer_provider)
    metrics_internal.set_meter_provider(meter_provider)
    try:
        yield Otel(exporter, reader)
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        (
            trace._TRACER_PROVIDER,
            trace._TRACER_PROVIDER_SET_ONCE,
            metrics_internal._METER_PROVIDER,
            metrics_internal._METER_PROVIDER_SET_ONCE,
        ) = saved


class TestSpans:
    async def test_enqueue_is_a_producer_span_linked_from_the_consumer_span(
        self, backend: Backend, otel: Otel
    ) -> None:
        inner_parent: list[Any] = []

        async def handler(job: Job) -> None:
            with trace.get_tracer("app").start_as_current_span("send email") as span:
                inner_parent.append(span.parent)  # type: ignore[attr-defined]

        job_id = await backend.enqueue("emails", {"to": "ada"})
        await Runner(backend, {"emails": handler}, worker_name="w1").run_until_empty()

        [send] = otel.finished("send emails")
        [process] = otel.finished("process emails")
        assert send.kind is SpanKind.PRODUCER
        assert send.attributes is not None
        assert send.attributes["messaging.system"] == "batchworks"
        assert send.attributes["messaging.destination.name"] == "emails"
        assert process.kind is SpanKind.CONSUMER
        assert process.attributes is not None
        assert {
            key: process.attributes[key]
            for key in (
                "messaging.operation.type",
                "messaging.destination.name",
                "messaging.message.id",
                "batchworks.job.attempt",
                "batchworks.worker.name",
                "batchworks.job.outcome",
            )
        } == {
            "messaging.operation.type": "process",
            "messaging.destination.name": "emails",
            "messaging.message.id": str(job_id),
            "batchworks.job.attempt": 1,
            "batchworks.worker.name": "w1",
            "batchworks.job.outcome": "succeeded",
        }
        assert send.context is not None and process.context is not None
        assert [link.context.span_id for link in process.links] == [send.context.span_id]
        # The handler's own spans are children of the process span.
        assert inner_parent[0].span_id == process.context.span_id
        assert process.status.status_code is StatusCode.UNSET

    async def test_failed_attempts_record_the_exception_and_set_error(
        self, backend: Backend, otel: Otel
    ) -> None:
        async def handler(job: Job) -> None:
            if job.attempt == 1:
                raise ConnectionError("blip")
            raise Terminal("bad record")

        await backend.enqueue("q", None)
        policy = RetryPolicy(wait=tenacity.wait_none())
        await Runner(backend, {"q": handler}, retry=policy).run_until_empty(max_delay=1)

        retried, failed = sorted(
            otel.finished("process q"),
            key=lambda span: span.attributes["batchworks.job.attempt"] if span.attributes else 0,
        )
        assert retried.attributes is not None and failed.attributes is not None
        assert retried.attributes["batchworks.job.outcome"] == "retried"
        assert [event.name for event in retried.events] == ["exception", "will be retried"]
        assert retried.status.status_code is StatusCode.ERROR
        assert failed.attributes["batchworks.job.outcome"] == "failed"
        assert failed.status.status_code is StatusCode.ERROR
        assert "bad record" in (failed.status.description or "")

    async def test_each_claim_is_a_receive_span_with_its_batch_size(
        self, backend: Backend, otel: Otel
    ) -> None:
        async def handler(job: Job) -> None:
            return None

        await backend.enqueue_many("q", list(range(25)))
        await Runner(backend, {"q": handler}, batch_size=10, concurrency=5).run_until_empty()

        sizes = [
            span.attributes.get("messaging.batch.message_count")
            for span in otel.finished("receive q")
            if span.attributes
        ]
        assert sum(size for size in sizes if size) == 25
        assert max(size for size in sizes if size) == 10
        [send] = otel.finished("send q")
        assert send.attributes is not None
        assert send.attributes["messaging.batch.message_count"] == 25


class TestMetrics:
    async def test_settled_duration_latency_in_flight_and_batch_size(
        self, backend: Backend, otel: Otel
    ) -> None:
        async def handler(job: Job) -> None:
            if job.payload == "bad":
                raise Terminal("no")

        await backend.enqueue_many("q", ["ok", "ok", "ok", "bad"])
        await Runner(backend, {"q": handler}).run_until_empty()

        settled = {
            point.attributes["batchworks.job.outcome"]: point.value
            for point in otel.points("batchworks.jobs.settled")
        }
        assert settled == {"succeeded": 3, "failed": 1}
        assert sum(point.count for point in otel.points("batchworks.job.duration")) == 4
        assert sum(point.count for point in otel.points("batchworks.job.queue_latency")) == 4
        assert [point.value for point in otel.points("batchworks.jobs.in_flight")] == [0]
        assert sum(point.sum for point in otel.points("batchworks.claim.batch_size")) == 4

    async def test_lost_leases_are_counted(self, backend: Backend, otel: Otel) -> None:
        release = asyncio.Event()
        started = asyncio.Event()

        async def handler(job: Job) -> None:
            started.set()
            await release.wait()

        await backend.enqueue("q", None)
        runner = Runner(backend, {"q": handler}, worker_name="w1", heartbeat_interval=30,
                        prune_after=120)  # fmt: skip
        async with runner:
            async with asyncio.timeout(5):
                await started.wait()
            await backend.register_worker("w1", ["q"])  # a restart takes the job over
            release.set()
        assert [point.value for point in otel.points("batchworks.leases.lost")] == [1]


async def test_without_an_sdk_nothing_is_recorded_or_stored(backend: Backend) -> None:
    assert not tracing_enabled() and not metrics_enabled()
    seen: list[Any] = []

    async def handler(job: Job) -> None:
        seen.append(trace.get_current_span().get_span_context().is_valid)

    await backend.enqueue("q", None)
    await Runner(backend, {"q": handler}).run_until_empty()
    assert seen == [False]
