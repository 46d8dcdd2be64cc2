"""The job commands of ``batchworks``: ``jobs list``, ``jobs show``, ``retry``, ``cancel`` and
``purge``. ``jobs why`` is :mod:`batchworks._cli_web`'s."""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchworks._cli_common import (
    EXIT_FAILED_JOBS,
    EXIT_OK,
    MAX_LIMIT,
    Command,
    UsageError,
    open_backend,
    parse_duration,
    parse_job_id,
    parse_number,
    plural,
    table,
    when,
)
from batchworks._text import age
from batchworks.backends.base import Backend
from batchworks.job import JobRecord, JobState
from batchworks.retry import RetryPolicy

__all__ = ["add", "record_dict", "schedule_of"]


def add(command: Command) -> Any:
    """Add the job commands; returns the ``jobs`` subparsers, for ``jobs why``."""
    jobs = command("jobs", _no_subcommand, "list and show jobs, and say why one waits")
    job_commands = jobs.add_subparsers(title="jobs commands", required=True, metavar="COMMAND")
    listing = command("list", _jobs_list, "the newest jobs, filtered", job_commands)
    listing.add_argument("--queue")
    listing.add_argument("--state", choices=[state.value for state in JobState])
    listing.add_argument(
        "--limit", type=parse_number("--limit", 1, MAX_LIMIT), default=20, help="default: 20"
    )
    listing.add_argument("--json", action="store_true")
    show = command(
        "show", _jobs_show, "one job: payload, attempts, errors, checkpoint", job_commands
    )
    show.add_argument("id", type=parse_job_id)
    show.add_argument("--json", action="store_true")

    retry = command("retry", _retry, "queue failed jobs again (by id, by queue, batch, or all)")
    retry.add_argument("ids", type=parse_job_id, nargs="*")
    retry.add_argument("--queue")
    retry.add_argument("--batch", type=parse_job_id, help="only the failed members of this batch")
    cancel = command("cancel", _cancel, "cancel a queued job, or a running one at its heartbeat")
    cancel.add_argument("id", type=parse_job_id)
    purge = command("purge", _purge, "delete finished jobs older than a duration")
    purge.add_argument(
        "--older-than", required=True, type=parse_duration, help="e.g. 7d, 12h, 1h30m, 1w"
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted, delete nothing"
    )
    return job_commands


async def _no_subcommand(args: argparse.Namespace) -> int:  # pragma: no cover - argparse
    raise UsageError("name a jobs command: list, show or why")


async def _jobs_list(args: argparse.Namespace) -> int:
    async with open_backend(args) as backend:
        records = await backend.list_jobs(queue=args.queue, state=args.state, limit=args.limit)
        if not records and args.queue is not None:
            await _check_known_queue(backend, args.queue)
        maxima = await _maxima(backend, records)
    if args.json:
        print(
            json.dumps(
                [record_dict(record) | maxima[record.id].as_dict() for record in records],
                default=str,
            )
        )
        return EXIT_OK
    rows = [["id", "queue", "state", "attempts", "run at", "last error"]]
    for record in records:
        last = record.errors[-1] if record.errors else None
        error = f"{last['type']}: {last['message']}"[:60] if last else ""
        rows.append(
            [
                str(record.id),
                record.queue,
                record.state.value,
                f"{record.attempts}/{maxima[record.id].short()}",
                when(record.run_at),
                error,
            ]
        )
    print(table(rows) if records else "no jobs")
    for note in sorted({maxima[record.id].note() for record in records} - {""}):
        print(note)
    return EXIT_OK


@dataclass(frozen=True, slots=True)
class _Maximum:
    """A job's maximum of attempts, and where it comes from.

    A job enqueued with ``max_attempts`` has its own, and so has any job once claimed (the
    claim stores the claiming worker's policy's figure on the job). Before its first claim, a
    job without its own gets the figure of the retry policy of the worker that claims it:
    shown as the figure recorded by the last worker registered for its queue, marked ``*``,
    or ``?`` when no worker ever registered for it.
    """

    value: int | None
    source: str  # "job", "worker policy" or "unknown"

    def short(self) -> str:
        if self.source == "job":
            return str(self.value)
        return f"{self.value}*" if self.value is not None else "?"

    def note(self) -> str:
        if self.source == "worker policy":
            return (
                "* no max_attempts of its own: the retry policy of the last worker registered "
                "for its queue gives this many (its first claim fixes it)"
            )
        if self.source == "unknown":
            return (
                "? no max_attempts of its own and no worker registered for its queue yet: the "
                "retry policy of the worker that claims it first decides (default policy: "
                f"{RetryPolicy().max_attempts})"
            )
        return ""

    def long(self) -> str:
        if self.source == "job":
            return str(self.value)
        if self.value is not None:
            return f"{self.value} (the retry policy of the last worker of its queue)"
        return "? (no worker registered for its queue yet: its retry policy will decide)"

    def as_dict(self) -> dict[str, Any]:
        return {"effective_max_attempts": self.value, "max_attempts_from": self.source}


async def _maxima(backend: Backend, records: Sequence[JobRecord]) -> dict[int, _Maximum]:
    without = sorted({record.queue for record in records if not record.max_attempts})
    policies = await backend.policy_max_attempts(without) if without else {}
    maxima = {}
    for record in records:
        if record.max_attempts:
            maxima[record.id] = _Maximum(record.max_attempts, "job")
        elif record.queue in policies:
            maxima[record.id] = _Maximum(policies[record.queue], "worker policy")
        else:
            maxima[record.id] = _Maximum(None, "unknown")
    return maxima


