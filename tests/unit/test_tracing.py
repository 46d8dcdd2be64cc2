"""Traces and metrics through the real OpenTelemetry SDK, with in-memory exporters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import opentelemetry.metrics._internal as metrics_internal
import pytest
import tenacity
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator, default_getter, default_setter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util._once import Once

from batchworks import (
    Callback,
    Job,
    JobState,
    MemoryBackend,
    PostgresBackend,
    RetryPolicy,
    Runner,
    Terminal,
)
from batchworks.backends.base import Backend, ClaimedJob
from batchworks.tracing import (
    Telemetry,
    _reads_w3c_only,
    _tracer,
    metrics_enabled,
    tracing_enabled,
)
from tests.conftest import eventually


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


@contextlib.contextmanager
def installed(
    tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
) -> Iterator[None]:
    """These providers (None: the API's default) as the global ones, then the saved ones again
    (the reset is what opentelemetry's own test utilities do)."""
    saved = (
        trace._TRACER_PROVIDER,
        trace._TRACER_PROVIDER_SET_ONCE,
        metrics_internal._METER_PROVIDER,
        metrics_internal._METER_PROVIDER_SET_ONCE,
    )
    trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = None, Once()
    metrics_internal._METER_PROVIDER, metrics_internal._METER_PROVIDER_SET_ONCE = None, Once()
    if tracer_provider is not None:
        trace.set_tracer_provider(tracer_provider)
    if meter_provider is not None:
        metrics_internal.set_meter_provider(meter_provider)
    try:
        yield
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()
        if meter_provider is not None:
            meter_provider.shutdown()
        (
            trace._TRACER_PROVIDER,
            trace._TRACER_PROVIDER_SET_ONCE,
            metrics_internal._METER_PROVIDER,
            metrics_internal._METER_PROVIDER_SET_ONCE,
        ) = saved


def sdk(sampler: Sampler | None = None) -> tuple[Otel, TracerProvider, MeterProvider]:
    """SDK providers exporting to memory."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Otel(exporter, reader), tracer_provider, MeterProvider(metric_readers=[reader])


@pytest.fixture
def otel() -> Iterator[Otel]:
    """The SDK installed as the global providers for one test, then the API's defaults again."""
    found, tracer_provider, meter_provider = sdk()
    with installed(tracer_provider, meter_provider):
        yield found


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
        assert send.attributes["messaging.message.id"] == str(job_id)  # once the insert said
        assert "batchworks.enqueue.in_caller_transaction" not in send.attributes
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

        receives = otel.finished("receive q")
        sizes = [_attributes(span)["messaging.batch.message_count"] for span in receives]
        # The claim that found the queue empty made no span.
        assert sum(sizes) == 25 and max(sizes) == 10 and min(sizes) >= 1, sizes
        assert all(
            span.start_time is not None
            and span.end_time is not None
            and span.start_time <= span.end_time
            for span in receives
        )
        [send] = otel.finished("send q")
        assert send.attributes is not None
        assert send.attributes["messaging.batch.message_count"] == 25
        # Each job's id is on its own process span (linked to this one), not on a batch's.
        assert "messaging.message.id" not in send.attributes

    async def test_an_idle_worker_makes_no_receive_spans(self, otel: Otel) -> None:
        class CountingBackend(MemoryBackend):
            empty_claims = 0

            async def claim(self, *args: Any, **kwargs: Any) -> list[ClaimedJob]:
                claimed = await super().claim(*args, **kwargs)
                CountingBackend.empty_claims += not claimed
                return claimed

        async def handler(job: Job) -> None:
            return None

        backend = CountingBackend()
        async with Runner(backend, {"q": handler}, poll_interval=0.01):
            await eventually(lambda: CountingBackend.empty_claims >= 5, what="5 idle polls")
            job_id = await backend.enqueue("q", None)
            await eventually(lambda: _succeeded(backend, job_id), what="the job to run")
            polls = CountingBackend.empty_claims

        assert polls >= 5
        [receive] = otel.finished("receive q")  # the one claim that found the job
        assert receive.attributes is not None
        assert receive.attributes["messaging.batch.message_count"] == 1

    async def test_a_deduplicated_enqueue_names_the_job_it_found(
        self, backend: Backend, otel: Otel
    ) -> None:
        first = await backend.enqueue("q", 1, dedupe_key="k")
        again = await backend.enqueue("q", 2, dedupe_key="k")

        assert again == first
        ids = [_attributes(span)["messaging.message.id"] for span in otel.finished("send q")]
        assert ids == [str(first), str(first)]


@pytest.mark.postgres
class TestBatchSpans:
    async def test_members_and_callbacks_link_to_the_batchs_send_span(
        self, backend: Backend, otel: Otel
    ) -> None:
        async def handler(job: Job) -> None:
            if job.payload == {"spawn": True}:
                assert job.batch_id is not None
                await backend.add_to_batch(job.batch_id, [{"late": True}])

        batch = await backend.enqueue_batch(
            "q", [{"spawn": True}, {}], on_complete=Callback("done", None)
        )
        await Runner(backend, {"q": handler, "done": handler}).run_until_empty()

        sends = otel.finished("send q")
        first = next(s for s in sends if s.attributes and s.attributes.get(
            "messaging.batch.message_count") == 2)  # fmt: skip
        added = next(s for s in sends if s is not first)
        assert first.attributes is not None and added.attributes is not None
        assert first.attributes["batchworks.batch.id"] == str(batch.id)
        assert added.attributes["batchworks.batch.id"] == str(batch.id)
        processes = otel.finished("process q")
        assert len(processes) == 3
        by_link = sorted(
            (p.links[0].context.span_id, (p.attributes or {}).get("batchworks.batch.id"))
            for p in processes
        )
        assert first.context is not None and added.context is not None
        assert by_link == sorted(
            [(first.context.span_id, str(batch.id))] * 2 + [(added.context.span_id, str(batch.id))]
        )
        # The callback's job carries the batch's trace context: its process span links there.
        [callback] = otel.finished("process done")
        assert [link.context.span_id for link in callback.links] == [first.context.span_id]

    async def test_the_open_batches_gauge_follows_the_backend(
        self, backend: Backend, otel: Otel
    ) -> None:
        await backend.enqueue_batch("q", [{}], close=False)
        await backend.enqueue_batch("q", [])  # done at once

        async def handler(job: Job) -> None:
            return None

        runner = Runner(backend, {"q": handler}, heartbeat_interval=0.05, prune_after=1.0)
        async with runner:  # the gauge is read where a heartbeat recovers

            def gauged() -> bool:
                if otel.metrics.get_metrics_data() is None:  # nothing recorded yet
                    return False
                return [point.value for point in otel.points("batchworks.batches.open")] == [1]

            await eventually(gauged, what="the open batches gauge to read 1")


class TestEnqueueInACallersTransaction:
    async def test_the_send_span_says_its_outcome_is_the_callers_transaction(
        self, pg_backend: PostgresBackend, pg_dsn: str, otel: Otel
    ) -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            async with conn.transaction():
                kept = await pg_backend.enqueue("q", "kept", connection=conn)
            tx = conn.transaction()
            await tx.start()
            dropped = await pg_backend.enqueue("q", "dropped", connection=conn)
            await tx.rollback()
            autocommit = await pg_backend.enqueue("q", "autocommit", connection=conn)
        finally:
            await conn.close()
        plain = await pg_backend.enqueue("q", "plain")

        assert await pg_backend.get_job(dropped) is None
        assert await pg_backend.get_job(kept) is not None
        flags = {
            _attributes(span)["messaging.message.id"]: _attributes(span).get(
                "batchworks.enqueue.in_caller_transaction", False
            )
            for span in otel.finished("send q")
        }
        # A rolled-back enqueue's span cannot know it was rolled back: it says so instead.
        assert flags == {
            str(kept): True,
            str(dropped): True,
            str(autocommit): False,
            str(plain): False,
        }


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def _succeeded(backend: Backend, job_id: int) -> bool:
    record = await backend.get_job(job_id)
    return record is not None and record.state is JobState.SUCCEEDED


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
            async with asyncio.timeout(15):  # a hang net
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


class DropProcessSpans(Sampler):
    """Samples every span but ``process`` ones (under ParentBased: every root but those)."""

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None,
                      links=None, trace_state=None) -> SamplingResult:  # fmt: skip
        decision = Decision.DROP if name.startswith("process ") else Decision.RECORD_AND_SAMPLE
        return SamplingResult(decision, attributes, trace_state)

    def get_description(self) -> str:
        return "DropProcessSpans"


class LinkRecorder(Sampler):
    """Samples everything, and keeps the links each ``process`` span was started with."""

    def __init__(self) -> None:
        self.links: list[list[Link]] = []

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None,
                      links=None, trace_state=None) -> SamplingResult:  # fmt: skip
        if name.startswith("process "):
            self.links.append(list(links or ()))
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)

    def get_description(self) -> str:
        return "LinkRecorder"


