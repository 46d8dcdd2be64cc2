"""Backend calls driven directly, the way a Runner drives them, for the contract tests
(``tests/contract``) and the memory backend's own tests (``tests/unit/test_memory_only.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from batchworks import JobState
from batchworks.backends.base import Backend, ClaimedJob, WorkerToken
from batchworks.outcome import Outcome, OutcomeKind

LEASE = 30.0  # seconds
POLICY_MAX_ATTEMPTS = 5
ALL_STATES = {state.value for state in JobState}


class FakeClock:
    """Seconds since the epoch that move only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def claim(
    backend: Backend,
    worker: WorkerToken,
    limit: int = 10,
    *,
    queues: tuple[str, ...] = ("q",),
    lease: float = LEASE,
    ended: Sequence[Outcome] = (),
) -> list[ClaimedJob]:
    return await backend.claim(
        worker, queues, limit, lease=lease, max_attempts=POLICY_MAX_ATTEMPTS, ended=ended
    )


async def claim_one(backend: Backend, worker: WorkerToken, *, lease: float = LEASE) -> ClaimedJob:
    [job] = await claim(backend, worker, 1, lease=lease)
    return job


async def state(backend: Backend, job_id: int) -> JobState:
    record = await backend.get_job(job_id)
    assert record is not None
    return record.state


def succeeded(job_id: int, result: str | None = '"ok"') -> Outcome:
    return Outcome(job_id, OutcomeKind.SUCCEEDED, result_json=result)
