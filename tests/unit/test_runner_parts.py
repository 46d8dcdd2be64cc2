"""The runner's small parts: its waits, the jobs it holds, its states and its log records."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest

from batchworks import Job, MemoryBackend, RetryPolicy, Runner, _attempt, _calls, _settle
from batchworks._attempt import CancelReason, Held
from batchworks._calls import first_set
from batchworks._heartbeat import LeaseClock
from batchworks._logs import log_extra
from batchworks.backends import memory
from batchworks.backends.base import ClaimedJob
from batchworks.runner import RunnerState


class TestFirstSet:
    async def test_returns_when_one_event_is_set_and_leaves_no_waiter_behind(self) -> None:
        first, second = asyncio.Event(), asyncio.Event()
        before = asyncio.all_tasks()
        waiting = asyncio.create_task(first_set(first, second))
        await asyncio.sleep(0)  # let it start waiting
        assert not waiting.done()
        second.set()
        async with asyncio.timeout(5):
            await waiting
        await asyncio.sleep(0)  # the cancelled waiters finish on the next turn
        assert asyncio.all_tasks() - before == set(), "waits left running after the first"

    async def test_returns_after_within_when_none_is_set(self) -> None:
        events = (asyncio.Event(), asyncio.Event())
        async with asyncio.timeout(5):
            await first_set(*events, within=0.01)
        assert not any(event.is_set() for event in events)


def _held(job_id: int = 1) -> Held:
    claim = ClaimedJob(id=job_id, queue="q", payload=None, attempt=1, max_attempts=3)
    job = Job(id=job_id, queue="q", payload=None, attempt=1, max_attempts=3)
    return Held(job, claim)


class TestHeld:
    async def test_the_first_cancel_reason_counts_and_cancels_the_task(self) -> None:
        held = _held()

        async def forever() -> None:
            await asyncio.Event().wait()

        task = asyncio.create_task(forever())
        held.attach(task)
        held.cancel(CancelReason.LOST)
        held.cancel(CancelReason.SHUTDOWN)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert held.cancel_reason is CancelReason.LOST

    def test_a_cancel_before_its_task_is_kept_for_when_it_starts(self) -> None:
        held = _held()
        held.cancel(CancelReason.OPERATOR)
        assert (held.cancel_reason, held.task, held.started) == (CancelReason.OPERATOR, None, False)


class TestStates:
    """The enums' values are the strings logs, reprs and the database showed before them."""

    @pytest.mark.parametrize(
        ("enum", "values"),
        [
            (RunnerState, ["created", "running", "stopping", "stopped"]),
            (CancelReason, ["shutdown", "operator", "lost", "expired"]),
            (memory._WorkerState, ["active", "stopped", "pruned", "replaced"]),
        ],
        ids=["runner", "cancel-reason", "memory-worker"],
    )
    def test_values_are_the_strings(self, enum: Any, values: list[str]) -> None:
        assert [member.value for member in enum] == values
        assert all(f"{member}" == member.value for member in enum)

    async def test_the_repr_shows_the_state_as_its_string(self) -> None:
        runner = Runner(MemoryBackend(), {"q": _noop})
        assert "state=created " in repr(runner)


async def _noop(job: Job) -> None:
    return None


