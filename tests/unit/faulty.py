"""A fake backend for the Runner's fault tests, and an APP for the CLI built on it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from batchworks import Job, MemoryBackend, Runner
from batchworks.backends.base import ClaimedJob, Heartbeat, WorkerToken
from batchworks.outcome import Outcome


class FaultyBackend(MemoryBackend):
    """A MemoryBackend whose worker-side calls can hang (a black-holed network), be slow
    (a stalled database) or raise a programming error (a bug)."""

    def __init__(self) -> None:
        super().__init__()
        self.healed = asyncio.Event()
        self.healed.set()
        self.bug: dict[str, Exception] = {}
        self.slow: dict[str, float] = {}
        self.calls: list[str] = []

    def partition(self) -> None:
        self.healed.clear()

    def heal(self) -> None:
        self.healed.set()

    async def _enter(self, op: str) -> None:
        self.calls.append(op)
        if op in self.bug:
            raise self.bug[op]
        await self.healed.wait()
        delay = self.slow.pop(op, 0.0)
        if delay:
            self.calls[-1] = f"{op}:slow"
            await asyncio.sleep(delay)

    async def claim(
        self, worker: WorkerToken, queues: Sequence[str], limit: int, **kwargs: Any
    ) -> list[ClaimedJob]:
        await self._enter("claim")
        return await super().claim(worker, queues, limit, **kwargs)

    async def settle(self, worker: WorkerToken, outcomes: Sequence[Outcome]) -> list[int]:
        await self._enter("settle")
        return await super().settle(worker, outcomes)

    async def heartbeat(
        self, worker: WorkerToken, job_ids: Sequence[int], *, lease: float
    ) -> Heartbeat:
        await self._enter("heartbeat")
        return await super().heartbeat(worker, job_ids, lease=lease)

    async def recover(self, *, prune_after: float) -> int:
        await self._enter("recover")
        return await super().recover(prune_after=prune_after)

    async def unregister_worker(self, worker: WorkerToken) -> None:
        await self._enter("unregister")
        await super().unregister_worker(worker)


async def buggy_runner() -> Runner:
    """An APP for ``batchworks worker``: its backend's settle has a bug."""
    backend = FaultyBackend()
    backend.bug["settle"] = KeyError("kind")
    await backend.enqueue("q", None)
    return Runner(backend, {"q": _noop}, heartbeat_interval=0.05, prune_after=5.0)


async def _noop(job: Job) -> None:
    return None
