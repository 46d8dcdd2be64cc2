"""``wait_job()`` and ``wait_batch()`` for every backend: who waits on which job (or batch),
and the wait itself.

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
from typing import Generic, TypeVar

from batchworks._checks import seconds
from batchworks.batch import BatchRecord
from batchworks.errors import BatchNotFound, JobNotFound
from batchworks.job import JobRecord

__all__ = ["BatchWaiters", "JobWaiters"]

R = TypeVar("R", JobRecord, BatchRecord)
#: seconds until the next re-read without a wake-up (None: only on a wake-up)
Recheck = Callable[[], float | None]


class _Waiters(Generic[R]):
    """The waiters of one backend, by the id of what they wait on."""

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

    def _missing(self, key: int) -> LookupError:
        raise NotImplementedError

    def _done(self, record: R) -> bool:
        raise NotImplementedError

    def _late(self, record: R, limit: float) -> str:
        raise NotImplementedError

    async def wait(
        self,
        job_id: int,
        timeout: float | None,
        *,
        fetch: Callable[[int], Awaitable[R | None]],
        recheck: Recheck,
    ) -> R:
        """Return the record once ``fetch`` finds it done; see Backend.wait_job.

        It is always read at least once, so ``timeout=0`` asks "has it ended?"; the limit
        bounds the waits between reads.
        """
        limit = None if timeout is None else seconds(timeout, name="timeout")
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            with self._subscribe(job_id) as woken:
                record = await fetch(job_id)
                if record is None:
                    raise self._missing(job_id)
                if self._done(record):
                    return record
                wait = recheck()
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        assert limit is not None
                        raise TimeoutError(self._late(record, limit))
                    wait = left if wait is None else min(wait, left)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await woken.wait()


class JobWaiters(_Waiters[JobRecord]):
    """The wait_job() waiters of one backend, by job id."""

    def _missing(self, key: int) -> LookupError:
        return JobNotFound(key)

    def _done(self, record: JobRecord) -> bool:
        return record.state.is_final

    def _late(self, record: JobRecord, limit: float) -> str:
        return (
            f"job {record.id} is still {record.state.value} after {limit:g}s; "
            "wait longer (timeout=) or look at its workers (batchworks workers)"
        )


class BatchWaiters(_Waiters[BatchRecord]):
    """The wait_batch() waiters of one backend, by batch id."""

    def _missing(self, key: int) -> LookupError:
        return BatchNotFound(key)

    def _done(self, record: BatchRecord) -> bool:
        return record.done

    def _late(self, record: BatchRecord, limit: float) -> str:
        if record.state == "open":
            hint = "it is still open: close_batch() it, or it never finishes"
        else:
            hint = f"{record.pending} of {record.total} members pending; wait longer (timeout=)"
        return f"batch {record.id} is not done after {limit:g}s: {hint}"