async def _check_known_queue(backend: Backend, queue: str) -> None:
    """Raise a :class:`UsageError` naming the known queues when ``queue`` holds no job and no
    live worker serves it: most likely a typo."""
    stored = await backend.stats()
    served = {name for worker in await backend.workers() for name in worker.queues}
    if queue in stored or queue in served:
        return
    known = sorted(set(stored) | served)
    close = difflib.get_close_matches(queue, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(
        f"no job is stored in queue {queue!r} and no live worker serves it{hint}; known "
        f"queues: {', '.join(known) if known else 'none'}"
    )


async def _jobs_show(args: argparse.Namespace) -> int:
    async with open_backend(args) as backend:
        record = await backend.get_job(args.id)
        if record is None:
            raise UsageError(f"no job {args.id} in schema {args.schema!r}")
        maximum = (await _maxima(backend, [record]))[record.id]
    if args.json:
        print(json.dumps(record_dict(record) | maximum.as_dict(), default=str))
        return EXIT_OK
    fields = [
        ("id", str(record.id)),
        ("queue", record.queue),
        ("state", record.state.value),
        ("attempts", f"{record.attempts} of {maximum.long()}"),
        ("priority", str(record.priority)),
        ("run at", when(record.run_at)),
        ("created", when(record.created_at)),
        ("started", when(record.started_at)),
        ("finished", when(record.finished_at)),
        ("worker", record.worker or "-"),
        ("timeout", "-" if record.timeout is None else f"{record.timeout:g}s"),
        ("dedupe key", record.dedupe_key or "-"),
        ("schedule", schedule_of(record)),
        ("payload", json.dumps(record.payload)),
        ("checkpoint", "-" if record.checkpoint is None else json.dumps(record.checkpoint)),
        ("result", "-" if record.result is None else json.dumps(record.result)),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name:<{width}}  {value}")
    print(f"errors ({len(record.errors)})")
    for entry in record.errors:
        print(f"  attempt {entry['attempt']} at {entry.get('at', '?')}: "
              f"{entry['type']}: {entry['message']}")  # fmt: skip
    return EXIT_OK


async def _retry(args: argparse.Namespace) -> int:
    async with open_backend(args) as backend:
        skipped = []  # named jobs that are not failed: why each stays as it is
        for job_id in sorted(set(args.ids)):
            record = await backend.get_job(job_id)
            if record is None:
                skipped.append(f"no job {job_id}")
            elif record.state is not JobState.FAILED:
                skipped.append(f"job {job_id} is {record.state.value}")
            elif args.queue is not None and record.queue != args.queue:
                skipped.append(f"job {job_id} is in queue {record.queue!r}")
        if args.batch is not None and await backend.get_batch(args.batch) is None:
            raise UsageError(f"no batch {args.batch} in schema {args.schema!r}")
        count = await backend.retry_failed(
            queue=args.queue, ids=args.ids or None, batch_id=args.batch
        )
        if not count and args.queue is not None:
            await _check_known_queue(backend, args.queue)
    where = "" if args.queue is None else f" in queue {args.queue!r}"
    where += "" if args.batch is None else f" of batch {args.batch}"
    print(f"queued {count} failed {plural(count, 'job')}{where} again")
    if skipped:
        print(f"not queued again: {', '.join(skipped)}")
        return EXIT_FAILED_JOBS
    return EXIT_OK


async def _cancel(args: argparse.Namespace) -> int:
    async with open_backend(args) as backend:
        done = await backend.cancel(args.id)
        record = await backend.get_job(args.id)
    if record is None:
        raise UsageError(f"no job {args.id} in schema {args.schema!r}")
    if not done:
        print(f"job {args.id} is {record.state.value}: nothing to cancel")
        return EXIT_FAILED_JOBS
    if record.state is JobState.CANCELLED:
        print(f"job {args.id} cancelled")
    else:
        print(f"job {args.id} is running: its worker cancels it at its next heartbeat")
    return EXIT_OK


async def _purge(args: argparse.Namespace) -> int:
    async with open_backend(args) as backend:
        if args.dry_run:
            counts = await backend.purgeable(args.older_than)
        else:
            count = await backend.purge(args.older_than)
    if not args.dry_run:
        print(f"purged {count} finished {plural(count, 'job')}")
        return EXIT_OK
    rows = [["queue", "state", "jobs"]]
    for queue, per_state in sorted(counts.items()):
        rows += [[queue, state, str(n)] for state, n in sorted(per_state.items()) if n]
    total = sum(n for per_state in counts.values() for n in per_state.values())
    if total:
        print(table(rows))
    print(
        f"would purge {total} finished {plural(total, 'job')} older than "
        f"{age(args.older_than)} (dry run: nothing deleted)"
    )
    return EXIT_OK


def schedule_of(record: JobRecord) -> str:
    """``nightly, tick 2026-11-23T02:30:00+00:00 (enqueued 0.4s late)``, or a manual run."""
    if record.schedule is None:
        return "-"
    if record.scheduled_for is None:
        return f"{record.schedule}, a manual run"
    return (
        f"{record.schedule}, tick {when(record.scheduled_for)} "
        f"(enqueued {age(record.late_by or 0.0)} late)"
    )


def record_dict(record: JobRecord) -> dict[str, Any]:
    fields = record.__dataclass_fields__  # a frozen dataclass with slots: no __dict__
    return {name: getattr(record, name) for name in fields}
