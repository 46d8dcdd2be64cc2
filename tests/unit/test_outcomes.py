"""README.md's outcome table ("What happens to a job"), row by row, and the allSettled
guarantees of a batch."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import tenacity

from batchworks import Job, JobState, RetryPolicy, Runner, Snooze, Terminal
from batchworks.backends.base import Backend
from tests.conftest import eventually

#: datetimes come back from float timestamps: allow for their rounding
SLACK = timedelta(milliseconds=5)

Drive = Callable[[Backend], Awaitable[int]]


async def _block_forever(job: Job) -> object:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def _run_one(
    backend: Backend,
    handler: Callable[[Job], Awaitable[object]],
    *,
    max_attempts: int | None = None,
    **runner_options: Any,
) -> int:
    """Enqueue one job, run a Runner until the queue is empty, return the job's id."""
    job_id = await backend.enqueue("q", {"n": 1}, max_attempts=max_attempts)
    async with asyncio.timeout(15):  # a hang net
        await Runner(backend, {"q": handler}, **runner_options).run_until_empty()
    return job_id


async def _state(backend: Backend, job_id: int) -> JobState:
    record = await backend.get_job(job_id)
    assert record is not None
    return record.state


async def _returns_a_value(backend: Backend) -> int:
    async def handler(job: Job) -> object:
        return {"sent": job.payload["n"], "to": ["a@example.com"]}

    return await _run_one(backend, handler)


async def _raises_terminal(backend: Backend) -> int:
    async def handler(job: Job) -> object:
        raise Terminal("no such user")

    return await _run_one(backend, handler)


async def _policy_calls_terminal(backend: Backend) -> int:
    async def handler(job: Job) -> object:
        raise ValueError("bad address")

    policy = RetryPolicy(retry=tenacity.retry_if_not_exception_type(ValueError))
    return await _run_one(backend, handler, retry=policy)


async def _retryable_attempts_left(backend: Backend) -> int:
    async def handler(job: Job) -> object:
        raise ConnectionError("smtp reset")

    return await _run_one(backend, handler)  # the default policy: 1-2 s for attempt 1


async def _retryable_no_attempts_left(backend: Backend) -> int:
    async def handler(job: Job) -> object:
        raise ConnectionError(f"smtp reset #{job.attempt}")

    policy = RetryPolicy(max_attempts=2, wait=tenacity.wait_fixed(0))
    return await _run_one(backend, handler, retry=policy)


async def _snooze(backend: Backend) -> int:
    async def handler(job: Job) -> object:
        raise Snooze(120)

    return await _run_one(backend, handler)


async def _runs_past_timeout(backend: Backend) -> int:
    policy = RetryPolicy(wait=tenacity.wait_fixed(60))
    return await _run_one(backend, _block_forever, retry=policy, job_timeout=0.05)


async def _cancelled_by_shutdown(backend: Backend) -> int:
    started = asyncio.Event()

    async def handler(job: Job) -> object:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    job_id = await backend.enqueue("q", {"n": 1})
    runner = Runner(backend, {"q": handler}, shutdown_timeout=0.05)
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(15):  # a hang net
        await started.wait()
        runner.stop()
        await task
    assert runner.report.released == 1
    return job_id


async def _worker_lost(backend: Backend) -> int:
    # The worker named "w1" hangs on its job; a restart of "w1" takes over from it.
    started = asyncio.Event()

    async def handler(job: Job) -> object:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    job_id = await backend.enqueue("q", {"n": 1})
    hung = Runner(backend, {"q": handler}, worker_name="w1")
    task = asyncio.create_task(hung.run_until_empty())
    async with asyncio.timeout(15):  # a hang net
        await started.wait()
        await backend.register_worker("w1", ["q"])
        hung.stop(now=True)
        report = await task
    assert report.lost == 1  # its late release was fenced out
    return job_id


@dataclass(frozen=True)
class Row:
    drive: Drive
    state: JobState
    attempts: int
    #: (attempt, type, text the message contains) per failed attempt, oldest first
    errors: tuple[tuple[int, str, str], ...] = ()
    #: seconds after the run that run_at must fall in; None: run_at stays the enqueue time
    run_at_in: tuple[float, float] | None = None
    result: object = None


