"""The ``batchworks`` command: run workers and cron batches, and look into and steer queues.

It only calls the public API. A user's mistake (an unreachable database, a schema not
migrated, a bad APP path) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any, TextIO

from batchworks.backends.base import Backend
from batchworks.backends.postgres import PostgresBackend
from batchworks.backends.postgres._connect import OPEN_TIMEOUT
from batchworks.errors import BatchworksError
from batchworks.job import JobRecord, JobState
from batchworks.report import RunReport
from batchworks.runner import Runner

__all__ = ["main"]

EXIT_OK, EXIT_FAILED_JOBS, EXIT_USAGE = 0, 1, 2
PROGRESS_EVERY = 0.5  # seconds between progress lines on a terminal
PLAIN_PROGRESS_EVERY = 10.0  # seconds between progress lines in a pipe or a cron log
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(Exception):
    """A mistake in how the command was called: printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchworks`` console script and ``python -m batchworks``."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = asyncio.run(args.command(args))
        return code
    except (UsageError, BatchworksError, OSError) as exc:
        print(f"batchworks: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchworks", description="Run batchworks workers and look into their queues."
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("BATCHWORKS_DSN"),
        help="PostgreSQL DSN (default: $BATCHWORKS_DSN)",
    )
    parser.add_argument(
        "--schema",
        default=os.environ.get("BATCHWORKS_SCHEMA", "batchworks"),
        help="schema of the batchworks tables (default: $BATCHWORKS_SCHEMA or batchworks)",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[..., Any], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(command=func)
        return sub

    command("migrate", _migrate, "create or upgrade the batchworks schema")
    worker = command("worker", _worker, "run a worker until SIGTERM/SIGINT")
    worker.add_argument("app", metavar="APP", help="module:attribute naming a Runner or factory")
    worker.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    _open_timeout_option(worker)
    run = command("run", _run, "run a batch from cron: exit 0 if no job failed, 1 if some did")
    run.add_argument("app", metavar="APP", help="module:attribute naming a Runner or factory")
    run.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    run.add_argument("--until-empty", action="store_true", required=True, help="stop when drained")
    run.add_argument("--max-delay", type=float, default=0.0, help="also wait for jobs due soon")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    _open_timeout_option(run)
    stats = command("stats", _stats, "queues by state, oldest ready job, live workers")
    stats.add_argument("--json", action="store_true", help="print JSON")

    jobs = command("jobs", _no_subcommand, "list and show jobs")
    job_commands = jobs.add_subparsers(title="jobs commands", required=True, metavar="COMMAND")
    listing = job_commands.add_parser("list", help="the newest jobs, filtered")
    listing.set_defaults(command=_jobs_list)
    listing.add_argument("--queue")
    listing.add_argument("--state", choices=[state.value for state in JobState])
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--json", action="store_true")
    show = job_commands.add_parser("show", help="one job: payload, attempts, errors, checkpoint")
    show.set_defaults(command=_jobs_show)
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")

    retry = command("retry", _retry, "queue failed jobs again (by id, by queue, or all)")
    retry.add_argument("ids", type=int, nargs="*")
    retry.add_argument("--queue")
    cancel = command("cancel", _cancel, "cancel a queued job, or a running one at its heartbeat")
    cancel.add_argument("id", type=int)
    purge = command("purge", _purge, "delete finished jobs older than a duration")
    purge.add_argument("--older-than", required=True, type=_duration, help="e.g. 7d, 12h, 90m")
    return parser


def _open_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--open-timeout",
        type=_duration,
        default=OPEN_TIMEOUT,
        metavar="DURATION",
        help="how long to wait for the database of --dsn to accept connections, retrying "
        f"with backoff (default: {OPEN_TIMEOUT:g}s; 0 tries once)",
    )


def _duration(text: str) -> float:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use e.g. 7d, 12h, 30m, 45s")
    return float(match[1]) * _UNITS[match[2]]


async def _no_subcommand(args: argparse.Namespace) -> int:  # pragma: no cover - argparse
    raise UsageError("name a jobs command: list or show")


