"""The APP the CLI tests run: ``tests.postgres.cli_app:make_runner``."""

from __future__ import annotations

import asyncio
from typing import Any

from batchworks import Job, PostgresBackend, RetryPolicy, Runner, Terminal
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


#: not the default policy's 5, so that a test can tell where `jobs list` took a maximum from
MAX_ATTEMPTS = 3


def make_runner(backend: Backend, *, shutdown_timeout: float = 1.0) -> Runner:
    return Runner(
        backend,
        {"q": handle},
        retry=RetryPolicy(max_attempts=MAX_ATTEMPTS),
        worker_name="cli-worker",
        heartbeat_interval=0.2,
        prune_after=2.0,
        shutdown_timeout=shutdown_timeout,
        poll_interval=0.2,
    )


def make_patient_runner(backend: Backend) -> Runner:
    """A runner whose running jobs get a minute to finish after a first stop signal."""
    return make_runner(backend, shutdown_timeout=60.0)


not_a_runner = 42


def two_arguments(backend: Backend, other: int) -> Runner:
    return make_runner(backend)


def own_backend_runner() -> Runner:
    """A factory that builds its own backend, from a DSN that is not one."""
    return make_runner(PostgresBackend("notadsn"))