OUTCOME_TABLE = [
    pytest.param(
        Row(
            _returns_a_value,
            JobState.SUCCEEDED,
            1,
            result={"sent": 1, "to": ["a@example.com"]},
        ),
        id="returns-a-value",
    ),
    pytest.param(
        Row(_raises_terminal, JobState.FAILED, 1, errors=((1, "Terminal", "no such user"),)),
        id="raises-terminal",
    ),
    pytest.param(
        Row(_policy_calls_terminal, JobState.FAILED, 1, errors=((1, "ValueError", "bad addr"),)),
        id="policy-calls-terminal",
    ),
    pytest.param(
        Row(
            _retryable_attempts_left,
            JobState.QUEUED,
            1,
            errors=((1, "ConnectionError", "smtp reset"),),
            run_at_in=(1.0, 2.0),
        ),
        id="retryable-attempts-left",
    ),
    pytest.param(
        Row(
            _retryable_no_attempts_left,
            JobState.FAILED,
            2,
            errors=((1, "ConnectionError", "reset #1"), (2, "ConnectionError", "reset #2")),
            run_at_in=(0.0, 0.0),  # the retry between the two attempts moved it, by 0 s
        ),
        id="retryable-no-attempts-left",
    ),
    pytest.param(
        Row(_snooze, JobState.QUEUED, 0, run_at_in=(120.0, 120.0)),
        id="snooze",
    ),
    pytest.param(
        Row(
            _runs_past_timeout,
            JobState.QUEUED,
            1,
            errors=((1, "TimeoutError", ""),),
            run_at_in=(60.0, 60.0),
        ),
        id="runs-past-timeout",
    ),
    pytest.param(
        Row(_cancelled_by_shutdown, JobState.QUEUED, 0, run_at_in=(0.0, 0.0)),
        id="cancelled-by-shutdown",
    ),
    pytest.param(
        Row(
            _worker_lost,
            JobState.QUEUED,
            1,
            errors=((1, "WorkerLost", "'w1'"),),
            run_at_in=(0.0, 0.0),
        ),
        id="worker-lost",
    ),
]


@pytest.mark.parametrize("row", OUTCOME_TABLE)
async def test_outcome_mapping(backend: Backend, row: Row) -> None:
    before = datetime.now(UTC)
    job_id = await row.drive(backend)
    after = datetime.now(UTC)

    record = await backend.get_job(job_id)
    assert record is not None
    assert record.state is row.state
    assert record.attempts == row.attempts
    assert [(e["attempt"], e["type"]) for e in record.errors] == [
        (attempt, kind) for attempt, kind, _ in row.errors
    ]
    for entry, (_, _, text) in zip(record.errors, row.errors, strict=True):
        assert text in entry["message"]
    assert record.result == row.result
    if row.run_at_in is None:  # not moved: still the enqueue time
        assert before - SLACK <= record.run_at <= record.created_at + SLACK
    else:
        low, high = row.run_at_in
        assert before + timedelta(seconds=low) - SLACK <= record.run_at
        assert record.run_at <= after + timedelta(seconds=high) + SLACK


class TestBatch:
    async def test_failed_job_leaves_siblings_succeeded(self, backend: Backend) -> None:
        calls: Counter[int] = Counter()

        async def handler(job: Job) -> object:
            calls[job.id] += 1
            if job.payload["n"] in (3, 7):
                raise Terminal(f"job {job.payload['n']} is broken")
            return job.payload["n"] * 2

        ids = await backend.enqueue_many("q", [{"n": n} for n in range(10)])
        async with asyncio.timeout(15):  # a hang net
            report = await Runner(backend, {"q": handler}, batch_size=10).run_until_empty()

        assert (report.succeeded, report.failed, report.retried) == (8, 2, 0)
        assert calls == dict.fromkeys(ids, 1)
        for n, job_id in enumerate(ids):
            record = await backend.get_job(job_id)
            assert record is not None
            if n in (3, 7):
                assert record.state is JobState.FAILED
                assert record.result is None
            else:
                assert record.state is JobState.SUCCEEDED
                assert record.result == n * 2
            assert record.attempts == 1

    async def test_every_job_of_a_batch_gets_exactly_one_outcome(self, backend: Backend) -> None:
        behaviours = ["ok", "terminal", "retry", "snooze", "ok", "crash", "ok", "retry"]
        calls: Counter[int] = Counter()

        async def handler(job: Job) -> object:
            calls[job.id] += 1
            match job.payload:
                case "terminal":
                    raise Terminal("no")
                case "retry":
                    raise ConnectionError("later")
                case "snooze":
                    raise Snooze(60)
                case "crash":
                    raise RuntimeError("bug")
            return "done"

        policy = RetryPolicy(retry=tenacity.retry_if_exception_type(ConnectionError))
        ids = await backend.enqueue_many("q", behaviours)
        runner = Runner(backend, {"q": handler}, batch_size=8, concurrency=8, retry=policy)
        async with asyncio.timeout(15):  # a hang net
            report = await runner.run_until_empty()

        assert calls == dict.fromkeys(ids, 1)
        assert (report.succeeded, report.failed, report.retried, report.snoozed) == (3, 2, 2, 1)
        assert report.settled == len(behaviours)
        assert [await _state(backend, job_id) for job_id in ids] == [
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.QUEUED,
            JobState.QUEUED,
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.SUCCEEDED,
            JobState.QUEUED,
        ]

    async def test_finished_job_is_written_while_a_slow_sibling_still_runs(
        self, backend: Backend
    ) -> None:
        release = asyncio.Event()

        async def handler(job: Job) -> object:
            if job.payload == "slow":
                await release.wait()
            return job.payload

        fast, slow = await backend.enqueue_many("q", ["fast", "slow"])
        task = asyncio.create_task(Runner(backend, {"q": handler}).run_until_empty())

        async def fast_succeeded() -> bool:
            record = await backend.get_job(fast)
            return record is not None and record.state is JobState.SUCCEEDED

        await eventually(fast_succeeded, what="the fast job's outcome to be written")
        slow_record = await backend.get_job(slow)
        assert slow_record is not None and slow_record.state is JobState.RUNNING
        release.set()
        async with asyncio.timeout(15):  # a hang net
            report = await task
        assert report.succeeded == 2


