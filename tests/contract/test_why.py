"""Why a job is waiting (``batchworks.why``, behind the dashboard's job page and ``batchworks
jobs why``), on every backend: each reason shows when its facts hold, and only then."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from batchworks.backends.base import Backend
from batchworks.why import WaitReason, why_waiting
from tests.support.calls import LEASE


async def codes(backend: Backend, job_id: int) -> list[str]:
    found = await why_waiting(backend, job_id)
    assert found is not None
    return [reason.code for reason in found]


async def reason(backend: Backend, job_id: int, code: str) -> WaitReason:
    found = await why_waiting(backend, job_id)
    assert found is not None
    [match] = [r for r in found if r.code == code]
    return match


class TestWhy:
    async def test_a_job_due_later_in_a_queue_no_worker_serves(self, backend: Backend) -> None:
        job_id = await backend.enqueue("emails", "later", delay=600)
        assert await codes(backend, job_id) == ["due_later", "no_live_worker"]
        due = await reason(backend, job_id, "due_later")
        assert 500 < due.details["due_in"] <= 600
        assert re.match(r"due later: in (9\.\d|10\.0)m, at ", due.text), due.text

    async def test_a_due_job_behind_others_and_the_first_one_ready(self, backend: Backend) -> None:
        first, _, last = await backend.enqueue_many("q", ["a", "b", "c"])
        await backend.enqueue("q", "urgent", priority=1)
        await backend.register_worker("w", ["q"])
        assert await codes(backend, last) == ["behind"]
        behind = await reason(backend, last, "behind")
        assert behind.details == {"ahead": 3, "capped": False}
        assert "behind 3 due jobs" in behind.text
        assert await codes(backend, first) == ["behind"]  # the urgent one goes first
        urgent = (await backend.list_jobs(queue="q", limit=1))[0].id
        assert await codes(backend, urgent) == ["ready"]

    async def test_a_job_that_lost_its_worker_twice_is_isolated_as_a_suspect(
        self, backend: Backend
    ) -> None:
        job_id = await backend.enqueue("q", "crashes its worker")
        for _ in range(2):
            worker = await backend.register_worker("w", ["q"])  # recovers the earlier one's job
            [job] = await backend.claim(worker, ["q"], 1, lease=LEASE, max_attempts=5)
            assert job.id == job_id
        await backend.register_worker("w", ["q"])  # a restart: the job is lost a second time
        assert await codes(backend, job_id) == ["suspect"]  # not "ready": it waits to run alone
        suspect = await reason(backend, job_id, "suspect")
        assert suspect.details == {"lost_workers": 2}

    async def test_a_running_job_is_not_waiting(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", "runs")
        worker = await backend.register_worker("w", ["q"])
        await backend.claim(worker, ["q"], 1, lease=LEASE, max_attempts=5)
        not_waiting = await reason(backend, job_id, "not_waiting")
        assert not_waiting.text == "not waiting: running on worker w (attempt 1)"
        await backend.cancel(job_id)
        assert (await reason(backend, job_id, "not_waiting")).text.endswith("next heartbeat")

    async def test_a_schedules_job_tells_its_schedule(self, backend: Backend) -> None:
        definition = (
            '{"queue": "q", "payload": null, "priority": 0, "max_attempts": null, '
            '"cron": "*/5 * * * *"}'
        )
        await backend.put_schedule("sweep", definition, next_tick=datetime.now(UTC))
        job_id = await backend.run_schedule("sweep")
        assert job_id is not None
        tick = await reason(backend, job_id, "schedule")
        assert tick.text == "a manual run of schedule 'sweep'"
        assert tick.details["cron"] == "*/5 * * * *" and tick.details["paused"] is False
        await backend.remove_schedule("sweep")
        assert (await reason(backend, job_id, "schedule")).text.endswith("no longer stored)")

    async def test_a_batch_member_tells_its_batch_and_how_far_it_is(self, backend: Backend) -> None:
        batch = await backend.enqueue_batch("q", ["a", "b"], name="import")
        member = batch.job_ids[0]
        assert await codes(backend, member) == ["no_live_worker", "batch"]
        first = await reason(backend, member, "batch")
        assert (
            first.text == f"a member of batch {batch.id} ('import'), closed: 0 of 2 members ended"
        )
        assert first.details == {"batch_id": batch.id, "state": "closed", "ended": 0, "total": 2}
        await backend.cancel(batch.job_ids[1])
        ended = await reason(backend, member, "batch")
        assert ended.details["ended"] == 1
        alone = await backend.enqueue("q", "no batch")
        assert "batch" not in await codes(backend, alone)

    async def test_no_such_job_is_none(self, backend: Backend) -> None:
        assert await why_waiting(backend, 10**9) is None


class TestWhyFlowControl:
    """A due job held back by its queue's flow control (#14) says by what, and is not ready."""

    async def test_a_paused_queue(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", 1)
        await backend.register_worker("w", ["q"])
        await backend.pause_queue("q")
        assert await codes(backend, job_id) == ["paused"]
        await backend.resume_queue("q")
        assert await codes(backend, job_id) == ["ready"]

    async def test_a_full_concurrency_limit_and_a_full_key(self, backend: Backend) -> None:
        await backend.configure_queue("q", concurrency=2, key_concurrency=1)
        await backend.enqueue_many("q", [1, 2, 3, 4], concurrency_keys=["a", "a", "b", "c"])
        worker = await backend.register_worker("w", ["q"])
        first = await backend.claim(worker, ["q"], 1, lease=LEASE, max_attempts=5)
        [waiting_a] = [
            j.id
            for j in await backend.list_jobs(queue="q", state="queued")
            if j.concurrency_key == "a"
        ]
        key = await reason(backend, waiting_a, "key_concurrency")
        assert key.details == {"queue": "q", "key": "a", "running": 1}
        assert "ready" not in await codes(backend, waiting_a)
        await backend.claim(worker, ["q"], 5, lease=LEASE, max_attempts=5)
        [left] = [
            j.id
            for j in await backend.list_jobs(queue="q", state="queued")
            if j.concurrency_key == "c"
        ]
        full = await reason(backend, left, "concurrency")
        assert full.details == {"queue": "q", "running": 2, "concurrency": 2}
        assert len(first) == 1

    async def test_a_full_rate_window(self, backend: Backend) -> None:
        await backend.configure_queue("q", rate=(1, 3600))
        _, second = await backend.enqueue_many("q", [1, 2])
        worker = await backend.register_worker("w", ["q"])
        await backend.claim(worker, ["q"], 5, lease=LEASE, max_attempts=5)
        held = await reason(backend, second, "rate")
        assert held.details == {"queue": "q", "rate_n": 1, "rate_seconds": 3600.0}
