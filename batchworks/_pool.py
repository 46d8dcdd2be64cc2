"""The Runner's worker pool: at most ``concurrency`` long-lived tasks run the jobs it holds.

A task per job (and a semaphore slot, and a ``gather`` per batch) cost a third of the Runner's
Python per job (#18). Here a job waits in a FIFO until one of the pool's tasks is free, which
is what the semaphore's queue did; the tasks are started as jobs come, up to the pool's size,
and stay, idle, between batches.

A job is cancelled by cancelling the task that runs it, only while that task is inside the
job's attempt (:class:`~batchworks._attempt.Held` knows the task only then); the Runner's
``run`` callback takes the cancellation back (``Task.uncancel``) once the attempt ended, so the
task goes on to the next job clean.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Iterable

from batchworks._attempt import Held

#: ``run(held, task)``: run one held job to its outcome in ``task`` (the pool's task running
#: it); raises only when that task must end
Run = Callable[[Held, "asyncio.Task[None]"], Awaitable[None]]


class Pool:
    """Runs held jobs, in the order they were put, on at most ``size`` tasks."""

    def __init__(self, size: int, run: Run) -> None:
        self._size = size
        self._run = run
        self._ready: collections.deque[Held] = collections.deque()
        self._idle: list[asyncio.Future[None]] = []  # one per idle task, waiting for a job
        self._closed = False
        #: the pool's tasks (the Runner waits for them at shutdown)
        self.tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Jobs waiting for a free task."""
        return len(self._ready)

    def put(self, helds: Iterable[Held]) -> None:
        """Run these jobs after those already waiting."""
        before = len(self._ready)
        self._ready.extend(helds)
        waiting = len(self._ready) - before
        while waiting and self._idle:
            woken = self._idle.pop()  # the most recently idle task: the warmest
            if not woken.done():
                woken.set_result(None)
                waiting -= 1
        while waiting > 0 and len(self.tasks) < self._size and not self._closed:
            task = asyncio.create_task(self._work(), name="batchworks:job")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            waiting -= 1

    def remove(self, held: Held) -> bool:
        """Take a job that waits for a task out of the pool (False: it was not waiting)."""
        try:
            self._ready.remove(held)
        except ValueError:
            return False
        return True

    def close(self) -> None:
        """Let the tasks end once nothing is left waiting."""
        self._closed = True
        for woken in self._idle:
            if not woken.done():
                woken.set_result(None)
        self._idle.clear()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        ready = self._ready
        while True:
            if ready:
                await self._run(ready.popleft(), task)
                continue
            if self._closed:
                return
            woken = loop.create_future()
            self._idle.append(woken)
            try:
                await woken
            finally:
                if woken.cancelled():  # the task was cancelled while idle
                    with contextlib.suppress(ValueError):
                        self._idle.remove(woken)
