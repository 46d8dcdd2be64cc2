"""batchworks: an asyncio-native batch job processor with concurrency limits.

A :class:`Runner` claims batches of jobs from a backend, runs one handler call per job under
a concurrency limit with allSettled semantics, and settles every job on its own.
"""

from __future__ import annotations

from batchworks.backends.base import Backend, JobFilter, QueueState
from batchworks.backends.memory import MemoryBackend
from batchworks.backends.postgres import PostgresBackend
from batchworks.batch import Batch, BatchFailure, BatchRecord, BatchState, Callback
from batchworks.errors import (
    BackendError,
    BatchClosed,
    BatchNotFound,
    BatchworksError,
    ConfigurationError,
    HandlerSignal,
    JobNotFound,
    LeaseLost,
    LifecycleError,
    PayloadError,
    Retryable,
    RunnerFailed,
    SchemaNotMigrated,
    Snooze,
    Terminal,
    WorkerLost,
)
from batchworks.job import Job, JobRecord, JobState
from batchworks.report import RunReport
from batchworks.retry import RetryPolicy
from batchworks.runner import Handler, Runner
from batchworks.schedule import Schedule
from batchworks.why import WaitReason, why_waiting

__version__ = "0.1.0.dev0"

__all__ = [
    "Backend",
    "BackendError",
    "Batch",
    "BatchClosed",
    "BatchFailure",
    "BatchNotFound",
    "BatchRecord",
    "BatchState",
    "BatchworksError",
    "Callback",
    "ConfigurationError",
    "Handler",
    "HandlerSignal",
    "Job",
    "JobFilter",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "LeaseLost",
    "LifecycleError",
    "MemoryBackend",
    "PayloadError",
    "PostgresBackend",
    "QueueState",
    "RetryPolicy",
    "Retryable",
    "RunReport",
    "Runner",
    "RunnerFailed",
    "Schedule",
    "SchemaNotMigrated",
    "Snooze",
    "Terminal",
    "WaitReason",
    "WorkerLost",
    "why_waiting",
]
