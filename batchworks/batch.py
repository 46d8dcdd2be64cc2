"""Batches: groups of jobs with one identity, exact progress and callbacks (#16).

A batch is made by ``backend.enqueue_batch(queue, payloads, ...)`` (closed at once) or grown
with ``backend.add_to_batch(batch_id, payloads)`` while it is open, and closed with
``backend.close_batch(batch_id)``. Its counters change in the same statement (PostgreSQL) or
the same step (memory) as each member's state, so they are exact whatever crashes; the
statement that brings a closed batch to no pending member enqueues its callbacks, once.

:class:`Callback` says which job to enqueue, :class:`Batch` is what an enqueue returns,
:class:`BatchRecord` what ``get_batch``/``wait_batch`` read, and :class:`BatchState` where a
batch stands.
"""

from __future__ import annotations

import enum
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from typing import Any

from batchworks._checks import check_max_attempts, check_priority, check_queue

__all__ = ["Batch", "BatchFailure", "BatchRecord", "BatchState", "Callback"]


class BatchState(enum.StrEnum):
    """Where a batch stands; values are the strings the database stores."""

    #: members may still be added (``add_to_batch``); it finishes only once closed
    OPEN = "open"
    #: no member may be added but from a running member's handler; some are pending
    CLOSED = "closed"
    #: closed and every member ended; ``on_complete`` was enqueued (a retry of its failed
    #: members takes it back to CLOSED until they end again)
    FINISHED = "finished"
    #: cancelled by ``cancel_batch``: its queued members were cancelled, running ones asked to
    #: stop; ``on_complete`` is enqueued once the last of them ended
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Callback:
    """A job to enqueue, exactly once, when a batch is complete (``on_complete``: every
    member reached a final state) or succeeded (``on_success``: every member succeeded).

    The callback's job gets the payload ``{"batch_id": <id>, "callback": "on_complete" (or
    "on_success"), "payload": <payload>}``; its handler reads the batch with
    ``backend.get_batch(job.payload["batch_id"])`` and the members with
    ``backend.batch_results(...)``.
    """

    queue: str
    payload: Any = None
    _: KW_ONLY
    priority: int = 0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        check_queue(self.queue)
        check_priority(self.priority)
        check_max_attempts(self.max_attempts)

    def spec(self) -> dict[str, Any]:
        """As the backend stores it (JSON)."""
        return {
            "queue": self.queue,
            "payload": self.payload,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None) -> Callback | None:
        if spec is None:
            return None
        return cls(
            queue=spec["queue"],
            payload=spec.get("payload"),
            priority=spec.get("priority", 0),
            max_attempts=spec.get("max_attempts"),
        )


def callback_payload(batch_id: int, which: str, payload: Any) -> dict[str, Any]:
    """The payload of a callback's job (the SQL of the PostgreSQL backend builds the same)."""
    return {"batch_id": batch_id, "callback": which, "payload": payload}


@dataclass(frozen=True, slots=True)
class Batch:
    """What ``enqueue_batch`` and ``add_to_batch`` return: the batch's id and the ids of the
    members this call added, in payload order."""

    id: int
    job_ids: list[int]


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRecord:
    """A batch as stored, for inspection (``backend.get_batch(id)``).

    The counters are exact at the moment of the read: ``succeeded``, ``failed`` and
    ``cancelled`` change in the statement that ends each member, ``running`` is counted from
    the running members, and ``queued`` is what is left of ``total``.
    """

    id: int
    name: str | None
    state: BatchState
    #: members ever added
    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    created_at: datetime
    #: when the last member ended (None while any is pending, or while it is open)
    finished_at: datetime | None = None
    on_complete: Callback | None = None
    on_success: Callback | None = None
    #: the ids of the callbacks' jobs, once enqueued
    complete_job: int | None = None
    success_job: int | None = None

    @property
    def pending(self) -> int:
        """Members not in a final state (queued or running)."""
        return self.queued + self.running

    @property
    def done(self) -> bool:
        """Closed (or cancelled) with no pending member: what ``wait_batch`` waits for."""
        return self.finished_at is not None

    @property
    def progress(self) -> float:
        """The share of members in a final state, 0.0 to 1.0 (1.0 for an empty batch)."""
        if not self.total:
            return 1.0
        return (self.total - self.pending) / self.total


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchFailure:
    """The failed members of a batch that share the last error's type and message."""

    type: str
    message: str
    count: int
    #: the lowest id among them, to look at one (``batchworks jobs show``)
    example: int
