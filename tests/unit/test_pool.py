"""The Runner's worker pool (batchworks._pool): order, size, and a cancel that does not
outlive its job on the task that ran it."""

from __future__ import annotations

import asyncio

from batchworks._attempt import CancelReason, Held
from batchworks._pool import Pool
from batchworks.backends.base import ClaimedJob
from batchworks.job import Job


def _held(job_id: int) -> Held:
    claim = ClaimedJob(id=job_id, queue="q", payload=None, attempt=1, max_attempts=3)
    return Held(Job(id=job_id, queue="q", payload=None, attempt=1, max_attempts=3), claim)


async def test_jobs_run_in_order_on_at_most_size_tasks() -> None:
    ran: list[int] = []
    running = 0
    most = 0
    release, three, ten = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def run(held: Held, task: asyncio.Task[None]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        ran.append(held.job.id)
        if len(ran) == 3:
            three.set()
        await release.wait()
        running -= 1
        if len(ran) == 10 and not running:
            ten.set()

    pool = Pool(3, run)
    pool.put([_held(i) for i in range(10)])
    async with asyncio.timeout(5):
        await three.wait()
    assert (len(pool.tasks), len(pool), ran) == (3, 7, [0, 1, 2])
    release.set()
    async with asyncio.timeout(5):
        await ten.wait()
    assert ran == list(range(10)) and most == 3
    pool.close()
    async with asyncio.timeout(5):
        await asyncio.gather(*pool.tasks)
    assert not pool.tasks


async def test_a_cancelled_job_leaves_its_task_clean_for_the_next() -> None:
    seen: list[tuple[int, str]] = []
    started, both = asyncio.Event(), asyncio.Event()

    async def run(held: Held, task: asyncio.Task[None]) -> None:
        held.start(task)
        try:
            if held.job.id == 1:
                started.set()
                await asyncio.Event().wait()  # until cancelled
            await asyncio.sleep(0)  # the next job awaits: a cancel left over would hit here
            seen.append((held.job.id, "done"))
        except asyncio.CancelledError:
            seen.append((held.job.id, "cancelled"))
        finally:
            held.finish()
            if len(seen) == 2:
                both.set()

    pool = Pool(1, run)
    first, second = _held(1), _held(2)
    pool.put([first, second])
    async with asyncio.timeout(5):
        await started.wait()
    first.cancel(CancelReason.OPERATOR)
    async with asyncio.timeout(5):
        await both.wait()
    (task,) = pool.tasks
    assert seen == [(1, "cancelled"), (2, "done")]
    assert task.cancelling() == 0 and first.task is None
    pool.close()


async def test_a_waiting_job_can_be_taken_out() -> None:
    ran: list[int] = []
    gate = asyncio.Event()

    async def run(held: Held, task: asyncio.Task[None]) -> None:
        await gate.wait()
        ran.append(held.job.id)

    pool = Pool(1, run)
    waiting = _held(2)
    pool.put([_held(1), waiting])
    assert pool.remove(waiting) and not pool.remove(waiting)
    gate.set()
    pool.close()
    async with asyncio.timeout(5):
        await asyncio.gather(*pool.tasks)
    assert ran == [1]


async def test_jobs_that_never_suspend_run_on_one_task_waking_no_other() -> None:
    ran: list[int] = []
    done = asyncio.Event()

    async def run(held: Held, task: asyncio.Task[None]) -> None:
        ran.append(held.job.id)  # returns without suspending, as a no-op handler does
        if len(ran) == 20:
            done.set()

    pool = Pool(10, run)
    pool.put([_held(i) for i in range(10)])
    # One turn of the loop (the property under test, not a wait for something): the task
    # started runs the whole batch in it, and no other task is started for nothing.
    await asyncio.sleep(0)
    assert len(ran) == 10 and len(pool.tasks) == 1
    pool.put([_held(i) for i in range(10, 20)])
    async with asyncio.timeout(5):
        await done.wait()
    assert ran == list(range(20)) and len(pool.tasks) == 1
    pool.close()
    async with asyncio.timeout(5):
        await asyncio.gather(*pool.tasks)


async def test_jobs_that_suspend_all_start_within_three_turns() -> None:
    started: list[int] = []
    release = asyncio.Event()

    async def run(held: Held, task: asyncio.Task[None]) -> None:
        started.append(held.job.id)
        await release.wait()  # suspends, as a handler waiting on I/O does

    pool = Pool(10, run)
    pool.put([_held(i) for i in range(10)])
    turns = 0
    # Turns of the loop, counted (the property under test, not a wait for something): the
    # first task starts, the turn its suspension lets through wakes the rest, which start.
    while len(started) < 10 and turns < 50:
        await asyncio.sleep(0)
        turns += 1
    assert started == list(range(10)) and turns <= 3, f"{len(started)} started in {turns} turns"
    assert len(pool.tasks) == 10
    release.set()
    pool.close()
    async with asyncio.timeout(5):
        await asyncio.gather(*pool.tasks)
