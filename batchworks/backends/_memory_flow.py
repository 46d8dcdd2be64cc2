"""The flow control of :class:`~.memory.MemoryBackend` (#14): its queues' settings and the
pick of a claim within them, with the semantics of PostgreSQL's ``flow_pick`` (migration 7).

Everything runs on one event loop, so a claim is atomic and nothing needs a lock: what the
PostgreSQL backend serialises with the queue's row lock is serial here already.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from batchworks.backends._flow import lookahead, queue_state
from batchworks.backends.base import QueueState

__all__ = ["Entry", "FlowRow", "QueueFlow", "Settings"]

#: a ready-heap entry: (-priority, run_at, id, seq)
Entry = tuple[int, float, int, int]


class FlowRow(Protocol):
    """What the pick reads of a job row."""

    queue: str
    concurrency_key: str | None
    run_at: float


@dataclass(slots=True)
class Settings:
    """One queue's flow control; a queue without an entry has none."""

    paused: bool = False
    concurrency: int | None = None
    key_concurrency: int | None = None
    rate: tuple[int, float] | None = None
    #: the latest start times within the rate window, oldest first (at most rate n)
    starts: collections.deque[float] = field(default_factory=collections.deque)

    @property
    def controlled(self) -> bool:
        return self.paused or any(
            limit is not None for limit in (self.concurrency, self.key_concurrency, self.rate)
        )

    def recent(self, now: float) -> int:
        """Starts within the rate window ending now."""
        if self.rate is None:
            return 0
        return sum(1 for start in self.starts if start > now - self.rate[1])

    def started(self, now: float, count: int) -> None:
        """Record ``count`` starts at ``now``, keeping only what the window needs."""
        if self.rate is None or not count:
            return
        n, window = self.rate
        self.starts.extend([now] * count)
        while self.starts and (len(self.starts) > n or self.starts[0] <= now - window):
            self.starts.popleft()


class QueueFlow:
    """The settings of every queue, and the pick of due jobs within them."""

    def __init__(self) -> None:
        self._settings: dict[str, Settings] = {}

    def settings(self, queue: str) -> Settings:
        return self._settings.setdefault(queue, Settings())

    def controlled(self, queue: str) -> bool:
        found = self._settings.get(queue)
        return found is not None and found.controlled

    def paused(self, queue: str) -> bool:
        found = self._settings.get(queue)
        return found is not None and found.paused

    def names(self) -> Iterable[str]:
        return self._settings

    def room(self, queue: str, wanted: int, running: Sequence[FlowRow], now: float) -> int:
        """How many jobs of ``queue`` a claim may start now, at most ``wanted``."""
        found = self._settings.get(queue)
        if found is None or not found.controlled:
            return wanted
        if found.paused:
            return 0
        room = wanted
        if found.concurrency is not None:
            room = min(room, found.concurrency - sum(1 for row in running if row.queue == queue))
        if found.rate is not None:
            room = min(room, found.rate[0] - found.recent(now))
        return max(0, room)

    def pick(
        self,
        queue: str,
        heap: list[Entry],
        wanted: int,
        running: Sequence[FlowRow],
        now: float,
        row_of: Callable[[Entry], FlowRow | None],
    ) -> list[Entry]:
        """Pop up to ``wanted`` entries of ``queue``'s ready heap that its limits let start,
        in heap order, skipping (and keeping in the heap) jobs whose key is at its limit
        among the first ``lookahead(wanted)`` due jobs; ``row_of`` gives an entry's row, or
        None for a stale entry (dropped)."""
        room = self.room(queue, wanted, running, now)
        found = self._settings.get(queue)
        limit = None if found is None else found.key_concurrency
        if room <= 0:
            return []
        busy = collections.Counter(
            row.concurrency_key for row in running if row.queue == queue and limit is not None
        )
        picked: list[Entry] = []
        skipped: list[Entry] = []
        looked = 0
        bound = lookahead(wanted) if limit is not None else None
        while heap and len(picked) < room and (bound is None or looked < max(bound, room)):
            entry = heapq.heappop(heap)
            row = row_of(entry)
            if row is None:
                continue
            looked += 1
            key = row.concurrency_key
            if limit is not None and key is not None and busy[key] >= limit:
                skipped.append(entry)
                continue
            busy[key] += 1
            picked.append(entry)
        for entry in skipped:
            heapq.heappush(heap, entry)
        return picked

    def state(
        self, queue: str, live: Sequence[FlowRow], running: Sequence[FlowRow], now: float
    ) -> QueueState:
        """``queue``'s settings and use, from its queued (``live``) and running rows."""
        found = self._settings.get(queue) or Settings()
        due = [row for row in live if row.run_at <= now]
        busy = collections.Counter(row.concurrency_key for row in running)
        limit = found.key_concurrency
        key_held = 0
        if limit is not None:
            key_held = sum(
                1
                for row in due
                if row.concurrency_key is not None and busy[row.concurrency_key] >= limit
            )
        rate = found.rate
        return queue_state(
            {
                "name": queue,
                "paused": found.paused,
                "concurrency": found.concurrency,
                "key_concurrency": limit,
                "rate_n": None if rate is None else rate[0],
                "rate_seconds": None if rate is None else rate[1],
                "recent": found.recent(now),
                "running": len(running),
                "queued": len(live),
                "due": len(due),
                "key_held": key_held,
            }
        )
