"""Flow control (#14) as both backends share it: the bounds of a claim of a limited queue,
and the reading of a queue's settings and use into a :class:`~.base.QueueState`.

A slot is a running job holding a lease. Neither backend keeps a count of slots: a claim of a
limited queue counts the queue's running jobs (and those of each concurrency key) as it
picks, so the settle or the recovery that takes a job out of running frees its slot, exactly
once. Claims of one limited queue are serialised (PostgreSQL: the queue's row lock); claims of
a queue with nothing set read one more index probe and take no lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchworks.backends.base import QueueState, held_back

__all__ = [
    "FLOW_RECHECK",
    "KEY_LOOKAHEAD",
    "KEY_LOOKAHEAD_FACTOR",
    "KEY_LOOKAHEAD_MIN",
    "lookahead",
    "queue_state",
]

#: seconds an idle runner waits at most before it claims again from a limited queue whose due
#: jobs were held back (a slot freed by another worker's settle sends no wake-up)
FLOW_RECHECK = 0.05
#: a claim of a queue with ``key_concurrency`` looks at this many due jobs (in priority order)
#: for ones whose key has room: ``limit * KEY_LOOKAHEAD_FACTOR``, within these bounds (a
#: factor of 10 cost a 1,000-key drain about 10% more than 4, in bench/flow.py)
KEY_LOOKAHEAD_FACTOR = 4
KEY_LOOKAHEAD_MIN = 100
KEY_LOOKAHEAD = 1000


def lookahead(limit: int) -> int:
    """How many due jobs a claim of up to ``limit`` jobs of a key-limited queue looks at."""
    return min(KEY_LOOKAHEAD, max(limit * KEY_LOOKAHEAD_FACTOR, KEY_LOOKAHEAD_MIN))


def queue_state(row: Mapping[str, Any]) -> QueueState:
    """A queue's state from a row of ``name, paused, concurrency, key_concurrency, rate_n,
    rate_seconds, recent, running, queued, due, key_held``."""
    rate = None if row["rate_n"] is None else (int(row["rate_n"]), float(row["rate_seconds"]))
    recent = int(row["recent"] or 0)
    return QueueState(
        name=row["name"],
        paused=bool(row["paused"]),
        concurrency=row["concurrency"],
        key_concurrency=row["key_concurrency"],
        rate=rate,
        running=int(row["running"]),
        queued=int(row["queued"]),
        due=int(row["due"]),
        recent_starts=recent,
        held_back=held_back(
            paused=bool(row["paused"]),
            concurrency=row["concurrency"],
            rate=rate,
            running=int(row["running"]),
            recent_starts=recent,
            due=int(row["due"]),
            key_held=int(row["key_held"]),
        ),
    )
