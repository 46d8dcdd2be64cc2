"""The settle buffer: outcomes are written in bulk, within a short interval of each finishing.

A job's outcome never waits for the slowest job of its batch: each finished job adds its
outcome here, and a background task writes what has gathered every ``interval`` seconds, or
at once when ``max_size`` outcomes wait. A failed write keeps its outcomes and is tried again
with backoff, so a database blip loses nothing; the writes stay fenced by the worker token.

Only a backend's own failures are tried again (:class:`BackendError`, ``OSError``, a
timeout): any other exception is a bug, and retrying it forever would only hide it, so it
propagates, and the Runner, which watches the task, stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from batchworks._logs import log_extra
from batchworks.backends.base import WorkerToken
from batchworks.errors import BackendError
from batchworks.outcome import Outcome

logger = logging.getLogger(__name__)

RETRY_INITIAL = 0.1  # seconds before the first retry of a failed write
RETRY_MAX = 5.0  # seconds between retries at most

#: what a backend (or a network) raises when it fails for now: worth another try
TRANSIENT = (BackendError, OSError, TimeoutError)

OnSettled = Callable[[Sequence[Outcome], frozenset[int]], None]
#: ``write(worker, outcomes, deadline)``: settle them, within the deadline (loop time) if any
Write = Callable[[WorkerToken, Sequence[Outcome], float | None], Awaitable[Sequence[int]]]


class SettleBuffer:
    """Gathers outcomes and writes them in bulk; see the module docstring."""

    def __init__(
        self,
        write: Write,
        worker: WorkerToken,
        *,
        max_size: int,
        interval: float,
        on_settled: OnSettled,
    ) -> None:
        self._write = write
        self._worker = worker
        self._max_size = max_size
        self._interval = interval
        self._on_settled = on_settled
        self._pending: list[Outcome] = []
        self._writing: Sequence[Outcome] = ()
        self._has_items = asyncio.Event()
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stopping = False

    def __len__(self) -> int:
        return len(self._pending)

    def job_ids(self) -> list[int]:
        """The jobs whose outcome waits to be written: the worker still holds them, so its
        heartbeats keep extending their leases until it is."""
        return [outcome.job_id for outcome in self.outcomes()]

    def outcomes(self) -> list[Outcome]:
        """The outcomes not written yet: pending, or being written."""
        return [*self._writing, *self._pending]

    def rebind(self, worker: WorkerToken) -> None:
        """Write for a new incarnation of the worker from now on (what is left of the old one
        is fenced out and counted lost)."""
        self._worker = worker

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

        :param deadline: loop time after which to stop retrying and keep what is left; each
            write is also cut off there.
        :returns: True when nothing is left pending.
        """
        async with self._lock:
            delay = RETRY_INITIAL
            loop = asyncio.get_running_loop()
            while self._pending:
                # At most max_size a write: outcomes that piled up behind a slow write go in
                # several writes of the usual size rather than one that grows with the pile
                # (the statements are linear in their size now, bench/settle_size.py, but a
                # write of the usual size keeps its time, and its lock of the rows, bounded).
                batch = self._pending[: self._max_size]
                self._pending = self._pending[self._max_size :]
                if not self._stopping:
                    self._has_items.clear()
                    self._full.clear()
                lost = await self._write_once(batch, deadline, delay)
                if lost is not None:
                    delay = RETRY_INITIAL
                    self._on_settled(batch, frozenset(lost))
                    continue
                if self._stopping and deadline is None:
                    return False  # the final flush, with its deadline, takes over
                if deadline is not None and loop.time() + delay > deadline:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            return True

    async def _write_once(
        self, batch: list[Outcome], deadline: float | None, delay: float
    ) -> Sequence[int] | None:
        """Write ``batch``: the ids lost, or None when it failed and went back to pending."""
        self._writing = batch
        try:
            return await self._write(self._worker, batch, deadline)
        except TRANSIENT as exc:
            self._put_back(batch)
            logger.warning(
                "could not write %d outcomes (%s: %s); retrying in %.1fs",
                len(batch),
                type(exc).__name__,
                exc,
                delay,
                extra=log_extra("settle_failed", count=len(batch)),
            )
            return None
        except BaseException:
            # Stopped mid-write: the batch is for the final flush (fenced, so a batch the
            # database had already taken is not written twice). A bug: it propagates, with
            # nothing dropped.
            self._put_back(batch)
            raise
        finally:
            self._writing = ()

    def _put_back(self, batch: list[Outcome]) -> None:
        self._pending[:0] = batch  # oldest first
        self._has_items.set()