class TestLogRecords:
    def test_log_extra_leaves_out_what_is_not_given(self) -> None:
        assert log_extra("lease_lost", job_ids=(3, 1), worker="w") == {
            "action": "lease_lost",
            "job_ids": [3, 1],
            "worker": "w",
        }

    def test_loggers_are_named_by_their_module(self) -> None:
        for module in (_attempt, _calls, _settle):
            assert module.logger.name == module.__name__

    async def test_every_record_of_a_run_has_an_action_and_only_known_keys(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        vocabulary = {"action", *inspect.signature(log_extra).parameters}
        plain = set(vars(logging.makeLogRecord({})))
        backend = MemoryBackend()

        async def handler(job: Job) -> object:
            if job.payload == "fail":
                raise ValueError("no")
            return object()  # not JSON: the result is dropped, with a warning

        await backend.enqueue("q", "fail")
        await backend.enqueue("q", "ok")
        caplog.set_level(logging.DEBUG, logger="batchworks")
        runner = Runner(backend, {"q": handler}, retry=RetryPolicy(max_attempts=1))
        await runner.run_until_empty()
        records = [r for r in caplog.records if r.name.startswith("batchworks")]
        actions = {getattr(record, "action", None) for record in records}
        assert {"worker_ready", "job_failed", "result_dropped", "worker_stopped"} <= actions
        for record in records:
            extra = set(vars(record)) - plain - {"message", "asctime"}
            assert "action" in extra, f"{record.name}: {record.getMessage()!r} has no action"
            assert extra <= vocabulary, f"{record.getMessage()!r}: keys {extra - vocabulary}"
        by_module = {r.name for r in records if getattr(r, "action", None) == "result_dropped"}
        assert by_module == {"batchworks._attempt"}


class TestLeaseClock:
    """heartbeat_interval 1 s, prune_after 5 s: stall limit 2 s, margin 1 s."""

    def clock(self) -> LeaseClock:
        clock = LeaseClock(heartbeat_interval=1.0, prune_after=5.0)
        clock.restart(100.0)
        return clock

    def test_leases_count_as_lost_a_margin_before_prune_after(self) -> None:
        clock = self.clock()
        assert clock.failed(103.9) == (pytest.approx(3.9), False)
        assert clock.link.is_set()
        assert clock.failed(104.0) == (pytest.approx(4.0), True)
        assert not clock.link.is_set()
        assert clock.failed(106.0) == (pytest.approx(6.0), False), "expired once, not again"

    def test_a_heartbeat_through_again_regains_them(self) -> None:
        clock = self.clock()
        clock.failed(104.5)
        assert clock.got_through(106.0, 106.5) == pytest.approx(6.5)
        assert clock.link.is_set()
        assert clock.got_through(107.0, 107.1) is None

    def test_a_heartbeat_is_cut_off_when_the_leases_run_out(self) -> None:
        clock = self.clock()
        assert clock.beat_timeout(101.0, 30.0) == pytest.approx(3.0)
        assert clock.beat_timeout(103.5, 30.0) == pytest.approx(1.0), "at least the margin"
        assert clock.beat_timeout(101.0, 2.0) == pytest.approx(2.0), "db_timeout bounds it"
        clock.failed(104.0)
        assert clock.beat_timeout(105.0, 30.0) == 30.0, "lost already: db_timeout alone"

    def test_recovery_waits_for_two_regular_heartbeats_in_a_row(self) -> None:
        clock = self.clock()
        clock.got_through(101.0, 101.1)
        assert not clock.may_recover
        clock.got_through(102.0, 104.5)  # slow: stuck behind something
        assert not clock.may_recover
        clock.got_through(105.0, 105.1)
        clock.got_through(106.0, 106.1)
        assert clock.may_recover
        clock.failed(107.5)
        assert not clock.may_recover


class TestSettleBuffer:
    async def test_outcomes_piled_up_behind_a_slow_write_go_in_writes_of_max_size(self) -> None:
        # A write that grew with the pile was quadratic in PostgreSQL (the attempt fence's
        # join): 9,000 outcomes in one settle took 9 s, and the pile grew meanwhile.
        from batchworks.outcome import Outcome, OutcomeKind

        sizes: list[int] = []

        async def write(worker: Any, outcomes: Any, deadline: float | None) -> list[int]:
            sizes.append(len(outcomes))
            return []

        settled: list[int] = []
        buffer = _settle.SettleBuffer(
            write,
            "token",  # type: ignore[arg-type]
            max_size=10,
            interval=60.0,
            on_settled=lambda outcomes, lost: settled.extend(o.job_id for o in outcomes),
        )
        for job_id in range(25):
            buffer.add(Outcome(job_id, OutcomeKind.SUCCEEDED))
        assert await buffer.flush()
        assert sizes == [10, 10, 5]
        assert settled == list(range(25)) and len(buffer) == 0
