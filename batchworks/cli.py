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
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from batchworks import _cli_batches, _cli_jobs, _cli_queues, _cli_schedules, _cli_web
from batchworks._cli_common import (
    EXIT_FAILED_JOBS,
    EXIT_OK,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
    Parser,
    UsageError,
    backend_opened,
    open_backend,
    parse_duration,
    table,
)
from batchworks._text import age
from batchworks.backends.postgres._connect import OPEN_TIMEOUT
from batchworks.errors import BatchworksError
from batchworks.job import JobState
from batchworks.report import RunReport
from batchworks.runner import Runner

__all__ = ["main"]

PROGRESS_EVERY = 0.5  # seconds between progress lines on a terminal
PLAIN_PROGRESS_EVERY = 10.0  # seconds between progress lines in a pipe or a cron log
HEALTH_TIMEOUT = 5.0  # seconds a health check may take before it counts as a failure
HEALTH_MAX_SILENCE = 30.0  # seconds: the default prune_after


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
    shared = Parser(add_help=False)
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
    parser = Parser(
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
        type=parse_duration,
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

    job_commands = _cli_jobs.add(command)
    _cli_web.add(command, job_commands)  # jobs why, web
    _cli_schedules.add(command)
    _cli_queues.add(command)
    _cli_batches.add(command)
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
        type=parse_duration,
        default=HEALTH_MAX_SILENCE,
        help="seconds since that worker's last heartbeat that still count as live "
        f"(default: {HEALTH_MAX_SILENCE:g}, the default prune_after)",
    )
    health.add_argument(
        "--timeout",
        type=parse_duration,
        default=HEALTH_TIMEOUT,
        help=f"seconds the check may take before it fails (default: {HEALTH_TIMEOUT:g})",
    )
    return parser


def _open_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--open-timeout",
        type=parse_duration,
        default=OPEN_TIMEOUT,
        metavar="DURATION",
        help="how long to wait for the database of --dsn to accept connections, retrying "
        f"with backoff (default: {OPEN_TIMEOUT:g}s; 0 tries once)",
    )


async def _migrate(args: argparse.Namespace) -> int:
    async with open_backend(args) as backend:
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
        async with backend_opened(app.backend):
            yield app
        return
    if not callable(app):
        raise UsageError(f"APP {args.app!r} is neither a Runner nor a factory returning one")
    takes_backend = _takes_backend(app, args.app)
    async with contextlib.AsyncExitStack() as stack:
        if takes_backend:
            opened = open_backend(args, open_timeout=args.open_timeout)
            made = app(await stack.enter_async_context(opened))
        else:
            made = app()
        if inspect.isawaitable(made):
            made = await made
        if not isinstance(made, Runner):
            raise UsageError(f"APP {args.app!r} returned {type(made).__name__}, not a Runner")
        if not takes_backend:
            await stack.enter_async_context(backend_opened(made.backend))
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
            due = "" if self.next_due is None else f", the next in {age(self.next_due)}"
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
    async with open_backend(args) as backend:
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
                "-" if queue.oldest_ready is None else age(queue.oldest_ready),
                str(queue.running_with_checkpoint),
                _cli_queues.held_back_text(held.get(name, {})) or "-",
            ]
        )
    print(table(rows) if queues else "no jobs")
    print()
    print(f"{len(workers)} live workers")
    if workers:
        worker_rows = [["name", "host", "pid", "queues", "last heartbeat"]]
        worker_rows += [
            [w.name, w.host, str(w.pid), ",".join(w.queues), f"{age(w.silent_for)} ago"]
            for w in workers
        ]
        print(table(worker_rows))
    return EXIT_OK


# -- schedules --------------------------------------------------------------------------------


# -- health -----------------------------------------------------------------------------------


async def _health(args: argparse.Namespace) -> int:
    """One line and exit 0 when healthy; one line on stderr and exit 1 when not, whatever the
    reason (a probe cannot act on the difference). Bounded by --timeout, because a probe that
    hangs counts against its own timeoutSeconds with no message at all."""
    try:
        async with asyncio.timeout(args.timeout):
            message = await _check_health(args)
    except TimeoutError:
        message = f"unhealthy: no answer from the database within {age(args.timeout)}"
    except (BatchworksError, OSError) as exc:
        message = f"unhealthy: {exc}"
    if message.startswith("unhealthy"):
        print(f"batchworks: {message}", file=sys.stderr)
        return EXIT_UNHEALTHY
    print(message)
    return EXIT_OK


async def _check_health(args: argparse.Namespace) -> str:
    async with open_backend(args) as backend:
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
    heard = f"worker {freshest.name!r} last heartbeat {age(freshest.silent_for)} ago"
    if freshest.silent_for > args.max_silence:
        return f"unhealthy: {heard} (more than {age(args.max_silence)})"
    return f"healthy: {heard}"
