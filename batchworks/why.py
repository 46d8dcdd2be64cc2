"""Why a job is waiting: the reasons as data, for the dashboard's job page and ``batchworks
jobs why ID``.

:func:`gather` reads what the backend knows about a job once (:class:`WaitFacts`); each reason
is one small function of those facts that returns a :class:`WaitReason` or None, and
:data:`REASONS` lists them in the order they are shown. A new reason (a batch's progress) is a
fact more in :class:`WaitFacts`, read in :func:`gather`, and one function more in
:data:`REASONS`; flow control (#14: a paused queue, a full limit, a rate window) is one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchworks._text import age as _age
from batchworks.backends.base import (
    AHEAD_CAP,
    Backend,
    QueuePosition,
    QueueState,
    ScheduleState,
    WorkerRecord,
)
from batchworks.batch import BatchRecord
from batchworks.job import JobRecord, JobState
from batchworks.runner import SUSPECT_AFTER

__all__ = ["LIVE_SILENCE", "REASONS", "SUSPECT_AFTER", "WaitFacts", "WaitReason", "why_waiting"]

#: seconds of heartbeat silence after which a registered worker no longer counts as serving
#: its queues (the default ``prune_after``: other runners presume it dead from then on)
LIVE_SILENCE = 30.0
#: running jobs of a queue read to count those of a job's concurrency key
KEY_SCAN = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitReason:
    """One reason a job is (or is not) waiting, for people and for programs."""

    #: a stable name: ``due_later``, ``no_live_worker``, ``suspect``, ``paused``,
    #: ``concurrency``, ``rate``, ``key_concurrency``, ``behind``, ``schedule``, ``batch``,
    #: ``ready``, ``not_waiting``
    code: str
    #: one sentence saying it
    text: str
    #: the figures behind it (JSON-able)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "text": self.text, "details": self.details}


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitFacts:
    """What the backend knows about a job and its queue, read once by :func:`gather`."""

    job: JobRecord
    position: QueuePosition
    #: the live worker incarnations whose queues include the job's (any heartbeat age)
    workers: tuple[WorkerRecord, ...]
    #: the schedule that enqueued it, if it is still stored
    schedule: ScheduleState | None = None
    #: its queue's flow control and use (#14), if it has settings or live jobs
    flow: QueueState | None = None
    #: running jobs of its queue with its ``concurrency_key`` (0 without a key)
    key_running: int = 0
    #: the batch it is a member of (#16), if it is still stored
    batch: BatchRecord | None = None

    @property
    def lost_workers(self) -> int:
        """How many of its attempts ended with their worker lost."""
        return sum(1 for entry in self.job.errors if entry.get("type") == "WorkerLost")

    @property
    def waiting(self) -> bool:
        return self.job.state is JobState.QUEUED


async def gather(backend: Backend, job_id: int) -> WaitFacts | None:
    """Read the facts about job ``job_id``; None when no job has that id."""
    job = await backend.get_job(job_id)
    position = await backend.queue_position(job_id)
    if job is None or position is None:
        return None
    workers = tuple(w for w in await backend.workers() if job.queue in w.queues)
    schedule = None
    if job.schedule is not None:
        listing = await backend.schedules()
        schedule = next((s for s in listing.schedules if s.name == job.schedule), None)
    flow = next((q for q in await backend.queues() if q.name == job.queue), None)
    key_running = 0
    if flow is not None and flow.key_concurrency is not None and job.concurrency_key:
        running = await backend.list_jobs(queue=job.queue, state="running", limit=KEY_SCAN)
        key_running = sum(1 for r in running if r.concurrency_key == job.concurrency_key)
    batch = None if job.batch_id is None else await backend.get_batch(job.batch_id)
    return WaitFacts(
        job=job,
        position=position,
        workers=workers,
        schedule=schedule,
        flow=flow,
        key_running=key_running,
        batch=batch,
    )


def not_waiting(facts: WaitFacts) -> WaitReason | None:
    job = facts.job
    if facts.waiting:
        return None
    if job.state is JobState.RUNNING:
        text = f"not waiting: running on worker {job.worker or '?'} (attempt {job.attempts})"
        if job.cancel_requested:
            text += ", to be cancelled at its worker's next heartbeat"
    else:
        text = f"not waiting: it is {job.state.value}"
    return WaitReason(code="not_waiting", text=text, details={"state": job.state.value})


def due_later(facts: WaitFacts) -> WaitReason | None:
    due_in = facts.position.due_in
    if not facts.waiting or due_in <= 0:
        return None
    last = facts.job.errors[-1] if facts.job.errors else None
    why = f" (after attempt {last.get('attempt')}: {last.get('type')})" if last else ""
    return WaitReason(
        code="due_later",
        text=f"due later: in {_age(due_in)}, at {facts.job.run_at.isoformat(timespec='seconds')}"
        + why,
        details={"due_in": due_in, "run_at": facts.job.run_at.isoformat()},
    )


def no_live_worker(facts: WaitFacts) -> WaitReason | None:
    if not facts.waiting:
        return None
    live = [w for w in facts.workers if w.silent_for <= LIVE_SILENCE]
    if live:
        return None
    silent = [w.name for w in facts.workers]
    text = f"no live worker serves queue {facts.job.queue!r}"
    if silent:
        text += (
            f": {len(silent)} registered but silent for over {LIVE_SILENCE:g}s "
            f"({', '.join(silent)}), presumed dead"
        )
    return WaitReason(code="no_live_worker", text=text, details={"silent_workers": silent})


def suspect(facts: WaitFacts) -> WaitReason | None:
    lost = facts.lost_workers
    if not facts.waiting or lost < SUSPECT_AFTER:
        return None
    return WaitReason(
        code="suspect",
        text=f"isolated as a suspect: it lost its worker {lost} times, so a runner runs it "
        "alone, once its other jobs have finished",
        details={"lost_workers": lost},
    )


def behind(facts: WaitFacts) -> WaitReason | None:
    ahead = facts.position.ahead
    if not facts.waiting or facts.position.due_in > 0 or ahead == 0:
        return None
    count = f"at least {ahead:,}" if ahead >= AHEAD_CAP else f"{ahead:,}"
    return WaitReason(
        code="behind",
        text=f"behind {count} due jobs of queue {facts.job.queue!r} that a claim takes first "
        f"(higher priority than {facts.job.priority}, or the same and due earlier)",
        details={"ahead": ahead, "capped": ahead >= AHEAD_CAP},
    )


def from_schedule(facts: WaitFacts) -> WaitReason | None:
    job = facts.job
    if job.schedule is None:
        return None
    if job.scheduled_for is None:
        text = f"a manual run of schedule {job.schedule!r}"
    else:
        text = (
            f"the tick {job.scheduled_for.isoformat(timespec='seconds')} of schedule "
            f"{job.schedule!r}, enqueued {_age(job.late_by or 0.0)} after it"
        )
    details: dict[str, Any] = {"schedule": job.schedule, "late_by": job.late_by}
    if facts.schedule is None:
        text += " (the schedule is no longer stored)"
    else:
        details["cron"] = json.loads(facts.schedule.definition).get("cron")
        details["paused"] = facts.schedule.paused
        if facts.schedule.paused:
            text += "; the schedule is paused (its next ticks are skipped)"
    return WaitReason(code="schedule", text=text, details=details)


def in_batch(facts: WaitFacts) -> WaitReason | None:
    """The batch it belongs to (#16). A batch holds no member back (its members run as any
    job of their queue); this says where the batch stands, and what its cancel did."""
    job, batch = facts.job, facts.batch
    if job.batch_id is None:
        return None
    if batch is None:
        text = f"a member of batch {job.batch_id} (the batch is no longer stored)"
        return WaitReason(code="batch", text=text, details={"batch_id": job.batch_id})
    ended = batch.total - batch.pending
    name = f" ({batch.name!r})" if batch.name else ""
    text = (
        f"a member of batch {batch.id}{name}, {batch.state.value}: {ended:,} of "
        f"{batch.total:,} members ended"
    )
    if batch.state.value == "cancelled" and facts.waiting:
        text += "; the batch was cancelled after this job was queued"
    details = {"batch_id": batch.id, "state": batch.state.value, "ended": ended}
    return WaitReason(code="batch", text=text, details={**details, "total": batch.total})


def held_back(facts: WaitFacts) -> WaitReason | None:
    """Due, but its queue is paused, or a limit of the queue (or of its key) is full (#14)."""
    flow = facts.flow
    if not facts.waiting or facts.position.due_in > 0 or flow is None:
        return None
    queue = facts.job.queue
    details: dict[str, Any] = {"queue": queue}
    if flow.paused:
        code, text = "paused", f"queue {queue!r} is paused: it starts no job until resumed"
    elif flow.concurrency is not None and flow.running >= flow.concurrency:
        code = "concurrency"
        text = (
            f"queue {queue!r} runs {flow.running} jobs, its limit (concurrency {flow.concurrency})"
        )
        details.update(running=flow.running, concurrency=flow.concurrency)
    elif flow.rate is not None and flow.recent_starts >= flow.rate[0]:
        n, window = flow.rate
        code = "rate"
        text = f"queue {queue!r} started {n} jobs within the last {window:g}s, its rate limit"
        details.update(rate_n=n, rate_seconds=window)
    elif flow.key_concurrency is not None and facts.key_running >= flow.key_concurrency:
        code = "key_concurrency"
        text = (
            f"{facts.key_running} jobs of its concurrency key {facts.job.concurrency_key!r} run, "
            f"the limit of queue {queue!r} (key_concurrency {flow.key_concurrency})"
        )
        details.update(key=facts.job.concurrency_key, running=facts.key_running)
    else:
        return None
    return WaitReason(code=code, text=text, details=details)


def ready(facts: WaitFacts) -> WaitReason | None:
    """Due, nothing ahead, a live worker: nothing holds it back but the next claim."""
    if not facts.waiting or facts.position.due_in > 0 or facts.position.ahead:
        return None
    if any(check(facts) is not None for check in (no_live_worker, suspect, held_back)):
        return None
    return WaitReason(
        code="ready",
        text="due now with nothing ahead of it: a live worker of its queue takes it at its "
        "next claim",
        details={"waited": -facts.position.due_in},
    )


#: Every reason, in the order they are shown.
REASONS: tuple[Callable[[WaitFacts], WaitReason | None], ...] = (
    not_waiting,
    due_later,
    no_live_worker,
    suspect,
    held_back,
    behind,
    ready,
    from_schedule,
    in_batch,
)


def reasons(facts: WaitFacts) -> list[WaitReason]:
    """The reasons that hold for ``facts``, in :data:`REASONS`' order."""
    return [reason for check in REASONS if (reason := check(facts)) is not None]


async def why_waiting(backend: Backend, job_id: int) -> list[WaitReason] | None:
    """Why job ``job_id`` is waiting (or that it is not); None when no job has that id."""
    facts = await gather(backend, job_id)
    return None if facts is None else reasons(facts)
