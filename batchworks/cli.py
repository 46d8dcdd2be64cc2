"""The ``batchworks`` command: run workers and cron batches, and look into and steer queues.

It only calls the public API. A user's mistake (an unreachable database, a schema not
migrated, a bad APP path) is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import importlib
import inspect
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, TextIO

from batchworks import _cli_batches, _cli_queues, _cli_web
from batchworks._text import age as _age
from batchworks.backends.base import Backend
from batchworks.backends.postgres import PostgresBackend
from batchworks.backends.postgres._connect import OPEN_TIMEOUT
from batchworks.errors import BatchworksError
from batchworks.job import JobRecord, JobState
from batchworks.report import RunReport
from batchworks.retry import RetryPolicy
from batchworks.runner import Runner
from batchworks.schedule import Schedule

__all__ = ["main"]

EXIT_OK, EXIT_FAILED_JOBS, EXIT_USAGE = 0, 1, 2
EXIT_UNHEALTHY = 1
PROGRESS_EVERY = 0.5  # seconds between progress lines on a terminal
PLAIN_PROGRESS_EVERY = 10.0  # seconds between progress lines in a pipe or a cron log
HEALTH_TIMEOUT = 5.0  # seconds a health check may take before it counts as a failure
HEALTH_MAX_SILENCE = 30.0  # seconds: the default prune_after
MAX_LIMIT = 1_000_000  # rows `jobs list` prints at most
MAX_JOB_ID = 2**63 - 1  # a bigint
MAX_DURATION = 100 * 365 * 86400.0  # seconds; PostgreSQL intervals overflow not far above
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)\s*")
_UNITS = {
    **dict.fromkeys(("", "s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "wk", "week", "weeks"), 604800),
}
_DURATION_HINT = "use e.g. 90s, 30m, 1h30m, 2d12h, 7d or 1w"


class UsageError(Exception):
    """A mistake in how the command was called: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """Every mistake in the arguments is one line too, naming the help to read."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"batchworks: error: {message} (see: {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``batchworks`` console script and ``python -m batchworks``."""
    args = _parser().parse_args(argv)
    # --dsn and --schema are accepted before and after the command; neither position sets a
    # default (argparse.SUPPRESS), or the command's parser would overwrite a value given
    # before it with its own default.
    if getattr(args, "dsn", None) is None:
        args.dsn = os.environ.get("BATCHWORKS_DSN")
    if getattr(args, "schema", None) is None:
        args.schema = os.environ.get("BATCHWORKS_SCHEMA", "batchworks")
    try:
        code: int = asyncio.run(args.command(args))
        return code
    except (UsageError, BatchworksError, OSError) as exc:
        print(f"batchworks: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    shared = _Parser(add_help=False)
    shared.add_argument(
        "--dsn",
        default=argparse.SUPPRESS,
        help="PostgreSQL DSN (default: $BATCHWORKS_DSN)",
    )
    shared.add_argument(
        "--schema",
        default=argparse.SUPPRESS,
        help="schema of the batchworks tables (default: $BATCHWORKS_SCHEMA or batchworks)",
    )
    parser = _Parser(
        prog="batchworks",
        description="Run batchworks workers and look into their queues.",
        parents=[shared],
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[..., Any], help: str, under: Any = commands
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = under.add_parser(
            name, help=help, description=help, parents=[shared]
        )
        sub.set_defaults(command=func)
        return sub

    command("migrate", _migrate, "create or upgrade the batchworks schema")
    worker = command("worker", _worker, "run a worker until SIGTERM/SIGINT")
    worker.add_argument("app", metavar="APP", help="module:attribute naming a Runner or factory")
    worker.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    _open_timeout_option(worker)
    run = command(
        "run",
        _run,
        "run a batch from cron: exit 0 if no job failed, 1 if some did, 128 + the signal's "
        "number if SIGINT/SIGTERM stopped it",
    )
    run.add_argument("app", metavar="APP", help="module:attribute naming a Runner or factory")
    run.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    run.add_argument("--until-empty", action="store_true", required=True, help="stop when drained")
    run.add_argument(
        "--max-delay",
        type=_duration,
        default=0.0,
        help="also wait for jobs due within this long (seconds, or e.g. 5m)",
    )
    run.add_argument(
        "--fail-on-pending",
        action="store_true",
        help="exit 1 when jobs are left queued: due later, or in a queue no handler serves",
    )
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    _open_timeout_option(run)
    stats = command("stats", _stats, "queues by state, oldest ready job, live workers")
    stats.add_argument("--json", action="store_true", help="print JSON")

    jobs = command("jobs", _no_subcommand, "list and show jobs, and say why one waits")
    job_commands = jobs.add_subparsers(title="jobs commands", required=True, metavar="COMMAND")
    listing = command("list", _jobs_list, "the newest jobs, filtered", job_commands)
    listing.add_argument("--queue")
    listing.add_argument("--state", choices=[state.value for state in JobState])
    listing.add_argument(
        "--limit", type=_number("--limit", 1, MAX_LIMIT), default=20, help="default: 20"
    )
    listing.add_argument("--json", action="store_true")
    show = command(
        "show", _jobs_show, "one job: payload, attempts, errors, checkpoint", job_commands
    )
    show.add_argument("id", type=_job_id)
    show.add_argument("--json", action="store_true")
    _cli_web.add(command, job_commands, _job_id)  # jobs why, web

    schedules = command(
        "schedules", _schedules_list, "periodic jobs: list them (or run, pause, resume, remove one)"
    )
    schedules.add_argument("--json", action="store_true", help="print JSON")
    schedule_commands = schedules.add_subparsers(
        title="schedules commands", required=False, metavar="COMMAND"
    )
    for name, func, text in (
        ("run", _schedules_run, "enqueue one job of a schedule now, outside its ticks"),
        ("pause", _schedules_pause, "skip a schedule's ticks (counted as skipped) until resumed"),
        ("resume", _schedules_resume, "run a paused schedule again, from its next tick"),
        ("remove", _schedules_remove, "delete a schedule no code defines any more (jobs stay)"),
    ):
        command(name, func, text, schedule_commands).add_argument("name", metavar="NAME")

    _cli_queues.register(command, backend=_backend, table=_table, duration=_duration)
    _cli_batches.add_commands(command, _number("--limit", 1, MAX_LIMIT))
    retry = command("retry", _retry, "queue failed jobs again (by id, by queue, batch, or all)")
    retry.add_argument("ids", type=_job_id, nargs="*")
    retry.add_argument("--queue")
    retry.add_argument("--batch", type=_job_id, help="only the failed members of this batch")
    cancel = command("cancel", _cancel, "cancel a queued job, or a running one at its heartbeat")
    cancel.add_argument("id", type=_job_id)
    purge = command("purge", _purge, "delete finished jobs older than a duration")
    purge.add_argument(
        "--older-than", required=True, type=_duration, help="e.g. 7d, 12h, 1h30m, 1w"
    )
    purge.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted, delete nothing"
    )
    health = command(
        "health",
        _health,
        "for probes: exit 0 if the database answers and its schema is migrated (and, with "
        "--worker or --this-host, that worker heartbeats), 1 if not",
    )
    which = health.add_mutually_exclusive_group()
    which.add_argument("--worker", metavar="NAME", help="a worker_name that must be live")
    which.add_argument(
        "--this-host",
        action="store_true",
        help="a worker registered from this host (in Kubernetes: this pod) must be live",
    )
    health.add_argument(
        "--max-silence",
        type=_duration,
        default=HEALTH_MAX_SILENCE,
        help="seconds since that worker's last heartbeat that still count as live "
        f"(default: {HEALTH_MAX_SILENCE:g}, the default prune_after)",
    )
    health.add_argument(
        "--timeout",
        type=_duration,
        default=HEALTH_TIMEOUT,
        help=f"seconds the check may take before it fails (default: {HEALTH_TIMEOUT:g})",
    )
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
    """Seconds from ``90``, ``90s``, ``30m``, ``1h30m``, ``2d12h``, ``1w``, ``1week``."""
    spec = text.strip().lower()
    parts = []
    position = 0
    while position < len(spec):
        match = _DURATION_PART.match(spec, position)
        if match is None or match[2] not in _UNITS:
            break
        parts.append((float(match[1]), match[2]))
        position = match.end()
    # A number without a unit is seconds, but only alone: "1h30" may mean 1h30m.
    if not parts or position < len(spec) or (len(parts) > 1 and any(not u for _, u in parts)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: {_DURATION_HINT}")
    total = sum(number * _UNITS[unit] for number, unit in parts)
    if total > MAX_DURATION:
        raise argparse.ArgumentTypeError(f"{text!r} is more than 100 years: {_DURATION_HINT}")
    return total


def _number(name: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number from {low} to {high:,}, got {text!r}"
            )
        return value

    parse.__name__ = name
    return parse


_job_id = _number("a job id", 1, MAX_JOB_ID)


async def _no_subcommand(args: argparse.Namespace) -> int:  # pragma: no cover - argparse
    raise UsageError("name a jobs command: list, show or why")


@contextlib.asynccontextmanager
async def _backend(
    args: argparse.Namespace, *, open_timeout: float = 0.0
) -> AsyncIterator[PostgresBackend]:
    """The backend of --dsn. Operator commands fail at once when the database does not
    answer; workers wait ``open_timeout`` for it (they may start before it)."""
    if not args.dsn:
        raise UsageError("no database: pass --dsn or set BATCHWORKS_DSN")
    backend = PostgresBackend(args.dsn, schema=args.schema, min_size=1, open_timeout=open_timeout)
    async with _opened(backend, what="--dsn"):
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
    except (ImportError, SyntaxError) as exc:
        # Other exceptions raised while the module runs keep their traceback: a bug in it.
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
    takes_backend = _takes_backend(app, args.app)
    async with contextlib.AsyncExitStack() as stack:
        if takes_backend:
            opened = _backend(args, open_timeout=args.open_timeout)
            made = app(await stack.enter_async_context(opened))
        else:
            made = app()
        if inspect.isawaitable(made):
            made = await made
        if not isinstance(made, Runner):
            raise UsageError(f"APP {args.app!r} returned {type(made).__name__}, not a Runner")
        if not takes_backend:
            await stack.enter_async_context(_opened(made.backend))
        yield made


def _takes_backend(factory: Callable[..., Any], path: str) -> bool:
    """Whether the APP factory takes the backend: it must be callable with one positional
    argument or with none."""
    parameters = list(inspect.signature(factory).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    required = [p for p in parameters if p.default is p.empty and p.kind not in variadic]
    if len(required) > 1 or any(p.kind not in positional for p in required):
        raise UsageError(
            f"APP {path!r} must take the backend as its one argument, or no argument; it "
            f"takes ({', '.join(p.name for p in parameters)})"
        )
    return bool(required) or any(
        p.kind in positional or p.kind is p.VAR_POSITIONAL for p in parameters
    )


@contextlib.asynccontextmanager
async def _opened(backend: Backend, what: str = "the APP's backend") -> AsyncIterator[None]:
    opener = getattr(backend, "open", None)
    try:
        if opener is not None:
            await opener()
    except ValueError as exc:
        if isinstance(exc, BatchworksError):
            raise
        # The driver's own check of the DSN (asyncpg's ClientConfigurationError is a
        # ValueError). The DSN itself is not echoed: it may hold a password.
        raise UsageError(
            f"{what} is not a valid PostgreSQL DSN: {exc}; use postgresql://user@host:5432/dbname"
        ) from exc
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
            with _stop_on_signals(runner) as interrupted:
                report = await runner.run_until_empty(max_delay=args.max_delay)
                progress.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await progress
                pending = await _pending_or_none(runner)
        finally:
            progress.cancel()
    if args.json:
        print(
            json.dumps(
                {
                    **_report_dict(report),
                    "worker": runner.worker_name,
                    "interrupted": interrupted[0].name if interrupted else None,
                    "pending": None
                    if pending is None
                    else {line.queue: line.as_dict() for line in pending},
                }
            )
        )
    else:
        print(_report_line(report))
        for line in pending or ():
            print(line.text())
    if interrupted:
        print(
            f"batchworks: interrupted by {interrupted[0].name}: jobs not finished were put back "
            "without using an attempt",
            file=sys.stderr,
        )
        return 128 + interrupted[0].value
    if report.failed:
        return EXIT_FAILED_JOBS
    if args.fail_on_pending and pending is None:
        return EXIT_USAGE  # cannot tell: not a success
    return EXIT_FAILED_JOBS if args.fail_on_pending and pending else EXIT_OK


async def _pending_or_none(runner: Runner) -> list[_Pending] | None:
    """The work left, or None (said on stderr) when the backend cannot tell: the report of
    the run must be printed all the same."""
    try:
        return await _pending(runner)
    except (BatchworksError, OSError) as exc:
        print(f"batchworks: error: could not count the jobs left: {exc}", file=sys.stderr)
        return None


@contextlib.contextmanager
def _stop_on_signals(runner: Runner) -> Iterator[list[signal.Signals]]:
    """SIGINT/SIGTERM during a cron run stop it as they stop a worker: the first gracefully
    (jobs that have not started go back at once, running ones get shutdown_timeout, then go
    back too, all without using an attempt), a second at once. The list yielded holds the
    first signal received, so that the run can report and exit 128 + its number."""
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        again = len(received) > 1
        clear = "\r\x1b[K" if sys.stderr.isatty() else ""  # the progress line, on a terminal
        print(
            f"{clear}batchworks: {sig.name}: "
            + ("stopping now" if again else "stopping gracefully (again to stop now)"),
            file=sys.stderr,
        )
        runner.stop(now=again)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        yield received
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pending:
    """Work a cron run left behind in one queue."""

    queue: str
    due_now: int
    later: int
    served: bool
    #: seconds until the first of the jobs queued for later, when none is due now
    next_due: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queued_now": self.due_now,
            "queued_later": self.later,
            "served": self.served,
            "next_due_seconds": self.next_due,
        }

    def text(self) -> str:
        parts = []
        if self.due_now:
            parts.append(f"{self.due_now} queued now")
        if self.later:
            due = "" if self.next_due is None else f", the next in {_age(self.next_due)}"
            parts.append(f"{self.later} queued for later{due}")
        where = "" if self.served else ", in a queue no handler of this app serves"
        return f"left in queue {self.queue!r}: {', '.join(parts)}{where}"


async def _pending(runner: Runner) -> list[_Pending]:
    """Queued jobs left after a run: in its own queues (due later, or due now because the
    run was stopped), and in queues that no handler of the app nor any live worker serves
    (a typo in a producer's queue name). Queues other live workers serve are theirs."""
    backend = runner.backend
    served = set(runner.queues)
    elsewhere = {queue for worker in await backend.workers() for queue in worker.queues}
    left = []
    for queue, overview in sorted((await backend.overview()).items()):
        queued = overview.counts.get(JobState.QUEUED.value, 0)
        if not queued or (queue not in served and queue in elsewhere):
            continue
        later = overview.queued_later
        # next_due is the earliest queued job: when some are due now, it says nothing of
        # those queued for later.
        next_due = await backend.next_due([queue]) if later == queued else None
        left.append(
            _Pending(
                queue=queue,
                due_now=queued - later,
                later=later,
                served=queue in served,
                next_due=next_due,
            )
        )
    return left


def _report_dict(report: RunReport) -> dict[str, Any]:
    fields = ("succeeded", "failed", "retried", "snoozed", "released", "cancelled", "lost")
    return {name: getattr(report, name) for name in fields} | {"duration": report.duration}


def _report_line(report: RunReport) -> str:
    rate = report.settled / report.duration if report.duration > 0 else 0.0
    return (
        f"succeeded {report.succeeded}, failed {report.failed}, retried {report.retried}, "
        f"snoozed {report.snoozed}, released {report.released}, lost {report.lost} "
        f"in {report.duration:.1f}s "
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
        held = {state.name: state.held_back for state in await backend.queues()}
    if args.json:
        print(
            json.dumps(
                {
                    "queues": {
                        name: {
                            **queue.counts,
                            "queued_later": queue.queued_later,
                            "oldest_ready_seconds": queue.oldest_ready,
                            "running_with_checkpoint": queue.running_with_checkpoint,
                            "held_back": dict(held.get(name, {})),
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
    rows = [["queue", *states, "oldest ready", "checkpointed", "held back"]]
    for name, queue in sorted(queues.items()):
        rows.append(
            [
                name,
                *(str(queue.counts[state]) for state in states),
                "-" if queue.oldest_ready is None else _age(queue.oldest_ready),
                str(queue.running_with_checkpoint),
                _cli_queues.held_back_text(held.get(name, {})) or "-",
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
        if not records and args.queue is not None:
            await _check_known_queue(backend, args.queue)
        maxima = await _maxima(backend, records)
    if args.json:
        print(
            json.dumps(
                [_record_dict(record) | maxima[record.id].as_dict() for record in records],
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
                _when(record.run_at),
                error,
            ]
        )
    print(_table(rows) if records else "no jobs")
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
    async with _backend(args) as backend:
        record = await backend.get_job(args.id)
        if record is None:
            raise UsageError(f"no job {args.id} in schema {args.schema!r}")
        maximum = (await _maxima(backend, [record]))[record.id]
    if args.json:
        print(json.dumps(_record_dict(record) | maximum.as_dict(), default=str))
        return EXIT_OK
    fields = [
        ("id", str(record.id)),
        ("queue", record.queue),
        ("state", record.state.value),
        ("attempts", f"{record.attempts} of {maximum.long()}"),
        ("priority", str(record.priority)),
        ("run at", _when(record.run_at)),
        ("created", _when(record.created_at)),
        ("started", _when(record.started_at)),
        ("finished", _when(record.finished_at)),
        ("worker", record.worker or "-"),
        ("timeout", "-" if record.timeout is None else f"{record.timeout:g}s"),
        ("dedupe key", record.dedupe_key or "-"),
        ("schedule", _schedule_of(record)),
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
    print(f"queued {count} failed {_plural(count, 'job')}{where} again")
    if skipped:
        print(f"not queued again: {', '.join(skipped)}")
        return EXIT_FAILED_JOBS
    return EXIT_OK


# -- schedules --------------------------------------------------------------------------------


async def _schedules_list(args: argparse.Namespace) -> int:
    async with _backend(args) as backend:
        listing = await backend.schedules()
    rows = []
    for state in listing.schedules:
        fields = json.loads(state.definition)
        rows.append(
            {
                "name": state.name,
                "cron": fields.get("cron"),
                "timezone": fields.get("timezone"),
                "queue": fields.get("queue"),
                "missed": fields.get("missed"),
                "next_tick": state.next_tick.isoformat(),
                "last_tick": None if state.last_tick is None else state.last_tick.isoformat(),
                "skipped": state.skipped,
                "paused": state.paused,
            }
        )
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    if not rows:
        print("no schedules")
        return EXIT_OK
    table = [["name", "cron", "timezone", "queue", "missed", "next tick", "last tick", "skipped"]]
    for row in rows:
        table.append(
            [
                str(row["name"]) + (" (paused)" if row["paused"] else ""),
                str(row["cron"]),
                str(row["timezone"]),
                str(row["queue"]),
                str(row["missed"]),
                _when(datetime.fromisoformat(str(row["next_tick"]))),
                "-"
                if row["last_tick"] is None
                else _when(datetime.fromisoformat(row["last_tick"])),
                str(row["skipped"]),
            ]
        )
    print(_table(table))
    return EXIT_OK


def _unknown_schedule(name: str, known: Sequence[str]) -> UsageError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UsageError(
        f"no schedule {name!r}{hint}; known schedules: {', '.join(known) if known else 'none'}"
    )


async def _schedules_known(backend: Backend) -> list[str]:
    return [state.name for state in (await backend.schedules()).schedules]


async def _schedules_run(args: argparse.Namespace) -> int:
    async with _backend(args) as backend:
        job_id = await backend.run_schedule(args.name)
        if job_id is None:
            raise _unknown_schedule(args.name, await _schedules_known(backend))
        record = await backend.get_job(job_id)
    queue = record.queue if record is not None else "?"
    print(f"enqueued job {job_id} of schedule {args.name!r} into queue {queue!r} (a manual run)")
    return EXIT_OK


async def _schedules_pause(args: argparse.Namespace) -> int:
    return await _set_paused(args, paused=True)


async def _schedules_resume(args: argparse.Namespace) -> int:
    return await _set_paused(args, paused=False)


async def _set_paused(args: argparse.Namespace, *, paused: bool) -> int:
    async with _backend(args) as backend:
        listing = await backend.schedules()
        state = next((s for s in listing.schedules if s.name == args.name), None)
        if state is None:
            raise _unknown_schedule(args.name, [s.name for s in listing.schedules])
        # A resume continues from the first tick after now, on the database's clock.
        next_tick = Schedule.from_definition(state.name, state.definition).next_after(listing.now)
        await backend.pause_schedule(args.name, paused, next_tick=next_tick)
    if paused:
        print(f"schedule {args.name!r} paused: its ticks are skipped until it is resumed")
    elif state.paused:
        print(f"schedule {args.name!r} resumed: next tick {_when(next_tick)}")
    else:
        print(f"schedule {args.name!r} was not paused: next tick {_when(state.next_tick)}")
    return EXIT_OK


async def _schedules_remove(args: argparse.Namespace) -> int:
    async with _backend(args) as backend:
        if not await backend.remove_schedule(args.name):
            raise _unknown_schedule(args.name, await _schedules_known(backend))
    print(
        f"schedule {args.name!r} removed (its jobs stay); a runner whose code still defines "
        "it stores it again when it starts"
    )
    return EXIT_OK


def _plural(count: int, word: str) -> str:
    return word if count == 1 else f"{word}s"


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
        if args.dry_run:
            counts = await backend.purgeable(args.older_than)
        else:
            count = await backend.purge(args.older_than)
    if not args.dry_run:
        print(f"purged {count} finished {_plural(count, 'job')}")
        return EXIT_OK
    rows = [["queue", "state", "jobs"]]
    for queue, per_state in sorted(counts.items()):
        rows += [[queue, state, str(n)] for state, n in sorted(per_state.items()) if n]
    total = sum(n for per_state in counts.values() for n in per_state.values())
    if total:
        print(_table(rows))
    print(
        f"would purge {total} finished {_plural(total, 'job')} older than "
        f"{_age(args.older_than)} (dry run: nothing deleted)"
    )
    return EXIT_OK


# -- health -----------------------------------------------------------------------------------


async def _health(args: argparse.Namespace) -> int:
    """One line and exit 0 when healthy; one line on stderr and exit 1 when not, whatever the
    reason (a probe cannot act on the difference). Bounded by --timeout, because a probe that
    hangs counts against its own timeoutSeconds with no message at all."""
    try:
        async with asyncio.timeout(args.timeout):
            message = await _check_health(args)
    except TimeoutError:
        message = f"unhealthy: no answer from the database within {_age(args.timeout)}"
    except (BatchworksError, OSError) as exc:
        message = f"unhealthy: {exc}"
    if message.startswith("unhealthy"):
        print(f"batchworks: {message}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(message)
    return EXIT_OK


async def _check_health(args: argparse.Namespace) -> str:
    async with _backend(args) as backend:
        missing = await backend.pending_migrations()
        if missing:
            return (
                f"unhealthy: schema {args.schema!r} lacks migrations {', '.join(missing)}; "
                "run 'batchworks migrate'"
            )
        if args.worker is None and not args.this_host:
            return f"healthy: the database answers and schema {args.schema!r} is up to date"
        workers = await backend.workers()
    if args.this_host:
        host = socket.gethostname()
        which = f"on host {host!r}"
        live = [worker for worker in workers if worker.host == host]
    else:
        which = f"named {args.worker!r}"
        live = [worker for worker in workers if worker.name == args.worker]
    if not live:
        return f"unhealthy: no live worker {which}"
    # The freshest one counts: after a container restart under a new name, the old
    # incarnation's row stays active (silent) until a worker prunes it.
    freshest = min(live, key=lambda worker: worker.silent_for)
    heard = f"worker {freshest.name!r} last heartbeat {_age(freshest.silent_for)} ago"
    if freshest.silent_for > args.max_silence:
        return f"unhealthy: {heard} (more than {_age(args.max_silence)})"
    return f"healthy: {heard}"


def _schedule_of(record: JobRecord) -> str:
    """``nightly, tick 2026-11-23T02:30:00+00:00 (enqueued 0.4s late)``, or a manual run."""
    if record.schedule is None:
        return "-"
    if record.scheduled_for is None:
        return f"{record.schedule}, a manual run"
    return (
        f"{record.schedule}, tick {_when(record.scheduled_for)} "
        f"(enqueued {_age(record.late_by or 0.0)} late)"
    )


def _record_dict(record: JobRecord) -> dict[str, Any]:
    fields = record.__dataclass_fields__  # a frozen dataclass with slots: no __dict__
    return {name: getattr(record, name) for name in fields}


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")
