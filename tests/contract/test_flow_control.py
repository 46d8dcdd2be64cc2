"""Contract tests of flow control (#14) on every backend: pause and resume, a queue's
``concurrency``, ``key_concurrency`` and ``rate`` held in the claim itself (a job over a limit
is skipped for the next eligible one, priority order kept), slots freed by settles and
recoveries, fair claiming across queues, a runner's per-queue caps, ``queues()``, and the
checks of every new argument."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from batchworks import ConfigurationError, Job, JobState, MemoryBackend, Runner
from batchworks.backends.base import Backend, ClaimedJob, QueueState, WorkerToken
from batchworks.outcome import Outcome, OutcomeKind
from tests.support.calls import LEASE, POLICY_MAX_ATTEMPTS, claim, succeeded


async def queue_state(backend: Backend, name: str) -> QueueState:
    [found] = [queue for queue in await backend.queues() if queue.name == name]
    return found


class TestPause:
    async def test_a_paused_queue_starts_nothing_and_takes_enqueues(self, backend: Backend) -> None:
        await backend.pause_queue("q")
        job = await backend.enqueue("q", 1)
        worker = await backend.register_worker("w", ["q"])

        assert await claim(backend, worker) == []
        assert await backend.next_due(["q"]) is None  # nothing is due in a paused queue
        record = await backend.get_job(job)
        assert record is not None and record.state is JobState.QUEUED

        await backend.resume_queue("q")
        assert [c.id for c in await claim(backend, worker)] == [job]

    async def test_running_jobs_of_a_paused_queue_still_settle(self, backend: Backend) -> None:
        job = await backend.enqueue("q", 1)
        worker = await backend.register_worker("w", ["q"])
        [claimed] = await claim(backend, worker)
        await backend.pause_queue("q")

        assert await backend.settle(worker, [succeeded(claimed.id)]) == []
        record = await backend.get_job(job)
        assert record is not None and record.state is JobState.SUCCEEDED

    async def test_pause_leaves_other_queues_claimable(self, backend: Backend) -> None:
        await backend.pause_queue("a")
        await backend.enqueue("a", 1)
        other = await backend.enqueue("b", 2)
        worker = await backend.register_worker("w", ["a", "b"])

        assert [c.id for c in await claim(backend, worker, queues=("a", "b"))] == [other]

    async def test_queues_reports_the_pause_and_what_it_holds_back(self, backend: Backend) -> None:
        await backend.enqueue_many("q", [1, 2, 3])
        await backend.pause_queue("q")

        state = await queue_state(backend, "q")
        assert state.paused and state.queued == 3 and state.due == 3
        assert state.held_back == {"paused": 3}


class TestConcurrency:
    async def test_the_claim_stops_at_the_limit_across_workers(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=3)
        await backend.enqueue_many("q", list(range(10)))
        one = await backend.register_worker("w1", ["q"])
        two = await backend.register_worker("w2", ["q"])

        first = await claim(backend, one, 2)
        second = await claim(backend, two, 10)
        assert (len(first), len(second)) == (2, 1)
        assert await claim(backend, one, 10) == []

        state = await queue_state(backend, "q")
        assert (state.running, state.concurrency) == (3, 3)
        assert state.held_back == {"concurrency": 7}

    async def test_a_settle_frees_its_slot_once(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=1)
        await backend.enqueue_many("q", [1, 2, 3])
        worker = await backend.register_worker("w", ["q"])
        [first] = await claim(backend, worker)

        await backend.settle(worker, [succeeded(first.id)])
        await backend.settle(worker, [succeeded(first.id)])  # fenced out: frees nothing more

        assert len(await claim(backend, worker)) == 1
        assert await claim(backend, worker) == []

    async def test_a_recovery_frees_the_slot_of_a_lost_worker(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=1)
        await backend.enqueue_many("q", [1, 2])
        dead = await backend.register_worker("dead", ["q"])
        [held] = await backend.claim(dead, ["q"], 1, lease=0.0, max_attempts=POLICY_MAX_ATTEMPTS)
        live = await backend.register_worker("live", ["q"])
        assert await claim(backend, live) == []

        await asyncio.sleep(0.01)  # the zero lease passes on the backend's clock
        assert await backend.recover(prune_after=60.0) == 1

        claimed = await claim(backend, live)
        assert len(claimed) == 1  # the slot freed once: the recovered job or the other, not both
        record = await backend.get_job(held.id)
        assert record is not None and record.errors[-1]["type"] == "WorkerLost"

    async def test_none_removes_a_limit(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=1)
        await backend.configure_queue("q")
        await backend.enqueue_many("q", [1, 2, 3])
        worker = await backend.register_worker("w", ["q"])

        assert len(await claim(backend, worker)) == 3
        state = await queue_state(backend, "q")
        assert state.concurrency is None and not state.controlled


class TestKeyConcurrency:
    async def test_a_job_over_its_key_limit_is_skipped_for_the_next(self, backend: Backend) -> None:
        await backend.configure_queue("q", key_concurrency=1)
        a1 = await backend.enqueue("q", "a1", priority=5, concurrency_key="a")
        a2 = await backend.enqueue("q", "a2", priority=4, concurrency_key="a")
        b1 = await backend.enqueue("q", "b1", priority=3, concurrency_key="b")
        free = await backend.enqueue("q", "free", priority=2)  # no key: no key limit
        worker = await backend.register_worker("w", ["q"])

        assert [c.id for c in await claim(backend, worker)] == [a1, b1, free]
        assert await claim(backend, worker) == []
        state = await queue_state(backend, "q")
        assert state.held_back == {"key_concurrency": 1}

        record = await backend.get_job(a2)
        assert record is not None and record.concurrency_key == "a"

    async def test_a_key_frees_when_its_job_ends(self, backend: Backend) -> None:
        await backend.configure_queue("q", key_concurrency=2)
        ids = await backend.enqueue_many("q", [1, 2, 3, 4], concurrency_keys=["k"] * 4)
        worker = await backend.register_worker("w", ["q"])

        first = await claim(backend, worker)
        assert [c.id for c in first] == ids[:2]
        await backend.settle(worker, [succeeded(first[0].id)])
        assert [c.id for c in await claim(backend, worker)] == [ids[2]]

    async def test_both_limits_hold_together(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=2, key_concurrency=1)
        await backend.enqueue_many("q", [1, 2, 3, 4], concurrency_keys=["a", "a", "b", "c"])
        worker = await backend.register_worker("w", ["q"])

        claimed = await claim(backend, worker)
        assert [c.payload for c in claimed] == [1, 3]


def ended(job: ClaimedJob, **change: Any) -> Outcome:
    """The outcome of ``job``'s attempt as a runner holds it before it is written, naming the
    claim it ends (or, by ``change``, another one)."""
    outcome = Outcome(job.id, OutcomeKind.SUCCEEDED, attempt=job.attempt, claimed_at=job.claimed_at)
    return dataclasses.replace(outcome, **change)


class TestHandover:
    """A claim takes over the slots of its own worker's ended attempts whose outcomes are not
    written yet (``claim(ended=...)``): the limit bounds the handlers that run at once."""

    async def test_ended_attempts_hand_their_slots_to_the_claim(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=2)
        await backend.enqueue_many("q", list(range(6)))
        worker = await backend.register_worker("w", ["q"])
        first = await claim(backend, worker)
        assert len(first) == 2
        assert await claim(backend, worker) == []  # at the limit, nothing ended

        second = await claim(backend, worker, ended=[ended(job) for job in first])
        assert [c.payload for c in second] == [2, 3]
        # Settled now: the slots were handed over once, and are not freed a second time.
        assert await backend.settle(worker, [ended(job) for job in first]) == []
        assert await claim(backend, worker, ended=[ended(job) for job in first]) == []
        state = await queue_state(backend, "q")
        assert state.running == 2

    async def test_only_the_slot_handed_over_frees(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=2)
        await backend.enqueue_many("q", list(range(6)))
        worker = await backend.register_worker("w", ["q"])
        one, _ = await claim(backend, worker)

        assert [c.payload for c in await claim(backend, worker, ended=[ended(one)])] == [2]
        assert await claim(backend, worker, ended=[ended(one)]) == []  # one slot, once

    async def test_another_workers_outcomes_or_claims_free_nothing(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=1)
        await backend.enqueue_many("q", list(range(3)))
        owner = await backend.register_worker("owner", ["q"])
        other = await backend.register_worker("other", ["q"])
        [held] = await claim(backend, owner)
        earlier = held.claimed_at - timedelta(seconds=1)

        assert await claim(backend, other, ended=[ended(held)]) == []  # not its job
        assert await claim(backend, owner, ended=[ended(held, claimed_at=earlier)]) == []
        assert await claim(backend, owner, ended=[ended(held, claimed_at=None)]) == []
        assert [c.payload for c in await claim(backend, owner, ended=[ended(held)])] == [1]

    async def test_a_recovered_attempt_frees_nothing_more(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=1)
        await backend.enqueue_many("q", [1, 2])
        dead = await backend.register_worker("dead", ["q"])
        [held] = await backend.claim(dead, ["q"], 1, lease=0.0, max_attempts=POLICY_MAX_ATTEMPTS)
        await asyncio.sleep(0.01)  # the zero lease passes on the backend's clock
        assert await backend.recover(prune_after=60.0) == 1
        live = await backend.register_worker("live", ["q"])
        [taken] = await claim(backend, live, 1)

        # The recovered attempt's outcome, late: it names a claim no job is running by now.
        assert await claim(backend, dead, ended=[ended(held)]) == []
        assert await claim(backend, live, ended=[ended(held)]) == []
        state = await queue_state(backend, "q")
        assert state.running == 1 and taken is not None

    async def test_a_key_slot_is_handed_over_within_its_key(self, backend: Backend) -> None:
        await backend.configure_queue("q", key_concurrency=1)
        ids = await backend.enqueue_many(
            "q", ["a1", "a2", "b1", "b2"], concurrency_keys=["a", "a", "b", "b"]
        )
        worker = await backend.register_worker("w", ["q"])
        a1, b1 = await claim(backend, worker)
        assert [a1.id, b1.id] == [ids[0], ids[2]]

        assert [c.id for c in await claim(backend, worker, ended=[ended(a1)])] == [ids[1]]
        assert await claim(backend, worker, ended=[ended(a1)]) == []  # b's slot is b1's

    async def test_a_claim_of_several_queues_hands_over_in_each(self, backend: Backend) -> None:
        for name in ("a", "b"):
            await backend.configure_queue(name, concurrency=1)
            await backend.enqueue_many(name, [f"{name}1", f"{name}2"])
        worker = await backend.register_worker("w", ["a", "b"])
        both = ("a", "b")
        first = await claim(backend, worker, queues=both)
        assert sorted(c.payload for c in first) == ["a1", "b1"]
        assert await claim(backend, worker, queues=both) == []

        second = await claim(backend, worker, queues=both, ended=[ended(c) for c in first])
        assert sorted(c.payload for c in second) == ["a2", "b2"]

    async def test_a_fleet_limit_with_handovers_bounds_the_handlers(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=3)
        await backend.enqueue_many("q", list(range(60)))
        running = most = 0

        async def handle(job: Job) -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.002)
            running -= 1

        runners = [
            Runner(backend, {"q": handle}, concurrency=3, batch_size=3, worker_name=f"w{i}")
            for i in range(2)
        ]
        reports = await asyncio.wait_for(
            asyncio.gather(*(r.run_until_empty() for r in runners)), timeout=60
        )
        assert sum(report.succeeded for report in reports) == 60
        assert most == 3, f"at most {most} handlers ran at once (limit 3)"


def record_claims(backend: Backend) -> list[tuple[list[int], int]]:
    """Replace ``backend.claim`` with one that records, for each call, the ids it was asked
    to hand over and how many jobs it returned."""
    calls: list[tuple[list[int], int]] = []
    original = backend.claim

    async def claim(
        worker: WorkerToken,
        queues: Sequence[str],
        limit: int,
        *,
        lease: float,
        max_attempts: int,
        caps: Mapping[str, int] | None = None,
        ended: Sequence[Outcome] = (),
    ) -> list[ClaimedJob]:
        jobs = await original(
            worker, queues, limit, lease=lease, max_attempts=max_attempts, caps=caps, ended=ended
        )
        calls.append(([o.job_id for o in ended], len(jobs)))
        return jobs

    backend.claim = claim  # type: ignore[method-assign]
    return calls


async def noop(job: Job) -> None:
    pass


class TestRunnerHandover:
    """What a Runner hands over, and when."""

    async def test_a_runner_at_its_limit_hands_its_slots_over(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=5)
        await backend.enqueue_many("q", list(range(100)))
        calls = record_claims(backend)
        report = await Runner(backend, {"q": noop}, concurrency=5, batch_size=5).run_until_empty()

        assert report.succeeded == 100
        assert calls[0][0] == [], "the first claim, not held back yet, handed something over"
        taken_over = [got for ids, got in calls if ids and got]
        assert taken_over, f"no claim took over a slot: {calls}"

    async def test_an_unlimited_backlog_hands_nothing_over(self, backend: Backend) -> None:
        await backend.enqueue_many("q", list(range(300)))
        calls = record_claims(backend)
        await Runner(backend, {"q": noop}, concurrency=10, batch_size=10).run_until_empty()

        first_short = next(i for i, (_, got) in enumerate(calls) if got < 10)
        assert first_short > 0
        assert all(ids == [] for ids, _ in calls[: first_short + 1]), calls

    async def test_a_handler_left_running_in_its_thread_keeps_its_slot(
        self, backend: Backend
    ) -> None:
        # A plain handler that its timeout abandons runs on in its thread: its outcome is
        # written, but its slot is not handed to the next claim while the thread runs.
        await backend.configure_queue("q", concurrency=1)
        stuck = await backend.enqueue("q", "stuck", timeout=0.05, max_attempts=1)
        await backend.enqueue_many("q", ["quick"] * 3)
        release = threading.Event()
        in_thread: list[bool] = []

        def handle(job: Job) -> None:
            if job.payload == "stuck":
                release.wait(30)
            in_thread.append(release.is_set())

        calls = record_claims(backend)
        runner = Runner(backend, {"q": handle}, concurrency=2, batch_size=2, sync_in_thread=True)
        try:
            report = await asyncio.wait_for(runner.run_until_empty(), timeout=60)
        finally:
            release.set()
        assert report.failed == 1 and report.succeeded == 3
        assert all(stuck not in ids for ids, _ in calls), calls

    async def test_a_backend_without_the_keyword_gets_no_handover(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=2)
        await backend.enqueue_many("q", list(range(20)))
        original = backend.claim
        seen: list[dict[str, Any]] = []

        async def claim(*args: Any, **kwargs: Any) -> list[ClaimedJob]:  # a generic wrapper
            seen.append(kwargs)
            return await original(*args, **kwargs)

        backend.claim = claim  # type: ignore[method-assign]
        report = await Runner(backend, {"q": noop}, concurrency=2, batch_size=2).run_until_empty()
        assert report.succeeded == 20
        assert seen and all("ended" not in kwargs for kwargs in seen)


class TestRate:
    async def test_no_more_than_n_starts_within_the_window(self, backend: Backend) -> None:
        await backend.configure_queue("q", rate=(3, 3600))
        await backend.enqueue_many("q", list(range(10)))
        worker = await backend.register_worker("w", ["q"])

        first = await claim(backend, worker, 2)
        await backend.settle(worker, [succeeded(job.id) for job in first])
        assert len(await claim(backend, worker, 10)) == 1  # settles free no start
        assert await claim(backend, worker, 10) == []
        state = await queue_state(backend, "q")
        assert state.recent_starts == 3 and state.held_back == {"rate": 7}

    async def test_the_window_slides(self, backend: Backend) -> None:
        window = 0.3
        await backend.configure_queue("q", rate=(2, window))
        await backend.enqueue_many("q", list(range(6)))
        worker = await backend.register_worker("w", ["q"])

        assert len(await claim(backend, worker)) == 2
        loop = asyncio.get_running_loop()
        began = loop.time()
        more: list[object] = []
        while not more:
            assert loop.time() - began < 10, "the rate window never let another job start"
            await asyncio.sleep(0.05)
            more = list(await claim(backend, worker))
        assert len(more) == 2


class TestFairness:
    async def test_a_quiet_queue_does_not_wait_behind_a_backlog(self, backend: Backend) -> None:
        await backend.enqueue_many("busy", list(range(50)))
        quiet = await backend.enqueue("quiet", "now")
        worker = await backend.register_worker("w", ["busy", "quiet"])

        claimed = await claim(backend, worker, 10, queues=("busy", "quiet"))
        assert quiet in [c.id for c in claimed]
        assert len(claimed) == 10

    async def test_priority_still_comes_first(self, backend: Backend) -> None:
        urgent = await backend.enqueue_many("busy", [1, 2, 3], priority=9)
        await backend.enqueue("quiet", "later")
        worker = await backend.register_worker("w", ["busy", "quiet"])

        claimed = await claim(backend, worker, 3, queues=("busy", "quiet"))
        assert [c.id for c in claimed] == urgent

    async def test_caps_bound_the_jobs_of_a_queue(self, backend: Backend) -> None:
        await backend.enqueue_many("a", list(range(5)))
        await backend.enqueue_many("b", list(range(5)))
        worker = await backend.register_worker("w", ["a", "b"])

        claimed = await backend.claim(
            worker, ["a", "b"], 10, lease=LEASE, max_attempts=POLICY_MAX_ATTEMPTS, caps={"a": 2}
        )
        assert sorted(c.queue for c in claimed) == ["a"] * 2 + ["b"] * 5


class TestChecks:
    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"concurrency": 0}, "concurrency must be an int >= 1"),
            ({"key_concurrency": "1"}, "key_concurrency must be an int >= 1"),
            ({"rate": 100}, "rate must be a tuple (n, seconds)"),
            ({"rate": (0, 60)}, "rate's n must be an int from 1"),
            ({"rate": (10, 0)}, "rate's seconds must be > 0"),
        ],
    )
    async def test_bad_limits_are_refused(
        self, backend: Backend, options: dict[str, object], message: str
    ) -> None:
        with pytest.raises(
            ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")
        ):
            await backend.configure_queue("q", **options)  # type: ignore[arg-type]

    async def test_bad_keys_are_refused(self, backend: Backend) -> None:
        with pytest.raises(ConfigurationError, match="concurrency_key must be a non-empty str"):
            await backend.enqueue("q", 1, concurrency_key="")
        with pytest.raises(ConfigurationError, match="concurrency_keys must be a sequence"):
            await backend.enqueue_many("q", [1, 2], concurrency_keys=["a"])
        with pytest.raises(ConfigurationError, match="queue name"):
            await backend.pause_queue("no spaces")


class TestRunner:
    def test_queue_concurrency_is_checked(self) -> None:
        async def handler(job: object) -> None: ...

        backend = MemoryBackend()
        with pytest.raises(ConfigurationError, match="does not serve"):
            Runner(backend, {"a": handler}, queue_concurrency={"b": 1})
        with pytest.raises(ConfigurationError, match="above the runner's concurrency"):
            Runner(backend, {"a": handler}, concurrency=2, queue_concurrency={"a": 3})

    async def test_queue_concurrency_caps_a_queue_in_one_runner(self, backend: Backend) -> None:
        running = {"a": 0, "b": 0}
        most = {"a": 0, "b": 0}

        async def handler(job: object) -> None:
            queue = job.queue  # type: ignore[attr-defined]
            running[queue] += 1
            most[queue] = max(most[queue], running[queue])
            await asyncio.sleep(0.005)
            running[queue] -= 1

        await backend.enqueue_many("a", list(range(40)))
        await backend.enqueue_many("b", list(range(40)))
        runner = Runner(
            backend,
            {"a": handler, "b": handler},
            concurrency=8,
            batch_size=8,
            queue_concurrency={"a": 2},
            poll_interval=0.05,
        )
        report = await runner.run_until_empty()

        assert report.succeeded == 80
        assert most["a"] <= 2 and most["b"] > 2

    async def test_a_fleet_limit_holds_in_a_runner_and_drains(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=2, key_concurrency=1)
        await backend.enqueue_many("q", list(range(30)), concurrency_keys=["x", "y", "z"] * 10)
        running: list[str] = []
        most = 0

        async def handler(job: object) -> None:
            nonlocal most
            running.append("j")
            most = max(most, len(running))
            await asyncio.sleep(0.002)
            running.pop()

        runner = Runner(backend, {"q": handler}, concurrency=10, poll_interval=0.05)
        report = await runner.run_until_empty()
        assert report.succeeded == 30 and most <= 2

    async def test_run_until_empty_leaves_a_paused_queue(self, backend: Backend) -> None:
        await backend.pause_queue("p")
        held = await backend.enqueue("p", 1)
        await backend.enqueue("q", 2)

        async def handler(job: object) -> None: ...

        runner = Runner(backend, {"p": handler, "q": handler}, poll_interval=0.05)
        report = await runner.run_until_empty()
        assert report.succeeded == 1
        record = await backend.get_job(held)
        assert record is not None and record.state is JobState.QUEUED
