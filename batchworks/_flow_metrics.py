"""The flow-control gauges of a Runner (#14): every ``QUEUE_METRICS_INTERVAL`` seconds, and
only while an OpenTelemetry meter provider is installed, the runner reads its queues'
settings and use (``Backend.queues()``, one statement) into the gauges
``batchworks.queue.held_back`` and ``batchworks.queue.slots_in_use``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from batchworks._calls import Calls
from batchworks._logs import log_extra
from batchworks._settle import TRANSIENT
from batchworks.backends.base import Backend
from batchworks.tracing import Telemetry

__all__ = ["QUEUE_METRICS_INTERVAL", "QueueMetrics"]

logger = logging.getLogger(__name__)

QUEUE_METRICS_INTERVAL = 15.0  # seconds between two reads of the queues for the gauges


class QueueMetrics:
    """When to read the queues again, and the read."""

    def __init__(self, backend: Backend, queues: Sequence[str], telemetry: Telemetry) -> None:
        self._backend = backend
        self._queues = frozenset(queues)
        self._telemetry = telemetry
        self._next = 0.0  # loop time of the next read

    async def maybe_read(self, calls: Calls, now: float) -> None:
        """Read the queues if metrics are on and the last read is old enough; a failed read
        is logged and tried again at the next interval (the gauges keep the last values)."""
        if not self._telemetry.metrics or now < self._next:
            return
        self._next = now + QUEUE_METRICS_INTERVAL
        try:
            states = await calls.run("queues", self._backend.queues())
        except TRANSIENT as exc:
            logger.warning(
                "reading the queues for the flow-control gauges failed (%s: %s)",
                type(exc).__name__,
                exc,
                extra=log_extra("queue_metrics_failed"),
            )
            return
        self._telemetry.flow.read(
            {s.name: (s.running, s.held_back) for s in states if s.name in self._queues}
        )
