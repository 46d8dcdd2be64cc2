"""Batches (#16) on both backends: counters exact at each step, callbacks enqueued exactly once
(``on_complete`` when every member ended, ``on_success`` only when every member succeeded),
members added while it runs, a batch of no member, cancel, retry, waiting and paged results."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from batchworks import (
    BatchClosed,
    BatchNotFound,
    BatchRecord,
    BatchState,
    Callback,
    ConfigurationError,
    Job,
    JobState,
    PayloadError,
    Runner,
    Terminal,
)
from batchworks.backends.base import Backend
from tests.support.calls import claim, succeeded

HANG_NET = 15.0  # seconds

DONE = Callback(queue="done", payload={"report": "nightly"})
OK = Callback(queue="ok", payload={"mail": "ops"})


async def _counts(backend: Backend, batch_id: int) -> tuple[Any, ...]:
    record = await backend.get_batch(batch_id)
    assert record is not None
    return (
        record.state,
        record.total,
        record.queued,
        record.running,
        record.succeeded,
        record.failed,
        record.cancelled,
    )


async def _callbacks(backend: Backend, batch_id: int) -> dict[str, list[Any]]:
    """The jobs enqueued as callbacks of ``batch_id``, by callback name."""
    found: dict[str, list[Any]] = {}
    for job in await backend.list_jobs(limit=10_000):
        payload = job.payload
        if isinstance(payload, dict) and payload.get("batch_id") == batch_id:
            found.setdefault(payload["callback"], []).append(job)
    return found


def _handlers(seen: list[tuple[str, Any]], member: Any = None) -> dict[str, Any]:
    async def work(job: Job) -> object:
        if member is not None:
            return await member(job)
        return {"double": job.payload["n"] * 2}

    async def callback(job: Job) -> object:
        seen.append((job.queue, job.payload))
        return None

    return {"work": work, "done": callback, "ok": callback}


class TestBatchLifecycle:
    async def test_a_batch_that_succeeds_runs_both_callbacks_once_with_its_id(
        self, backend: Backend
    ) -> None:
        batch = await backend.enqueue_batch(
            "work", [{"n": i} for i in range(5)], on_complete=DONE, on_success=OK, name="five"
        )
        assert len(batch.job_ids) == 5 and batch.job_ids == sorted(batch.job_ids)
        assert await _counts(backend, batch.id) == (BatchState.CLOSED, 5, 5, 0, 0, 0, 0)

        seen: list[tuple[str, Any]] = []
        await Runner(backend, _handlers(seen)).run_until_empty()

        record = await backend.get_batch(batch.id)
        assert record is not None and record.done and record.finished_at is not None
        assert (record.name, record.progress, record.on_complete) == ("five", 1.0, DONE)
        assert await _counts(backend, batch.id) == (BatchState.FINISHED, 5, 0, 0, 5, 0, 0)
        assert sorted(seen, key=str) == [
            ("done", {"batch_id": batch.id, "callback": "on_complete", "payload": DONE.payload}),
            ("ok", {"batch_id": batch.id, "callback": "on_success", "payload": OK.payload}),
        ]
        callbacks = await _callbacks(backend, batch.id)
        assert [job.id for job in callbacks["on_complete"]] == [record.complete_job]
        assert [job.id for job in callbacks["on_success"]] == [record.success_job]

    async def test_a_failed_member_runs_on_complete_and_never_on_success(
        self, backend: Backend
    ) -> None:
        async def member(job: Job) -> object:
            if job.payload["n"] == 2:
                raise Terminal("row 2 is malformed")
            return job.payload["n"]

        batch = await backend.enqueue_batch(
            "work", [{"n": i} for i in range(4)], on_complete=DONE, on_success=OK
        )
        seen: list[tuple[str, Any]] = []
        await Runner(backend, _handlers(seen, member)).run_until_empty()

        assert await _counts(backend, batch.id) == (BatchState.FINISHED, 4, 0, 0, 3, 1, 0)
        assert [queue for queue, _ in seen] == ["done"]
        record = await backend.get_batch(batch.id)
        assert record is not None and record.success_job is None
        [failure] = await backend.batch_failures(batch.id)
        assert (failure.type, failure.message, failure.count) == (
            "Terminal",
            "row 2 is malformed",
            1,
        )
        assert failure.example == batch.job_ids[2]

    async def test_a_retry_of_its_failed_members_reopens_it_and_success_follows_once(
        self, backend: Backend
    ) -> None:
        fixed = False

        async def member(job: Job) -> object:
            if job.payload["n"] == 1 and not fixed:
                raise Terminal("upstream down")
            return "ok"

        batch = await backend.enqueue_batch(
            "work", [{"n": 0}, {"n": 1}], on_complete=DONE, on_success=OK
        )
        seen: list[tuple[str, Any]] = []
        runner = Runner(backend, _handlers(seen, member))
        await runner.run_until_empty()
        assert [queue for queue, _ in seen] == ["done"]

        assert await backend.retry_failed(batch_id=batch.id) == 1
        assert await _counts(backend, batch.id) == (BatchState.CLOSED, 2, 1, 0, 1, 0, 0)
        fixed = True
        await Runner(backend, _handlers(seen, member)).run_until_empty()

        assert await _counts(backend, batch.id) == (BatchState.FINISHED, 2, 0, 0, 2, 0, 0)
        assert [queue for queue, _ in seen] == ["done", "ok"]  # on_complete not again
        assert {k: len(v) for k, v in (await _callbacks(backend, batch.id)).items()} == {
            "on_complete": 1,
            "on_success": 1,
        }

    async def test_a_batch_of_no_member_runs_its_callbacks_at_once(self, backend: Backend) -> None:
        batch = await backend.enqueue_batch("work", [], on_complete=DONE, on_success=OK)
        assert batch.job_ids == []
        async with asyncio.timeout(HANG_NET):
            record = await backend.wait_batch(batch.id, timeout=0)
        assert (record.state, record.total, record.done) == (BatchState.FINISHED, 0, True)
        callbacks = await _callbacks(backend, batch.id)
        assert [job.id for job in callbacks["on_complete"]] == [record.complete_job]
        assert [job.id for job in callbacks["on_success"]] == [record.success_job]
        # Closing it again changes nothing, and enqueues nothing more.
        again = await backend.close_batch(batch.id)
        assert (again.complete_job, again.success_job) == (record.complete_job, record.success_job)
        assert {k: len(v) for k, v in (await _callbacks(backend, batch.id)).items()} == {
            "on_complete": 1,
            "on_success": 1,
        }


class TestGrowingBatches:
    async def test_an_open_batch_finishes_only_once_closed(self, backend: Backend) -> None:
        batch = await backend.enqueue_batch("work", [{"n": 1}], on_complete=DONE, close=False)
        seen: list[tuple[str, Any]] = []
        await Runner(backend, _handlers(seen)).run_until_empty()
        assert await _counts(backend, batch.id) == (BatchState.OPEN, 1, 0, 0, 1, 0, 0)
        assert seen == []

        more = await backend.add_to_batch(batch.id, [{"n": 2}, {"n": 3}])
        assert more.id == batch.id and len(more.job_ids) == 2
        assert await _counts(backend, batch.id) == (BatchState.OPEN, 3, 2, 0, 1, 0, 0)
        closed = await backend.close_batch(batch.id)
        assert closed.state is BatchState.CLOSED and not closed.done
        await Runner(backend, _handlers(seen)).run_until_empty()

        assert await _counts(backend, batch.id) == (BatchState.FINISHED, 3, 0, 0, 3, 0, 0)
        assert [queue for queue, _ in seen] == ["done"]

    async def test_a_member_adds_to_its_own_closed_batch_while_it_runs(
        self, backend: Backend
    ) -> None:
        async def member(job: Job) -> object:
            if job.payload["n"] < 3:  # each member spawns the next, up to 3
                assert job.batch_id is not None
                added = await backend.add_to_batch(job.batch_id, [{"n": job.payload["n"] + 1}])
                assert added.id == job.batch_id
            return job.payload["n"]

        batch = await backend.enqueue_batch("work", [{"n": 0}], on_complete=DONE, on_success=OK)
        seen: list[tuple[str, Any]] = []
        await Runner(backend, _handlers(seen, member)).run_until_empty()

        assert await _counts(backend, batch.id) == (BatchState.FINISHED, 4, 0, 0, 4, 0, 0)
        assert sorted(queue for queue, _ in seen) == ["done", "ok"]
        results = [record.result async for record in backend.batch_results(batch.id)]
        assert results == [0, 1, 2, 3]

    async def test_a_finished_or_unknown_batch_takes_no_member(self, backend: Backend) -> None:
        batch = await backend.enqueue_batch("work", [], on_complete=DONE)
        with pytest.raises(BatchClosed, match="finished"):
            await backend.add_to_batch(batch.id, [{"n": 1}], queue="work")
        with pytest.raises(BatchNotFound):
            await backend.add_to_batch(999_999, [{"n": 1}], queue="work")
        with pytest.raises(BatchNotFound):
            await backend.add_to_batch(999_999, [{"n": 1}])
        with pytest.raises(BatchNotFound):
            await backend.close_batch(999_999)
        assert await backend.get_batch(999_999) is None
        record = await backend.get_batch(batch.id)
        assert record is not None and record.total == 0

    async def test_bad_input_is_refused_before_anything_is_stored(self, backend: Backend) -> None:
        with pytest.raises(PayloadError, match="payload #1"):
            await backend.enqueue_batch("work", [{"n": 1}, {"bad": object()}])
        with pytest.raises(PayloadError, match="on_complete"):
            await backend.enqueue_batch("work", [], on_complete=Callback("done", object()))
        with pytest.raises(ConfigurationError, match="Callback"):
            await backend.enqueue_batch("work", [], on_complete="done")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="queue name"):
            Callback("bad queue!", None)
        assert await backend.batches() == []


class TestCancelAndRecovery:
    async def test_cancel_ends_queued_members_and_on_complete_still_comes(
        self, backend: Backend
    ) -> None:
        batch = await backend.enqueue_batch(
            "work", [{"n": i} for i in range(3)], on_complete=DONE, on_success=OK
        )
        worker = await backend.register_worker("w", ["work"])
        [running] = await claim(backend, worker, 1, queues=("work",))

        record = await backend.cancel_batch(batch.id)
        assert (record.state, record.cancelled, record.running, record.done) == (
            BatchState.CANCELLED,
            2,
            1,
            False,
        )
        assert await _callbacks(backend, batch.id) == {}
        # The running member ends as it ends (here it succeeded before its heartbeat).
        assert await backend.settle(worker, [succeeded(running.id)]) == []

        async with asyncio.timeout(HANG_NET):
            done = await backend.wait_batch(batch.id)
        assert (done.state, done.succeeded, done.cancelled, done.done) == (
            BatchState.CANCELLED,
            1,
            2,
            True,
        )
        callbacks = await _callbacks(backend, batch.id)
        assert list(callbacks) == ["on_complete"] and len(callbacks["on_complete"]) == 1
        with pytest.raises(BatchClosed, match="cancelled"):
            await backend.add_to_batch(batch.id, [{"n": 9}])

    async def test_a_member_lost_with_its_worker_is_counted_by_the_recovery(
        self, backend: Backend
    ) -> None:
        batch = await backend.enqueue_batch("work", [{"n": 1}], on_complete=DONE, max_attempts=1)
        first = await backend.register_worker("w", ["work"])
        await claim(backend, first, 1, queues=("work",))
        assert await _counts(backend, batch.id) == (BatchState.CLOSED, 1, 0, 1, 0, 0, 0)

        await backend.register_worker("w", ["work"])  # a restart: the job is lost, no attempt left

        assert await _counts(backend, batch.id) == (BatchState.FINISHED, 1, 0, 0, 0, 1, 0)
        [failure] = await backend.batch_failures(batch.id)
        assert failure.type == "WorkerLost"
        assert len((await _callbacks(backend, batch.id))["on_complete"]) == 1

    async def test_cancelling_a_member_alone_counts_it(self, backend: Backend) -> None:
        batch = await backend.enqueue_batch("work", [{"n": 1}, {"n": 2}], on_complete=DONE)
        assert await backend.cancel(batch.job_ids[0])
        assert await _counts(backend, batch.id) == (BatchState.CLOSED, 2, 1, 0, 0, 0, 1)


class TestReading:
    async def test_wait_batch_is_woken_when_the_last_member_ends(self, backend: Backend) -> None:
        batch = await backend.enqueue_batch("work", [{"n": i} for i in range(3)])
        waiter = asyncio.create_task(backend.wait_batch(batch.id))
        for _ in range(20):  # let it subscribe and read (a round trip on PostgreSQL)
            await asyncio.sleep(0.01)
        assert not waiter.done()
        async with Runner(backend, _handlers([])):
            async with asyncio.timeout(HANG_NET):
                record: BatchRecord = await waiter
        assert (record.succeeded, record.done) == (3, True)

    async def test_wait_batch_times_out_on_an_open_batch(self, backend: Backend) -> None:
        batch = await backend.enqueue_batch("work", [], close=False)
        with pytest.raises(TimeoutError, match="still open"):
            await backend.wait_batch(batch.id, timeout=0.05)
        with pytest.raises(BatchNotFound):
            await backend.wait_batch(999_999, timeout=0)

    async def test_results_stream_in_pages_in_member_order(self, backend: Backend) -> None:
        batch = await backend.enqueue_batch("work", [{"n": i} for i in range(10)])
        await Runner(backend, _handlers([])).run_until_empty()
        records = [record async for record in backend.batch_results(batch.id, page_size=3)]
        assert [record.id for record in records] == batch.job_ids
        assert [record.result for record in records] == [{"double": 2 * i} for i in range(10)]
        assert all(record.state is JobState.SUCCEEDED for record in records)

    async def test_batches_lists_the_newest_first_and_counts_open_ones(
        self, backend: Backend
    ) -> None:
        first = await backend.enqueue_batch("work", [{"n": 1}], name="a")
        second = await backend.enqueue_batch("work", [], name="b")
        listed = await backend.batches(limit=10)
        assert [(b.id, b.name) for b in listed] == [(second.id, "b"), (first.id, "a")]
        assert [b.id for b in await backend.batches(limit=1)] == [second.id]
        assert await backend.open_batches() == 1  # the empty one finished at once

    async def test_purge_keeps_the_members_of_a_batch_not_done(self, backend: Backend) -> None:
        batch = await backend.enqueue_batch("work", [{"n": 1}, {"n": 2}], close=False)
        worker = await backend.register_worker("w", ["work"])
        [job] = await claim(backend, worker, 1, queues=("work",))
        await backend.settle(worker, [succeeded(job.id)])
        assert await backend.purge(0) == 0  # its batch is open: the result stays
        assert await backend.get_job(job.id) is not None

        await backend.cancel_batch(batch.id)  # done now: both ended
        assert await backend.purge(0) == 2
        assert await backend.get_batch(batch.id) is None
