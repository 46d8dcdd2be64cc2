"""``batchworks batches``: recent batches with their progress, one batch in full (``show``,
``--watch`` for a live bar), and ``cancel``/``close``. cli.py wires it in with
:func:`add_commands`; like cli.py it only calls the public API."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, TextIO

from batchworks._cli_common import (
    EXIT_OK,
    MAX_LIMIT,
    Command,
    UsageError,
    open_backend,
    parse_number,
    table,
    when,
)
from batchworks.batch import BatchFailure, BatchRecord, Callback

__all__ = ["add", "bar", "counts", "record_dict"]

BAR_WIDTH = 30  # characters of the progress bar
WATCH_EVERY = 0.5  # seconds between redraws on a terminal
PLAIN_WATCH_EVERY = 10.0  # seconds between lines in a pipe or a log
FAILURE_GROUPS = 10  # failure groups `batches show` prints


def add(command: Command) -> None:
    """Add ``batches`` and its subcommands."""
    batches = command("batches", _list, "batches: the newest with progress (or show one)")
    batches.add_argument(
        "--limit", type=parse_number("--limit", 1, MAX_LIMIT), default=20, help="default: 20"
    )
    batches.add_argument("--json", action="store_true", help="print JSON")
    under = batches.add_subparsers(title="batches commands", required=False, metavar="COMMAND")
    show = command(
        "show", _show, "one batch: counts, failures by error, its callbacks' jobs", under
    )
    show.add_argument("id", type=_batch_id)
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument(
        "--watch",
        action="store_true",
        help="follow it until done: a live bar on a terminal, a line every "
        f"{PLAIN_WATCH_EVERY:g}s in a pipe",
    )
    for name, func, text in (
        ("cancel", _cancel, "cancel its queued members now, its running ones at their heartbeat"),
        ("close", _close, "close an open batch: it finishes once no member is pending"),
    ):
        command(name, func, text, under).add_argument("id", type=_batch_id)


def _batch_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a batch id is a positive integer, not {text!r}"
        ) from None
    if not 1 <= value <= 2**63 - 1:
        raise argparse.ArgumentTypeError(f"a batch id is a positive integer, not {text!r}")
    return value


def bar(record: BatchRecord, width: int = BAR_WIDTH) -> str:
    """``[#########-----]  60%``: the share of members that ended."""
    filled = round(record.progress * width)
    return f"[{'#' * filled}{'-' * (width - filled)}] {record.progress:4.0%}"


def counts(record: BatchRecord) -> str:
    return (
        f"{record.total} members: queued {record.queued}, running {record.running}, "
        f"succeeded {record.succeeded}, failed {record.failed}, cancelled {record.cancelled}"
    )


def record_dict(record: BatchRecord) -> dict[str, Any]:
    fields = {name: getattr(record, name) for name in record.__dataclass_fields__}
    for which in ("on_complete", "on_success"):
        callback: Callback | None = fields[which]
        fields[which] = None if callback is None else callback.spec()
    fields["state"] = record.state.value
    return fields


async def _list(args: argparse.Namespace) -> int:

    async with open_backend(args) as backend:
        records = await backend.batches(limit=args.limit)
    if args.json:
        print(json.dumps([record_dict(r) for r in records], default=str))
        return EXIT_OK
    if not records:
        print("no batches")
        return EXIT_OK
    head = "ID NAME STATE PROGRESS TOTAL QUEUED RUNNING OK FAILED CANCELLED CREATED"
    rows = [head.split()]
    for r in records:
        numbers = (r.total, r.queued, r.running, r.succeeded, r.failed, r.cancelled)
        rows.append(
            [str(r.id), r.name or "-", r.state.value, bar(r, 10)]
            + [str(n) for n in numbers]
            + [when(r.created_at)]
        )
    print(table(rows))
    return EXIT_OK


async def _show(args: argparse.Namespace) -> int:

    async with open_backend(args) as backend:
        record = await backend.get_batch(args.id)
        if record is None:
            raise UsageError(f"no batch {args.id} in schema {args.schema!r}")
        if args.watch:
            record = await _watch(backend, record, sys.stdout)
        failures = await backend.batch_failures(record.id, limit=FAILURE_GROUPS)
        jobs = {}
        for job_id in (record.complete_job, record.success_job):
            if job_id is not None:
                jobs[job_id] = await backend.get_job(job_id)
    if args.json:
        data = record_dict(record) | {
            "failures": [_failure(failure) for failure in failures],
            "callback_jobs": {
                str(job_id): None if job is None else job.state.value
                for job_id, job in jobs.items()
            },
        }
        print(json.dumps(data, default=str))
        return EXIT_OK
    _print_batch(record, failures, {i: (j.state.value if j else "purged") for i, j in jobs.items()})
    return EXIT_OK


def _failure(failure: BatchFailure) -> dict[str, Any]:
    return {name: getattr(failure, name) for name in failure.__dataclass_fields__}


def _print_batch(record: BatchRecord, failures: list[BatchFailure], jobs: dict[int, str]) -> None:

    name = "" if record.name is None else f" {record.name!r}"
    print(f"batch {record.id}{name}: {record.state.value}  {bar(record)}")
    print(f"  {counts(record)}")
    print(f"  created {when(record.created_at)}, finished {when(record.finished_at)}")
    for which, callback, job_id in (
        ("on_complete", record.on_complete, record.complete_job),
        ("on_success", record.on_success, record.success_job),
    ):
        if callback is None:
            continue
        if job_id is not None:
            where = f"job {job_id} ({jobs.get(job_id, '?')})"
        elif which == "on_success" and (record.failed or record.cancelled):
            where = "not enqueued: not every member succeeded"
        else:
            where = "not enqueued yet"
        print(f"  {which}: queue {callback.queue!r}, {where}")
    if failures:
        print(f"  failures by error ({record.failed} failed):")
        for failure in failures:
            print(f"    {failure.count:>7}  {failure.type}: {failure.message}  "
                  f"(e.g. job {failure.example})")  # fmt: skip


async def _watch(backend: Any, record: BatchRecord, out: TextIO) -> BatchRecord:
    """Follow the batch until done; each wait ends early when it finishes (wait_batch)."""
    tty = out.isatty()
    every = WATCH_EVERY if tty else PLAIN_WATCH_EVERY
    try:
        while not record.done:
            line = f"batch {record.id} {record.state.value} {bar(record)}  {counts(record)}"
            out.write(f"\r{line}\x1b[K" if tty else f"{line}\n")
            out.flush()
            with contextlib.suppress(TimeoutError):
                record = await backend.wait_batch(record.id, timeout=every)
                continue
            latest = await backend.get_batch(record.id)
            if latest is None:  # purged meanwhile
                return record
            record = latest
    finally:
        if tty:
            out.write("\r\x1b[K")
            out.flush()
    return record


async def _cancel(args: argparse.Namespace) -> int:

    async with open_backend(args) as backend:
        record = await backend.cancel_batch(args.id)
    print(f"batch {record.id} cancelled: {counts(record)}")
    return EXIT_OK


async def _close(args: argparse.Namespace) -> int:

    async with open_backend(args) as backend:
        record = await backend.close_batch(args.id)
    print(f"batch {record.id} {record.state.value}: {counts(record)}")
    return EXIT_OK