class XTracePropagator(TextMapPropagator):
    """Not W3C: the span context as ``x-trace: <trace id>:<span id>`` in hex."""

    def extract(self, carrier, context=None, getter=default_getter):
        [value] = getter.get(carrier, "x-trace") or [""]
        if ":" not in value:
            return context if context is not None else Context()
        trace_id, span_id = (int(part, 16) for part in value.split(":"))
        parent = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(1))
        return trace.set_span_in_context(NonRecordingSpan(parent), context)

    def inject(self, carrier, context=None, setter=default_setter):
        span_context = trace.get_current_span(context).get_span_context()
        setter.set(carrier, "x-trace", f"{span_context.trace_id:x}:{span_context.span_id:x}")

    @property
    def fields(self) -> set[str]:
        return {"x-trace"}


@contextlib.contextmanager
def global_textmap(textmap: TextMapPropagator) -> Iterator[None]:
    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(textmap)
    try:
        yield
    finally:
        propagate.set_global_textmap(saved)


class TestCost:
    """What keeps the per-job path cheap must not change what is recorded."""

    async def test_an_unsampled_process_span_records_nothing_and_its_children_follow_it(
        self, backend: Backend
    ) -> None:
        found, tracer_provider, meter_provider = sdk(ParentBased(DropProcessSpans()))
        seen: list[SpanContext] = []

        async def handler(job: Job) -> None:
            seen.append(trace.get_current_span().get_span_context())
            with trace.get_tracer("app").start_as_current_span("send email"):
                if job.payload == "bad":
                    raise Terminal("no")

        with installed(tracer_provider, meter_provider):
            await backend.enqueue_many("q", ["ok", "bad"])
            await Runner(backend, {"q": handler}).run_until_empty()
            names = {span.name for span in found.spans.get_finished_spans()}
            # The send and receive spans are sampled; the process spans are not, and the
            # handler's own spans, their children, are dropped with them.
            assert names == {"send q", "receive q"}
            # The handler still ran inside a (non-sampled) process span's context.
            assert [(ctx.is_valid, ctx.trace_flags.sampled) for ctx in seen] == [(True, False)] * 2
            # Metrics do not depend on sampling.
            settled = {
                point.attributes["batchworks.job.outcome"]: point.value
                for point in found.points("batchworks.jobs.settled")
            }
            assert settled == {"succeeded": 1, "failed": 1}
            assert [point.value for point in found.points("batchworks.jobs.in_flight")] == [0]

    async def test_links_are_given_to_the_sampler_at_span_start(self, backend: Backend) -> None:
        sampler = LinkRecorder()
        found, tracer_provider, meter_provider = sdk(sampler)

        async def handler(job: Job) -> None:
            return None

        with installed(tracer_provider, meter_provider):
            await backend.enqueue("q", 1)
            await backend.enqueue_many("q", [2, 3])
            await Runner(backend, {"q": handler}).run_until_empty()
            sends = found.finished("send q")
            processes = found.finished("process q")
        batch_sizes: dict[int, Any] = {
            send.context.span_id: send.attributes.get("messaging.batch.message_count", 1)
            for send in sends
            if send.context is not None and send.attributes is not None
        }
        one, two = sorted(batch_sizes, key=batch_sizes.__getitem__)
        assert [batch_sizes[one], batch_sizes[two]] == [1, 2]
        linked = sorted(link.context.span_id for links in sampler.links for link in links)
        assert linked == sorted([one, two, two])
        assert [len(links) for links in sampler.links] == [1, 1, 1]
        # Each process span has a Link object of its own (the SDK rewrites their attributes).
        assert len({id(span.links[0]) for span in processes}) == 3

    async def test_a_non_w3c_global_propagator_still_links_the_send_span(
        self, backend: Backend, otel: Otel
    ) -> None:
        async def handler(job: Job) -> None:
            return None

        with global_textmap(XTracePropagator()):
            await backend.enqueue("q", None)
            await Runner(backend, {"q": handler}).run_until_empty()
        [send] = otel.finished("send q")
        [process] = otel.finished("process q")
        assert send.context is not None
        assert [link.context.span_id for link in process.links] == [send.context.span_id]

    def test_the_tracer_is_fetched_once_per_provider(self) -> None:
        calls: list[str] = []

        class Counting(TracerProvider):
            def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
                calls.append(args[0])
                return super().get_tracer(*args, **kwargs)

        first, second = Counting(), Counting()
        with installed(first):
            assert _tracer() is _tracer() is not None
            assert calls == ["batchworks"]
        with installed(second):
            assert _tracer() is not None
            assert calls == ["batchworks", "batchworks"]
        assert _tracer() is None  # no SDK again

    def test_a_provider_installed_later_is_used_from_the_next_batch(self) -> None:
        """Telemetry made with no SDK picks the SDK up at its next refresh; an attempt started
        before that counts neither its start nor its end."""
        telemetry = Telemetry("w1")
        telemetry.refresh()
        assert not telemetry.tracing and not telemetry.metrics
        before = telemetry.start_job(1, "q", 1, None, 0.0)
        found, tracer_provider, meter_provider = sdk()
        with installed(tracer_provider, meter_provider):
            telemetry.refresh()
            assert telemetry.tracing and telemetry.metrics
            before.finish("succeeded", None)
            after = telemetry.start_job(2, "q", 1, None, 0.5)
            after.finish("failed", Terminal("no"))
            [process] = found.finished("process q")
            assert process.attributes is not None
            assert process.attributes["messaging.message.id"] == "2"
            assert process.status.status_code is StatusCode.ERROR
            assert [point.value for point in found.points("batchworks.jobs.in_flight")] == [0]
            assert sum(point.count for point in found.points("batchworks.job.duration")) == 1
        telemetry.refresh()
        assert not telemetry.tracing and not telemetry.metrics


