"""The APP the CLI tests run: ``tests.postgres.cli_app:make_runner``."""

from __future__ import annotations

import asyncio
from typing import Any

from batchworks import Job, Runner, Terminal
from batchworks.backends.base import Backend


async def handle(job: Job) -> Any:
    if job.payload == "bad":
        raise Terminal("bad record")
    if isinstance(job.payload, dict) and "sleep" in job.payload:
        await asyncio.sleep(job.payload["sleep"])  # a job that takes this long
    if job.payload == "hang":
        await job.save_checkpoint({"step": 1})
        await asyncio.Event().wait()
    return job.payload


def make_runner(backend: Backend) -> Runner:
    return Runner(
        backend,
        {"q": handle},
        worker_name="cli-worker",
        heartbeat_interval=0.2,
        prune_after=2.0,
        shutdown_timeout=1.0,
        poll_interval=0.2,
    )


not_a_runner = 42
