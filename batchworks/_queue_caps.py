"""A Runner's ``queue_concurrency``: a cap on the jobs of a queue it holds at once (running
or claimed ahead), beside its overall ``concurrency``. The caps bound each claim per queue, so
a capped queue's backlog never fills the runner's slots; the fleet-wide limits of a queue are
the backend's (``configure_queue``)."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

__all__ = ["QueueCaps"]


class QueueCaps:
    """The caps of one runner, by queue (a queue without one is bounded by the runner's
    ``concurrency`` only)."""

    def __init__(self, caps: Mapping[str, int]) -> None:
        self._caps = dict(caps)

    def __bool__(self) -> bool:
        return bool(self._caps)

    def capped(self, queue: str) -> bool:
        return queue in self._caps

    def room(self, held: Iterable[str]) -> dict[str, int] | None:
        """Each capped queue's room, given the queues of the jobs held now (None: no caps)."""
        if not self._caps:
            return None
        counts = collections.Counter(queue for queue in held if queue in self._caps)
        return {queue: max(0, cap - counts[queue]) for queue, cap in self._caps.items()}

    @staticmethod
    def full(room: Mapping[str, int] | None, queues: Iterable[str]) -> bool:
        """Whether every one of ``queues`` is at its cap (no claim could take anything)."""
        return room is not None and all(room.get(queue, 1) == 0 for queue in queues)
