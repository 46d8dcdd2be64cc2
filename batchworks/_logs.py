"""The ``extra`` of every log record the runner side writes, built in one place.

A log pipeline filters on these keys (``action="lease_lost"``, ``job_id=42``), so they form
one vocabulary, the same in every module: a new key is added here, as a parameter, or not at
all. Keys left ``None`` are left out of the record.
"""

from __future__ import annotations

from collections.abc import Sequence


def log_extra(
    action: str,
    *,
    job_id: int | None = None,
    job_ids: Sequence[int] | None = None,
    count: int | None = None,
    worker: str | None = None,
    queue: str | None = None,
    attempt: int | None = None,
    call: str | None = None,
    signal: str | None = None,
) -> dict[str, object]:
    """``extra=`` for a log record.

    :param action: what happened, snake_case (``job_settled``, ``heartbeat_failed``).
    :param job_id: the one job it is about.
    :param job_ids: the jobs it is about, when several.
    :param count: how many of something (jobs, outcomes, calls) it is about.
    :param worker: the worker's name.
    :param queue: the queue of the job it is about.
    :param attempt: the job's attempt number (1 for the first run).
    :param call: the backend call it is about (``claim``, ``settle``, ``heartbeat``).
    :param signal: the signal's name (``SIGTERM``).
    """
    fields = {
        "job_id": job_id,
        "job_ids": None if job_ids is None else list(job_ids),
        "count": count,
        "worker": worker,
        "queue": queue,
        "attempt": attempt,
        "call": call,
        "signal": signal,
    }
    return {"action": action} | {key: value for key, value in fields.items() if value is not None}
