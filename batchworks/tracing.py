"""OpenTelemetry traces and metrics: the only module that touches opentelemetry.

Only ``opentelemetry-api`` is a dependency; users bring the SDK and their exporters. Until an
SDK provider is installed, every hook here returns at once: whether tracing and metrics are
on is checked once per claimed batch (or enqueue), never per job, so an application without
an SDK pays close to nothing (``bench/tracing_cost.py`` measures it).

Spans follow the OpenTelemetry messaging conventions:

- ``send <queue>`` (PRODUCER) around an enqueue; its W3C trace context is stored with each job;
- ``receive <queues>`` (CONSUMER) around a claim, with the batch size;
- ``process <queue>`` (CONSUMER) around one attempt of one job, linked to its ``send`` span,
  current while the handler runs (so the handler's own spans are its children), with the
  attempt, the worker and the outcome; a failed attempt records the exception and sets ERROR.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

__all__ = ["JobSpan", "Telemetry", "send_span", "tracing_enabled"]

SYSTEM = "batchworks"
_SCOPE = "batchworks"

try:  # the proxy class is private; without it, a set provider is all we can see
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _ProxyMeters
except ImportError:  # pragma: no cover - older or newer API layout
    _ProxyMeters = metrics.NoOpMeterProvider  # type: ignore[assignment,misc]


def tracing_enabled() -> bool:
    """True once an SDK tracer provider is installed (not the API's proxy or no-op one)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def metrics_enabled() -> bool:
    """True once an SDK meter provider is installed."""
    return not isinstance(metrics.get_meter_provider(), (_ProxyMeters, metrics.NoOpMeterProvider))


def _version() -> str:
    from batchworks import __version__

    return __version__


@contextlib.contextmanager
def send_span(queue: str, count: int) -> Iterator[dict[str, str] | None]:
    """A PRODUCER span around an enqueue of ``count`` jobs; yields the W3C trace context to
    store with them (None when tracing is off)."""
    if not tracing_enabled():
        yield None
        return
    tracer = trace.get_tracer(_SCOPE, _version())
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": queue,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    with tracer.start_as_current_span(
        f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


class JobSpan:
    """The ``process`` span of one attempt; :meth:`finish` ends it with the outcome."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def detach(self) -> None:
        """Leave the span's context (before the handler's task ends)."""
        otel_context.detach(self._token)

    def finish(self, outcome: str, exc: BaseException | None) -> None:
        span = self._span
        span.set_attribute("batchworks.job.outcome", outcome)
        if exc is not None:
            span.record_exception(exc)
            if outcome == "retried":
                span.add_event("will be retried")
            if outcome in ("retried", "failed"):
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()


class Telemetry:
    """A Runner's instruments. Cheap to keep; :meth:`refresh` decides whether to use them."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.tracing = False
        self.metrics = False
        meter = metrics.get_meter(_SCOPE, _version())
        self._settled = meter.create_counter(
            "batchworks.jobs.settled", unit="{job}", description="Job attempts settled"
        )
        self._duration = meter.create_histogram(
            "batchworks.job.duration", unit="s", description="Handler run time of an attempt"
        )
        self._latency = meter.create_histogram(
            "batchworks.job.queue_latency",
            unit="s",
            description="Time from a job being due to its claim",
        )
        self._in_flight = meter.create_up_down_counter(
            "batchworks.jobs.in_flight", unit="{job}", description="Handler calls running"
        )
        self._batch = meter.create_histogram(
            "batchworks.claim.batch_size", unit="{job}", description="Jobs taken per claim"
        )
        self._lost = meter.create_counter(
            "batchworks.leases.lost",
            unit="{job}",
            description="Outcomes not written because the worker no longer held the job",
        )
        self._recovered = meter.create_counter(
            "batchworks.jobs.recovered",
            unit="{job}",
            description="Jobs of dead or hung workers put back (or failed)",
        )

    def refresh(self) -> None:
        """Look again whether an SDK is installed (once per batch, not per job)."""
        self.tracing = tracing_enabled()
        self.metrics = metrics_enabled()

    @contextlib.contextmanager
    def receive_span(self, queues: tuple[str, ...]) -> Iterator[trace.Span | None]:
        """A CONSUMER span around a claim; the caller sets the batch size on it."""
        if not self.tracing:
            yield None
            return
        tracer = trace.get_tracer(_SCOPE, _version())
        with tracer.start_as_current_span(
            f"receive {','.join(queues)}",
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "receive",
                "messaging.operation.name": "receive",
                "messaging.destination.name": ",".join(queues),
                "messaging.client.id": self.worker,
            },
        ) as span:
            yield span

    def claimed(self, span: trace.Span | None, count: int) -> None:
        if span is not None:
            span.set_attribute("messaging.batch.message_count", count)
        if self.metrics and count:
            self._batch.record(count)

    def start_job(
        self, job_id: int, queue: str, attempt: int, trace_context: Mapping[str, str] | None
    ) -> JobSpan | None:
        """Start the ``process`` span of an attempt and make it current; None when off."""
        if not self.tracing:
            return None
        links = []
        if trace_context:
            producer = trace.get_current_span(propagate.extract(trace_context)).get_span_context()
            if producer.is_valid:
                links.append(Link(producer))
        tracer = trace.get_tracer(_SCOPE, _version())
        span = tracer.start_span(
            f"process {queue}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": queue,
                "messaging.message.id": str(job_id),
                "messaging.client.id": self.worker,
                "batchworks.job.attempt": attempt,
                "batchworks.worker.name": self.worker,
            },
        )
        return JobSpan(span)

    def job_started(self, queue: str, waited: float) -> None:
        if self.metrics:
            attributes = {"messaging.destination.name": queue}
            self._in_flight.add(1, attributes)
            self._latency.record(max(0.0, waited), attributes)

    def job_finished(self, queue: str, outcome: str, duration: float) -> None:
        if self.metrics:
            attributes = {"messaging.destination.name": queue}
            self._in_flight.add(-1, attributes)
            self._duration.record(duration, {**attributes, "batchworks.job.outcome": outcome})

    def settled(self, queue: str, outcome: str, count: int = 1) -> None:
        if self.metrics:
            self._settled.add(
                count, {"messaging.destination.name": queue, "batchworks.job.outcome": outcome}
            )

    def leases_lost(self, count: int) -> None:
        if self.metrics and count:
            self._lost.add(count)

    def recovered(self, count: int) -> None:
        if self.metrics and count:
            self._recovered.add(count)