class TestResults:
    @pytest.mark.parametrize(
        ("result", "named", "instead"),
        [
            pytest.param(
                {"at": datetime.now(UTC)}, "datetime at '$.at'", "ISO string", id="datetime"
            ),
            pytest.param({"tags": {"a", "b"}}, "set at '$.tags'", "pass a list", id="set"),
            pytest.param("x" * (2 * 1024 * 1024), "over the limit", "", id="too-large"),
        ],
    )
    async def test_result_that_cannot_be_kept_is_an_error_entry_of_a_succeeded_job(
        self, backend: Backend, result: object, named: str, instead: str
    ) -> None:
        calls = []

        async def handler(job: Job) -> object:
            calls.append(job.id)
            return result

        job_id = await _run_one(backend, handler)

        record = await backend.get_job(job_id)
        assert record is not None
        # The side effects happened: the job stays succeeded and does not run again.
        assert (record.state, record.attempts, record.result, calls) == (
            JobState.SUCCEEDED,
            1,
            None,
            [job_id],
        )
        [entry] = record.errors
        assert (entry["attempt"], entry["type"]) == (1, "PayloadError")
        assert named in entry["message"] and instead in entry["message"], entry["message"]
        assert "result was not kept" in entry["message"]
        assert entry["at"]

    async def test_a_flush_mixing_kept_dropped_and_no_results_settles_each(
        self, backend: Backend
    ) -> None:
        async def handler(job: Job) -> object:
            return {"none": None, "kept": [1], "dropped": {1, 2}}[job.payload]

        ids = await backend.enqueue_many("q", ["none", "kept", "dropped", "none"])
        report = await Runner(backend, {"q": handler}, batch_size=4).run_until_empty()

        assert report.succeeded == 4
        records = [await backend.get_job(job_id) for job_id in ids]
        assert [(r.state, r.result, len(r.errors)) for r in records if r is not None] == [
            (JobState.SUCCEEDED, None, 0),
            (JobState.SUCCEEDED, [1], 0),
            (JobState.SUCCEEDED, None, 1),
            (JobState.SUCCEEDED, None, 0),
        ]

    async def test_result_comes_back_as_json(self, backend: Backend) -> None:
        async def handler(job: Job) -> object:
            return ("a", 1, None)

        job_id = await _run_one(backend, handler)

        record = await backend.get_job(job_id)
        assert record is not None
        assert record.result == ["a", 1, None]


class TestMaxAttempts:
    @staticmethod
    async def _always_failing(
        backend: Backend, own: int, policy: int
    ) -> tuple[int, list[tuple[int, int]]]:
        attempts: list[tuple[int, int]] = []

        async def handler(job: Job) -> object:
            attempts.append((job.attempt, job.max_attempts))
            raise ConnectionError("down")

        retry = RetryPolicy(max_attempts=policy, wait=tenacity.wait_fixed(0))
        job_id = await _run_one(backend, handler, max_attempts=own, retry=retry)
        return job_id, attempts

    @pytest.mark.parametrize(("own", "policy"), [(2, 5), (4, 1)])
    async def test_jobs_own_max_attempts_wins_over_the_policys(
        self, backend: Backend, own: int, policy: int
    ) -> None:
        job_id, attempts = await self._always_failing(backend, own, policy)

        assert attempts == [(attempt, own) for attempt in range(1, own + 1)]
        record = await backend.get_job(job_id)
        assert record is not None
        assert record.state is JobState.FAILED
        assert (record.attempts, record.max_attempts) == (own, own)
        assert [entry["attempt"] for entry in record.errors] == list(range(1, own + 1))
