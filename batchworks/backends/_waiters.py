"""``wait_job()`` for every backend: who waits on which job, and the wait itself.

A waiter subscribes *before* it reads the job, so a job that ends between the read and the
wait still wakes it; the backend calls :meth:`JobWaiters.wake` when a job ends (the memory
backend from its settle, PostgreSQL from a NOTIFY). Each wake-up re-reads the job rather
than trusting the notification: a job re-queued meanwhile (``retry_failed()``) is waited for
again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

from batchworks._checks import seconds
from batchworks.errors import JobNotFound
from batchworks.job import JobRecord

__all__ = ["JobWaiters"]

Fetch = Callable[[int], Awaitable[JobRecord | None]]
#: seconds until the next re-read without a wake-up (None: only on a wake-up)
Recheck = Callable[[], float | None]


class JobWaiters:
    """The wait_job() waiters of one backend, by job id."""

    def __init__(self) -> None:
        self._events: dict[int, set[asyncio.Event]] = {}

    def __bool__(self) -> bool:
        return bool(self._events)

    def wake(self, job_id: int) -> None:
        for event in self._events.get(job_id, ()):
            event.set()

    def wake_all(self) -> None:
        """Wake every waiter to re-read its job (after notifications may have been missed)."""
        for events in self._events.values():
            for event in events:
                event.set()

    @contextlib.contextmanager
    def _subscribe(self, job_id: int) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        events = self._events.setdefault(job_id, set())
        events.add(event)
        try:
            yield event
        finally:
            events.discard(event)
            if not events and self._events.get(job_id) is events:
                del self._events[job_id]

    async def wait(
        self, job_id: int, timeout: float | None, *, fetch: Fetch, recheck: Recheck
    ) -> JobRecord:
        """Return the job once ``fetch`` finds it in a final state; see Backend.wait_job.

        The job is always read at least once, so ``timeout=0`` asks "has it ended?"; the
        limit bounds the waits between reads.
        """
        limit = None if timeout is None else seconds(timeout, name="timeout")
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            with self._subscribe(job_id) as woken:
                record = await fetch(job_id)
                if record is None:
                    raise JobNotFound(job_id)
                if record.state.is_final:
                    return record
                wait = recheck()
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise TimeoutError(
                            f"job {job_id} is still {record.state.value} after {limit:g}s; "
                            "wait longer (timeout=) or look at its workers (batchworks workers)"
                        )
                    wait = left if wait is None else min(wait, left)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await woken.wait()