def _traceparents() -> list[dict[str, str]]:
    tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    return [
        {"traceparent": f"00-{tid}-{sid}-01"},
        {"traceparent": f"00-{tid}-{sid}-00"},
        {"traceparent": f"00-{tid}-{sid}-03"},
        {"traceparent": f"00-{tid}-{sid}-01", "tracestate": "vendor=x,other=y"},
        {"traceparent": f"00-{tid}-{sid}-01", "baggage": "user=ada"},
        {"traceparent": f"00-{'0' * 32}-{sid}-01"},
        {"traceparent": f"00-{tid}-{'0' * 16}-01"},
        {"traceparent": f"00-{tid.upper()}-{sid}-01"},
        {"traceparent": f"00-{tid}-{sid}-01-extra"},
        {"traceparent": f"01-{tid}-{sid}-01-future"},
        {"traceparent": f"ff-{tid}-{sid}-01"},
        {"traceparent": f" 00-{tid}-{sid}-01\t"},
        {"traceparent": f"00-{tid[:-1]}_-{sid}-01"},
        {"traceparent": f"00-{tid}-{sid}-1"},
        {"traceparent": ""},
        {"tracestate": "vendor=x"},
    ]


@pytest.mark.parametrize("carrier", _traceparents())
def test_a_stored_traceparent_reads_as_the_w3c_propagator_reads_it(
    carrier: dict[str, str],
) -> None:
    with installed(TracerProvider()):
        telemetry = Telemetry("w1")
        telemetry.refresh()
        expected = trace.get_current_span(propagate.extract(carrier)).get_span_context()
        assert telemetry._producer_of(carrier) == expected
        assert telemetry._producer_of(carrier) == expected  # and again, remembered


