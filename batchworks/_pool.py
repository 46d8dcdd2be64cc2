"""The Runner's worker pool: at most ``concurrency`` long-lived tasks run the jobs it holds.

A task per job (and a semaphore slot, and a ``gather`` per batch) cost a third of the Runner's
Python per job (#18). Here a job waits in a FIFO until one of the pool's tasks is free, which
is what the semaphore's queue did; the tasks are started as jobs come, up to the pool's size,
and stay, idle, between batches.

Jobs put wake one task. A task that takes a job while more wait asks for the others at the
event loop's next turn (``_spread``): that turn comes once its handler suspends, and then wakes
a task for each job still waiting, so handlers that wait on I/O all start within three turns;
if the handler returns without suspending, as a no-op or a cached look-up does, the same task
goes on to the next job, and the turn finds none left. (Waking one task per job put made 99 of
100 wake-ups find no job left: the first woken task ran the whole batch. #18,
``bench/overhead.py``.)

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
        # The idle tasks, each waiting on its future for a job; the tasks woken or started
        # that have not taken a job yet; and how many tasks are inside a job.
        self._idle: list[tuple[asyncio.Future[None], asyncio.Task[None]]] = []
        self._coming: set[asyncio.Task[None]] = set()
        self._busy = 0
        self._closed = False
        self._spreading = False  # a _spread is due at the loop's next turn
        #: the pool's tasks (the Runner waits for them at shutdown)
        self.tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """Jobs waiting for a free task."""
        return len(self._ready)

    def put(self, helds: Iterable[Held]) -> None:
        """Run these jobs after those already waiting."""
        self._ready.extend(helds)
        self._wake(1)  # none if a task woken earlier has not taken a job yet

    def _spread(self) -> None:
        """The loop's turn that a task taking a job asked for. A task still inside a job now
        has suspended in its handler: then a task for each job that waits; else one."""
        self._spreading = False
        self._wake(len(self._ready) if self._busy else 1)

    def _wake(self, wanted: int) -> None:
        """Tasks for the jobs that wait, ``wanted`` of them counting those already coming: the
        most recently idle first (the warmest), then new ones while there are fewer than
        ``size``."""
        wanted = min(wanted, len(self._ready)) - len(self._coming)
        while wanted > 0 and self._idle:
            woken, task = self._idle.pop()
            if not woken.done():  # not a task cancelled while idle
                woken.set_result(None)
                self._coming.add(task)
                wanted -= 1
        while wanted > 0 and len(self.tasks) < self._size and not self._closed:
            task = asyncio.create_task(self._work(), name="batchworks:job")
            self.tasks.add(task)
            self._coming.add(task)
            task.add_done_callback(self._ended)
            wanted -= 1

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._coming.discard(task)  # one cancelled before it ran is not coming

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
        for woken, _ in self._idle:
            if not woken.done():
                woken.set_result(None)
        self._idle.clear()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._coming.discard(task)
        ready = self._ready
        while True:
            if ready:
                held = ready.popleft()
                if ready and not self._spreading:
                    # More wait: tasks for them at the next turn, which comes as soon as
                    # this job's handler suspends (see the module docstring).
                    self._spreading = True
                    loop.call_soon(self._spread)
                self._busy += 1
                try:
                    await self._run(held, task)
                finally:
                    self._busy -= 1
                continue
            if self._closed:
                return
            woken = loop.create_future()
            entry = (woken, task)
            self._idle.append(entry)
            try:
                await woken
            finally:
                self._coming.discard(task)
                if woken.cancelled():  # the task was cancelled while idle
                    with contextlib.suppress(ValueError):
                        self._idle.remove(entry)