@contextlib.asynccontextmanager
async def _backend(
    args: argparse.Namespace, *, open_timeout: float = 0.0
) -> AsyncIterator[PostgresBackend]:
    """The backend of --dsn. Operator commands fail at once when the database does not
    answer; workers wait ``open_timeout`` for it (they may start before it)."""
    if not args.dsn:
        raise UsageError("no database: pass --dsn or set BATCHWORKS_DSN")
    async with PostgresBackend(
        args.dsn, schema=args.schema, min_size=1, open_timeout=open_timeout
    ) as backend:
        yield backend


async def _migrate(args: argparse.Namespace) -> int:
    async with _backend(args) as backend:
        await backend.migrate()
    print(f"schema {args.schema!r} is up to date")
    return EXIT_OK


# -- worker and run ---------------------------------------------------------------------------


def load_app(path: str) -> Any:
    """Import ``module:attribute`` (the current directory is importable, as for uvicorn)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"APP {path!r} must be module:attribute, for example myapp.jobs:runner")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r} of APP {path!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return target


@contextlib.asynccontextmanager
async def _runner(args: argparse.Namespace) -> AsyncIterator[Runner]:
    """The APP's Runner with its backend open: a Runner as is, or a factory called with a
    backend built from --dsn (or with nothing, if it takes no argument)."""
    app = load_app(args.app)
    if isinstance(app, Runner):
        async with _opened(app.backend):
            yield app
        return
    if not callable(app):
        raise UsageError(f"APP {args.app!r} is neither a Runner nor a factory returning one")
    takes_backend = bool(inspect.signature(app).parameters)
    async with contextlib.AsyncExitStack() as stack:
        opened = _backend(args, open_timeout=args.open_timeout)
        made = app(await stack.enter_async_context(opened)) if takes_backend else app()
        if inspect.isawaitable(made):
            made = await made
        if not isinstance(made, Runner):
            raise UsageError(f"APP {args.app!r} returned {type(made).__name__}, not a Runner")
        if not takes_backend:
            await stack.enter_async_context(_opened(made.backend))
        yield made


@contextlib.asynccontextmanager
async def _opened(backend: Backend) -> AsyncIterator[None]:
    opener = getattr(backend, "open", None)
    if opener is not None:
        await opener()
    try:
        yield
    finally:
        await backend.aclose()


def _configure_logging(level: str) -> None:
    try:
        logging.basicConfig(
            level=level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    except ValueError:
        raise UsageError(
            f"--log-level {level!r} is not a level: use DEBUG, INFO, WARNING"
        ) from None


async def _worker(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    async with _runner(args) as runner:
        await runner.run()
    return EXIT_OK


async def _run(args: argparse.Namespace) -> int:
    _configure_logging(args.log_level)
    async with _runner(args) as runner:
        progress = asyncio.create_task(_show_progress(runner, sys.stderr))
        try:
            report = await runner.run_until_empty(max_delay=args.max_delay)
        finally:
            progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await progress
    if args.json:
        print(json.dumps({**_report_dict(report), "worker": runner.worker_name}))
    else:
        print(_report_line(report))
    return EXIT_FAILED_JOBS if report.failed else EXIT_OK


def _report_dict(report: RunReport) -> dict[str, Any]:
    fields = ("succeeded", "failed", "retried", "snoozed", "released", "cancelled", "lost")
    return {name: getattr(report, name) for name in fields} | {"duration": report.duration}


def _report_line(report: RunReport) -> str:
    rate = report.settled / report.duration if report.duration > 0 else 0.0
    return (
        f"succeeded {report.succeeded}, failed {report.failed}, retried {report.retried}, "
        f"snoozed {report.snoozed}, lost {report.lost} in {report.duration:.1f}s "
        f"({rate:,.0f} jobs/s)"
    )


async def _show_progress(runner: Runner, out: TextIO) -> None:
    """Counts and rate while a run goes on: one rewritten line on a terminal, a plain line
    every few seconds in a pipe or a cron log."""
    tty = out.isatty()
    every = PROGRESS_EVERY if tty else PLAIN_PROGRESS_EVERY
    started = time.monotonic()
    try:
        while True:
            await asyncio.sleep(every)
            report = runner.report
            rate = report.settled / max(time.monotonic() - started, 1e-9)
            line = (
                f"succeeded {report.succeeded} | failed {report.failed} | "
                f"retried {report.retried} | {rate:,.0f} jobs/s"
            )
            out.write(f"\r{line}\x1b[K" if tty else f"{line}\n")
            out.flush()
    finally:
        if tty:
            out.write("\r\x1b[K")
            out.flush()


# -- inspection and operator commands --------------------------------------------------------


async def _stats(args: argparse.Namespace) -> int:
    async with _backend(args) as backend:
        queues = await backend.overview()
        workers = await backend.workers()
    if args.json:
        print(
            json.dumps(
                {
                    "queues": {
                        name: {
                            **queue.counts,
                            "oldest_ready_seconds": queue.oldest_ready,
                            "running_with_checkpoint": queue.running_with_checkpoint,
                        }
                        for name, queue in queues.items()
                    },
                    "workers": [
                        {
                            "name": w.name,
                            "host": w.host,
                            "pid": w.pid,
                            "queues": list(w.queues),
                            "last_heartbeat_seconds": w.silent_for,
                        }
                        for w in workers
                    ],
                }
            )
        )
        return EXIT_OK
    states = [state.value for state in JobState]
    rows = [["queue", *states, "oldest ready", "checkpointed"]]
    for name, queue in sorted(queues.items()):
        rows.append(
            [
                name,
                *(str(queue.counts[state]) for state in states),
                "-" if queue.oldest_ready is None else _age(queue.oldest_ready),
                str(queue.running_with_checkpoint),
            ]
        )
    print(_table(rows) if queues else "no jobs")
    print()
    print(f"{len(workers)} live workers")
    if workers:
        worker_rows = [["name", "host", "pid", "queues", "last heartbeat"]]
        worker_rows += [
            [w.name, w.host, str(w.pid), ",".join(w.queues), f"{_age(w.silent_for)} ago"]
            for w in workers
        ]
        print(_table(worker_rows))
    return EXIT_OK


async def _jobs_list(args: argparse.Namespace) -> int:
    async with _backend(args) as backend:
        records = await backend.list_jobs(queue=args.queue, state=args.state, limit=args.limit)
    if args.json:
        print(json.dumps([_record_dict(record) for record in records], default=str))
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
                f"{record.attempts}/{record.max_attempts or '-'}",
                _when(record.run_at),
                error,
            ]
        )
    print(_table(rows) if records else "no jobs")
    return EXIT_OK


async def _jobs_show(args: argparse.Namespace) -> int:
    async with _backend(args) as backend:
        record = await backend.get_job(args.id)
    if record is None:
        raise UsageError(f"no job {args.id} in schema {args.schema!r}")
    if args.json:
        print(json.dumps(_record_dict(record), default=str))
        return EXIT_OK
    fields = [
        ("id", str(record.id)),
        ("queue", record.queue),
        ("state", record.state.value),
        ("attempts", f"{record.attempts} of {record.max_attempts or '-'}"),
        ("priority", str(record.priority)),
        ("run at", _when(record.run_at)),
        ("created", _when(record.created_at)),
        ("started", _when(record.started_at)),
        ("finished", _when(record.finished_at)),
        ("worker", record.worker or "-"),
        ("timeout", "-" if record.timeout is None else f"{record.timeout:g}s"),
        ("dedupe key", record.dedupe_key or "-"),
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
    async with _backend(args) as backend:
        count = await backend.retry_failed(queue=args.queue, ids=args.ids or None)
    print(f"queued {count} failed jobs again")
    return EXIT_OK


async def _cancel(args: argparse.Namespace) -> int:
    async with _backend(args) as backend:
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
    async with _backend(args) as backend:
        count = await backend.purge(args.older_than)
    print(f"purged {count} finished jobs")
    return EXIT_OK


def _record_dict(record: JobRecord) -> dict[str, Any]:
    fields = record.__dataclass_fields__  # a frozen dataclass with slots: no __dict__
    return {name: getattr(record, name) for name in fields}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")
