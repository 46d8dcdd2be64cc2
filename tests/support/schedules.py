"""What the schedule tests share: an hourly tick, an injected clock, a scheduler on it, and
the jobs a schedule enqueued."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from batchworks import Schedule
from batchworks._scheduler import Scheduler
from batchworks.backends.base import Backend
from batchworks.tracing import Telemetry

T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)  # an hourly tick


class FakeClock:
    """The injected clock: moves only when a test says so."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def scheduler(backend: Backend, *schedules: Schedule, clock: FakeClock) -> Scheduler:
    return Scheduler(backend, tuple(schedules), Telemetry("test"), clock=clock)


async def scheduled_jobs(backend: Backend, name: str) -> list[Any]:
    records = await backend.list_jobs(limit=10_000)
    return sorted(
        (record for record in records if record.schedule == name),
        key=lambda record: (record.scheduled_for is None, record.scheduled_for, record.id),
    )
