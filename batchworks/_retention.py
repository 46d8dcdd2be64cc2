"""The retention purge of a Runner (#18): finished jobs are deleted once they have been
finished for ``retention``, in small batches, by whichever runner is alive.

Every runner with a retention runs one; the backend lets one purge at a time (PostgreSQL: an
advisory lock held for one statement, like the pruner's), so a fleet purges no faster and no
more often than one runner would. A round runs every ``interval`` seconds (a minute, or half
the retention when that is shorter) and deletes batches of ``batch`` jobs, the longest finished
first, until a batch comes back short: each batch is one short statement that takes row locks
on the rows it deletes only, so no claim, settle or operator call waits behind a purge however
much history there is. A failed round is logged and tried again at the next; it never stops the
runner.

Retention belongs to the Runner rather than the backend because it is the runner that lives
long and has a loop to run it in; a backend is also opened by producers and by the CLI, which
purge nothing. Runners of one schema with different retentions purge at the shortest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import timedelta

from batchworks._calls import Calls
from batchworks._checks import duration
from batchworks._logs import log_extra
from batchworks._settle import TRANSIENT
from batchworks.backends.base import Backend
from batchworks.errors import ConfigurationError

__all__ = ["PURGE_BATCH", "PURGE_INTERVAL", "RETENTION", "Retention", "check_retention"]

logger = logging.getLogger("batchworks.retention")

RETENTION = timedelta(days=7)  # how long a finished job is kept, by default
PURGE_INTERVAL = 60.0  # seconds between purge rounds at most
PURGE_BATCH = 1_000  # jobs one purge statement deletes at most


def check_retention(value: object) -> float | None:
    """Seconds a finished job is kept, or None (never purged)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"retention must be a timedelta, a number of seconds or None (keep every finished "
            f"job), got {value!r}"
        )
    return duration(value, "retention")


class Retention:
    """Purges a backend's finished jobs older than ``retention`` seconds, round after round."""

    def __init__(
        self,
        backend: Backend,
        retention: float,
        *,
        calls: Calls,
        worker: str,
        batch: int = PURGE_BATCH,
    ) -> None:
        self._backend = backend
        self._retention = retention
        self._calls = calls
        self._worker = worker
        self._batch = batch
        #: seconds between rounds: at least two rounds per retention period
        self.interval = min(PURGE_INTERVAL, retention / 2)
        self.purged = 0

    def __repr__(self) -> str:
        return f"<Retention {self._retention:g}s every {self.interval:g}s purged={self.purged}>"

    async def run(self, stop: asyncio.Event) -> None:
        """Purge a round every :attr:`interval` seconds until ``stop`` is set. The first round
        comes at a random point of the first interval, so that a fleet started at once does
        not contend for the purge at the same moment."""
        wait = random.uniform(0.0, self.interval)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
                    return
            try:
                await self.purge_round(stop)
            except TRANSIENT as exc:
                if stop.is_set():
                    return  # a stop cut the round short: nothing failed
                logger.warning(
                    "purging finished jobs failed (%s: %s); trying again in %.0fs",
                    type(exc).__name__,
                    exc,
                    self.interval,
                    extra=log_extra("purge_failed", worker=self._worker),
                )
            wait = self.interval

    async def purge_round(self, stop: asyncio.Event | None = None) -> int:
        """Delete batches until one comes back short, another runner is purging, or ``stop``
        is set; returns how many jobs this round deleted."""
        deleted = 0
        while stop is None or not stop.is_set():
            count = await self._calls.run(
                "purge",
                self._backend.purge_batch(self._retention, limit=self._batch),
                cut=stop,
            )
            if count is None:  # another runner is purging now
                break
            deleted += count
            if count < self._batch:
                break
        self.purged += deleted
        if deleted:
            logger.info(
                "purged %d jobs finished more than %.0fs ago",
                deleted,
                self._retention,
                extra=log_extra("purged", worker=self._worker, count=deleted),
            )
        return deleted
