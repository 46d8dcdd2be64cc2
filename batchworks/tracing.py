"""OpenTelemetry traces and metrics: the only module that touches opentelemetry.

Only ``opentelemetry-api`` is a dependency; users bring the SDK and their exporters. Until an
SDK provider is installed, every hook here returns at once: whether tracing and metrics are
on is checked once per claimed batch (or enqueue), never per job, so an application without
an SDK pays close to nothing (``bench/tracing_cost.py`` measures it).

Spans follow the OpenTelemetry messaging conventions:

- ``send <queue>`` (PRODUCER) around an enqueue; its W3C trace context is stored with each job.
  One job's span has its id (``messaging.message.id``) once the insert returned it; a batch's
  has ``messaging.batch.message_count`` instead (each job's ``process`` span has its own id and
  links to it). An enqueue on a caller's connection inside a transaction gets
  ``batchworks.enqueue.in_caller_transaction``: its jobs exist only if that transaction
  commits, which the span, ended when the insert returns, cannot know;
- ``receive <queues>`` (CONSUMER) for a claim that found jobs, with the batch size, timed from
  the claim's start; a claim that found nothing (an idle worker polling) makes no span;
- ``process <queue>`` (CONSUMER) around one attempt of one job, linked to its ``send`` span
  (for a member of a batch, the ``send`` span of ``enqueue_batch``, or of the ``add_to_batch``
  that added it; ``batchworks.batch.id`` says which batch),
  current while the handler runs (so the handler's own spans are its children), with the
  attempt, the worker and the outcome; a failed attempt records the exception and sets ERROR.

Per job, batchworks adds little to what the SDK itself does: the tracer and the instruments
are fetched once per provider and the metric attributes once per queue (not per job), the
``send`` span's context is read straight from its W3C ``traceparent`` when the global
propagator is the W3C one, and a span the sampler dropped gets no attributes, events or status,
only its context.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["JobTelemetry", "SendSpan", "Telemetry", "send_span", "tracing_enabled"]

SYSTEM = "batchworks"
_SCOPE = "batchworks"

try:  # the proxy class is private; without it, a set provider is all we can see
    from opentelemetry.metrics._internal import _ProxyMeterProvider as _ProxyMeters
except ImportError:  # pragma: no cover - older or newer API layout
    _ProxyMeters = metrics.NoOpMeterProvider  # type: ignore[assignment,misc]

# A traceparent as TraceContextTextMapPropagator.inject writes it (version 00). Anything else
# (other versions, whitespace, upper case) is left to the propagator itself.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_W3C_PROPAGATORS = (TraceContextTextMapPropagator, W3CBaggagePropagator)


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


# (provider, its batchworks tracer or None): the SDK's get_tracer builds an InstrumentationScope
# and edits the warnings filters on every call, which cost more than an unsampled span.
_tracer_of: tuple[object, trace.Tracer | None] = (None, None)


def _tracer() -> trace.Tracer | None:
    """The batchworks tracer of the global provider; None while no SDK provider is installed."""
    global _tracer_of
    provider = trace.get_tracer_provider()
    cached, tracer = _tracer_of
    if provider is not cached:
        tracer = provider.get_tracer(_SCOPE, _version()) if tracing_enabled() else None
        _tracer_of = (provider, tracer)
    return tracer


def _reads_w3c_only(textmap: TextMapPropagator) -> bool:
    """Whether ``textmap`` takes a span context from ``traceparent``/``tracestate`` and
    nothing else, as the default propagator (tracecontext,baggage) does."""
    if type(textmap) is TraceContextTextMapPropagator:
        return True
    parts = getattr(textmap, "_propagators", None)  # private: unknown layouts take the slow path
    return (
        type(textmap) is CompositePropagator
        and isinstance(parts, list | tuple)
        and any(type(part) is TraceContextTextMapPropagator for part in parts)
        and all(type(part) in _W3C_PROPAGATORS for part in parts)
    )


class SendSpan:
    """What :func:`send_span` yields: the trace context to store with the jobs (``carrier``,
    None when tracing is off) and :meth:`sent`, for the ids once the insert returned them."""

    __slots__ = ("_span", "carrier")

    def __init__(self, carrier: dict[str, str] | None, span: trace.Span | None) -> None:
        self.carrier = carrier
        self._span = span

    def batch(self, batch_id: int) -> None:
        """The enqueue adds members to this batch."""
        span = self._span
        if span is not None and span.is_recording():
            span.set_attribute("batchworks.batch.id", str(batch_id))

    def sent(self, ids: Sequence[int]) -> None:
        """The enqueue stored (or, for a live dedupe key, found) these jobs."""
        span = self._span
        if span is not None and len(ids) == 1 and span.is_recording():
            span.set_attribute("messaging.message.id", str(ids[0]))


_UNTRACED = SendSpan(None, None)


@contextlib.contextmanager
def send_span(queue: str, count: int, *, in_transaction: bool = False) -> Iterator[SendSpan]:
    """A PRODUCER span around an enqueue of ``count`` jobs; yields a :class:`SendSpan`.

    :param in_transaction: the enqueue runs in a transaction of the caller's: its jobs exist
        only if the caller commits, which the span says (it cannot know the outcome).
    """
    tracer = _tracer()
    if tracer is None:
        yield _UNTRACED
        return
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": queue,
    }
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    if in_transaction:
        attributes["batchworks.enqueue.in_caller_transaction"] = True
    with tracer.start_as_current_span(
        f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield SendSpan(carrier, span)


class _Instruments:
    """The instruments of one meter provider."""

    __slots__ = (
        "batch",
        "duration",
        "held_back",
        "in_flight",
        "latency",
        "lost",
        "open_batches",
        "recovered",
        "settled",
        "slots",
        "tick_lateness",
        "ticks_enqueued",
        "ticks_late",
        "ticks_skipped",
    )

    def __init__(self, meter: metrics.Meter, flow: FlowGauges) -> None:
        self.held_back = meter.create_observable_gauge(
            "batchworks.queue.held_back",
            callbacks=[flow.observe_held_back],
            unit="{job}",
            description="Due jobs of a queue that a pause or a limit keeps from starting, by "
            "what holds them (attribute batchworks.limit)",
        )
        self.slots = meter.create_observable_gauge(
            "batchworks.queue.slots_in_use",
            callbacks=[flow.observe_slots],
            unit="{job}",
            description="Jobs of a queue running across every worker (each holding a lease)",
        )
        self.settled = meter.create_counter(
            "batchworks.jobs.settled", unit="{job}", description="Job attempts settled"
        )
        self.duration = meter.create_histogram(
            "batchworks.job.duration", unit="s", description="Handler run time of an attempt"
        )
        self.latency = meter.create_histogram(
            "batchworks.job.queue_latency",
            unit="s",
            description="Time from a job being due to its claim",
        )
        self.in_flight = meter.create_up_down_counter(
            "batchworks.jobs.in_flight", unit="{job}", description="Handler calls running"
        )
        self.batch = meter.create_histogram(
            "batchworks.claim.batch_size", unit="{job}", description="Jobs taken per claim"
        )
        self.lost = meter.create_counter(
            "batchworks.leases.lost",
            unit="{job}",
            description="Outcomes not written because the worker no longer held the job",
        )
        self.recovered = meter.create_counter(
            "batchworks.jobs.recovered",
            unit="{job}",
            description="Jobs of dead or hung workers put back (or failed)",
        )
        self.open_batches = meter.create_gauge(
            "batchworks.batches.open",
            unit="{batch}",
            description="Batches not done: open, or with members pending",
        )
        self.ticks_enqueued = meter.create_counter(
            "batchworks.schedule.ticks.enqueued",
            unit="{tick}",
            description="Schedule ticks that became a job",
        )
        self.ticks_late = meter.create_counter(
            "batchworks.schedule.ticks.late",
            unit="{tick}",
            description="Ticks enqueued past their grace: caught up after no runner was alive",
        )
        self.ticks_skipped = meter.create_counter(
            "batchworks.schedule.ticks.skipped",
            unit="{tick}",
            description="Ticks that became no job (missed, or the schedule paused)",
        )
        self.tick_lateness = meter.create_histogram(
            "batchworks.schedule.tick.lateness",
            unit="s",
            description="Time from a tick to the enqueue of its job",
        )


class FlowGauges:
    """The latest reading of the queues' flow control (``Backend.queues()``), observed by the
    gauges ``batchworks.queue.held_back`` and ``batchworks.queue.slots_in_use``."""

    #: what holds due jobs back (``QueueState.held_back``'s keys): each queue reports all
    LIMITS = ("paused", "concurrency", "rate", "key_concurrency")

    def __init__(self) -> None:
        self._held: dict[str, Mapping[str, int]] = {}
        self._slots: dict[str, int] = {}

    def read(self, queues: Mapping[str, tuple[int, Mapping[str, int]]]) -> None:
        """Keep ``{queue: (running, held_back)}`` for the next collection."""
        self._slots = {name: running for name, (running, _) in queues.items()}
        self._held = {name: held for name, (_, held) in queues.items()}

    def observe_held_back(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(
                held.get(limit, 0),
                {"messaging.destination.name": queue, "batchworks.limit": limit},
            )
            for queue, held in self._held.items()
            for limit in self.LIMITS
        ]

    def observe_slots(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return [
            metrics.Observation(running, {"messaging.destination.name": queue})
            for queue, running in self._slots.items()
        ]


class JobTelemetry:
    """One attempt's telemetry, from :meth:`Telemetry.start_job`: its ``process`` span, current
    until :meth:`finish`, and the job metrics. :meth:`finish` runs in the task that started it."""

    __slots__ = ("_instruments", "_queue", "_span", "_started", "_telemetry", "_token")

    def __init__(
        self,
        telemetry: Telemetry,
        queue: str,
        span: trace.Span | None,
        token: object,
        instruments: _Instruments | None,
    ) -> None:
        self._telemetry = telemetry
        self._queue = queue
        self._span = span
        self._token = token
        # Those of the attempt's start: a provider installed meanwhile gets no end without
        # its start (in_flight would go below zero).
        self._instruments = instruments
        self._started = 0.0 if instruments is None else time.monotonic()

    def finish(self, outcome: str, exc: BaseException | None) -> None:
        """End the attempt with its outcome (an :class:`OutcomeKind` value)."""
        instruments = self._instruments
        if instruments is not None:  # while the span is current: exemplars point at it
            duration = time.monotonic() - self._started
            telemetry, queue = self._telemetry, self._queue
            instruments.in_flight.add(-1, telemetry.queue_attributes(queue))
            instruments.duration.record(duration, telemetry.outcome_attributes(queue, outcome))
        span = self._span
        if span is None:
            return
        otel_context.detach(self._token)  # type: ignore[arg-type]
        if span.is_recording():  # what the sampler dropped gets no attributes, events, status
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
        self._tracer: trace.Tracer | None = None
        self._textmap: TextMapPropagator | None = None
        self._w3c = False
        self._meter_provider: object = None
        self._instruments: _Instruments | None = None
        #: the queues' flow control as last read, for the gauges
        self.flow = FlowGauges()
        # Attribute dicts by queue and by (queue, outcome): the SDK copies what it keeps, and
        # batchworks never changes them after they are made.
        self._queue_attributes: dict[str, dict[str, str]] = {}
        self._outcome_attributes: dict[tuple[str, str], dict[str, str]] = {}
        self._schedule_attributes_of: dict[str, dict[str, str]] = {}
        # The last traceparent read and its span context: jobs enqueued together share one.
        self._producer: tuple[str | None, SpanContext] = (None, trace.INVALID_SPAN_CONTEXT)

    def refresh(self) -> None:
        """Look again whether an SDK is installed (once per batch, not per job)."""
        self._tracer = _tracer()
        self.tracing = self._tracer is not None
        if self.tracing:
            textmap = propagate.get_global_textmap()
            if textmap is not self._textmap:
                self._textmap, self._w3c = textmap, _reads_w3c_only(textmap)
        provider = metrics.get_meter_provider()
        if provider is not self._meter_provider:
            self._meter_provider = provider
            self._instruments = (
                _Instruments(provider.get_meter(_SCOPE, _version()), self.flow)
                if metrics_enabled()
                else None
            )
        self.metrics = self._instruments is not None

    def claim_started(self) -> int:
        """Call before a claim: its start (ns since the epoch) for :meth:`claimed`'s span."""
        return time.time_ns() if self._tracer is not None else 0

    def claimed(self, queues: tuple[str, ...], started: int, count: int) -> None:
        """A claim that took ``count`` jobs: its ``receive`` span (from ``started``, ended now)
        and the batch size. A claim that found nothing records nothing: an idle worker would
        otherwise make a span per poll. The span is made after the claim, so the claim's own
        database spans (from an asyncpg instrumentation, say) are not its children."""
        if not count:
            return
        tracer = self._tracer
        if tracer is not None and started:
            names = ",".join(queues)
            tracer.start_span(
                f"receive {names}",
                kind=SpanKind.CONSUMER,
                start_time=started,
                attributes={
                    "messaging.system": SYSTEM,
                    "messaging.operation.type": "receive",
                    "messaging.operation.name": "receive",
                    "messaging.destination.name": names,
                    "messaging.client.id": self.worker,
                    "messaging.batch.message_count": count,
                },
            ).end()
        if self._instruments is not None:
            self._instruments.batch.record(count)

    def start_job(
        self,
        job_id: int,
        queue: str,
        attempt: int,
        trace_context: Mapping[str, str] | None,
        waited: float,
        batch_id: int | None = None,
    ) -> JobTelemetry:
        """Start an attempt's telemetry: its ``process`` span, made current, and its metrics."""
        tracer, span, token = self._tracer, None, None
        if tracer is not None:
            links = []
            if trace_context:
                producer = self._producer_of(trace_context)
                if producer.is_valid:
                    links.append(Link(producer))  # a Link each: the SDK rewrites its attributes
            worker = self.worker
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
                    "messaging.client.id": worker,
                    "batchworks.job.attempt": attempt,
                    "batchworks.worker.name": worker,
                },
            )
            if batch_id is not None and span.is_recording():
                span.set_attribute("batchworks.batch.id", str(batch_id))
            # Current even when the sampler dropped it: the handler's own spans are then its
            # children, and a parent-based sampler drops them too.
            token = otel_context.attach(trace.set_span_in_context(span))
        instruments = self._instruments
        if instruments is not None:
            attributes = self.queue_attributes(queue)
            instruments.in_flight.add(1, attributes)
            instruments.latency.record(max(0.0, waited), attributes)
        return JobTelemetry(self, queue, span, token, instruments)

    def _producer_of(self, carrier: Mapping[str, str]) -> SpanContext:
        """The context of the ``send`` span that stored ``carrier``, as the global propagator
        reads it; a plain W3C ``traceparent`` is read here, a few times faster."""
        traceparent = carrier.get("traceparent")
        if self._w3c and isinstance(traceparent, str) and "tracestate" not in carrier:
            last, producer = self._producer
            if traceparent == last:
                return producer
            match = _TRACEPARENT.fullmatch(traceparent)
            if match is not None:
                trace_id, span_id, flags = match.groups()
                producer = SpanContext(
                    int(trace_id, 16),
                    int(span_id, 16),
                    is_remote=True,
                    trace_flags=TraceFlags(int(flags, 16)),
                )
                if not producer.is_valid:  # an all-zero id: the propagator reads no span
                    producer = trace.INVALID_SPAN_CONTEXT
                self._producer = (traceparent, producer)
                return producer
        return trace.get_current_span(propagate.extract(carrier)).get_span_context()

    def queue_attributes(self, queue: str) -> dict[str, str]:
        """The metric attributes of a queue, made once."""
        attributes = self._queue_attributes.get(queue)
        if attributes is None:
            attributes = self._queue_attributes[queue] = {"messaging.destination.name": queue}
        return attributes

    def outcome_attributes(self, queue: str, outcome: str) -> dict[str, str]:
        """The metric attributes of a queue and an outcome, made once per pair."""
        attributes = self._outcome_attributes.get((queue, outcome))
        if attributes is None:
            attributes = {"messaging.destination.name": queue, "batchworks.job.outcome": outcome}
            self._outcome_attributes[queue, outcome] = attributes
        return attributes

    def settled(self, queue: str, outcome: str, count: int = 1) -> None:
        if self._instruments is not None:
            self._instruments.settled.add(count, self.outcome_attributes(queue, outcome))

    def leases_lost(self, count: int) -> None:
        if self._instruments is not None and count:
            self._instruments.lost.add(count)

    def recovered(self, count: int) -> None:
        if self._instruments is not None and count:
            self._instruments.recovered.add(count)

    @property
    def wants_open_batches(self) -> bool:
        """Whether :meth:`open_batches` records anything (a meter provider is installed)."""
        return self._instruments is not None

    def open_batches(self, count: int) -> None:
        """The batches not done, as the backend counted them (a gauge: the latest wins)."""
        if self._instruments is not None:
            self._instruments.open_batches.set(count)

    @contextlib.contextmanager
    def tick_span(self, schedule: str, queue: str) -> Iterator[tuple[trace.Span | None, Any]]:
        """A PRODUCER span around the claim of a schedule's due ticks; yields it and the W3C
        trace context to store with the jobs (None, None when tracing is off)."""
        tracer = self._tracer
        if tracer is None:
            yield None, None
            return
        with tracer.start_as_current_span(
            f"send {queue}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.destination.name": queue,
                "messaging.client.id": self.worker,
                "batchworks.schedule.name": schedule,
            },
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            yield span, carrier

    def ticks(
        self,
        span: trace.Span | None,
        schedule: str,
        enqueued: Mapping[str, float],
        *,
        late: int,
        skipped: int,
    ) -> None:
        """Record a claim of ticks: ``enqueued`` maps each tick that became a job (ISO text)
        to its lateness in seconds; an event per tick on ``span``."""
        if span is not None and span.is_recording():
            span.set_attribute("batchworks.schedule.ticks.skipped", skipped)
            for tick, lateness in enqueued.items():
                span.add_event(
                    "tick enqueued",
                    {
                        "batchworks.schedule.scheduled_for": tick,
                        "batchworks.schedule.late_by": lateness,
                    },
                )
        instruments = self._instruments
        if instruments is None:
            return
        attributes = self._schedule_attributes(schedule)
        if enqueued:
            instruments.ticks_enqueued.add(len(enqueued), attributes)
            for lateness in enqueued.values():
                instruments.tick_lateness.record(lateness, attributes)
        if late:
            instruments.ticks_late.add(late, attributes)
        if skipped:
            instruments.ticks_skipped.add(skipped, attributes)

    def _schedule_attributes(self, schedule: str) -> dict[str, str]:
        attributes = self._schedule_attributes_of.get(schedule)
        if attributes is None:
            attributes = self._schedule_attributes_of[schedule] = {
                "batchworks.schedule.name": schedule
            }
        return attributes