@pytest.mark.parametrize(
    "textmap",
    [
        CompositePropagator([]),  # OTEL_PROPAGATORS=none: no links at all
        CompositePropagator([TraceContextTextMapPropagator(), XTracePropagator()]),
    ],
)
def test_any_other_global_propagator_reads_the_stored_context_itself(
    textmap: TextMapPropagator,
) -> None:
    carrier = {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "x-trace": "1234:5678",  # XTracePropagator, last, has the last word
    }
    with installed(TracerProvider()), global_textmap(textmap):
        telemetry = Telemetry("w1")
        telemetry.refresh()
        expected = trace.get_current_span(textmap.extract(carrier)).get_span_context()
        assert telemetry._producer_of(carrier) == expected
        assert expected.span_id in (0, 0x5678)


@pytest.mark.parametrize(
    ("textmap", "w3c"),
    [
        (CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]), True),
        (TraceContextTextMapPropagator(), True),
        (CompositePropagator([W3CBaggagePropagator(), TraceContextTextMapPropagator()]), True),
        (CompositePropagator([]), False),
        (CompositePropagator([W3CBaggagePropagator()]), False),
        (CompositePropagator([TraceContextTextMapPropagator(), XTracePropagator()]), False),
        (XTracePropagator(), False),
    ],
)
def test_only_w3c_propagators_take_the_traceparent_shortcut(
    textmap: TextMapPropagator, w3c: bool
) -> None:
    assert _reads_w3c_only(textmap) is w3c
