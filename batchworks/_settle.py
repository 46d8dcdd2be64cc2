"""The settle buffer: outcomes are written in bulk, within a short interval of each finishing.

A job's outcome never waits for the slowest job of its batch: each finished job adds its
outcome here, and a background task writes what has gathered every ``interval`` seconds, or
at once when ``max_size`` outcomes wait. A failed write keeps its outcomes and is tried again
with backoff, so a database blip loses nothing; the writes stay fenced by the worker token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from batchworks.backends.base import Backend, WorkerToken
from batchworks.outcome import Outcome

logger = logging.getLogger("batchworks.runner")

RETRY_INITIAL = 0.1  # seconds before the first retry of a failed write
RETRY_MAX = 5.0  # seconds between retries at most

OnSettled = Callable[[Sequence[Outcome], frozenset[int]], None]


class SettleBuffer:
    """Gathers outcomes and writes them in bulk; see the module docstring."""

    def __init__(
        self,
        backend: Backend,
        worker: WorkerToken,
        *,
        max_size: int,
        interval: float,
        on_settled: OnSettled,
    ) -> None:
        self._backend = backend
        self._worker = worker
        self._max_size = max_size
        self._interval = interval
        self._on_settled = on_settled
        self._pending: list[Outcome] = []
        self._has_items = asyncio.Event()
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stopping = False

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._has_items.set()
        if len(self._pending) >= self._max_size:
            self._full.set()

    async def run(self) -> None:
        """Write outcomes as they come, until :meth:`stop` (then call :meth:`flush`)."""
        while not self._stopping:
            await self._has_items.wait()
            if len(self._pending) < self._max_size and not self._stopping:
                try:
                    async with asyncio.timeout(self._interval):
                        await self._full.wait()
                except TimeoutError:
                    pass
            await self.flush()

    def stop(self) -> None:
        """Let :meth:`run` finish the write it is in and return. Cancelling it instead could
        cut a write the database had already committed: its outcomes would be written again,
        fenced out, and reported as lost."""
        self._stopping = True
        self._has_items.set()
        self._full.set()

    async def flush(self, *, deadline: float | None = None) -> bool:
        """Write every pending outcome, retrying failed writes with backoff.

        :param deadline: loop time after which to stop retrying and keep what is left.
        :returns: True when nothing is left pending.
        """
        async with self._lock:
            delay = RETRY_INITIAL
            loop = asyncio.get_running_loop()
            while self._pending:
                batch, self._pending = self._pending, []
                if not self._stopping:
                    self._has_items.clear()
                    self._full.clear()
                try:
                    lost = await self._backend.settle(self._worker, batch)
                except asyncio.CancelledError:
                    # Stopped mid-write: keep the batch for the final flush (fenced, so a
                    # batch the database had already taken is not written twice).
                    self._pending[:0] = batch
                    self._has_items.set()
                    raise
                except Exception as exc:
                    # Keep the batch, oldest first, and try again: nothing is dropped.
                    self._pending[:0] = batch
                    self._has_items.set()
                    logger.warning(
                        "could not write %d outcomes (%s: %s); retrying in %.1fs",
                        len(batch),
                        type(exc).__name__,
                        exc,
                        delay,
                        extra={"action": "settle_failed", "count": len(batch)},
                    )
                    if self._stopping and deadline is None:
                        return False  # the final flush, with its deadline, takes over
                    if deadline is not None and loop.time() + delay > deadline:
                        return False
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                delay = RETRY_INITIAL
                self._on_settled(batch, frozenset(lost))
            return True
