"""What every module of the ``batchworks`` command shares: exit codes, the one-line usage
error, argument parsers (durations, bounded numbers, job ids), the backend of ``--dsn``, and
plain-text tables. :mod:`batchworks.cli` builds the parser; ``_cli_jobs``, ``_cli_schedules``,
``_cli_queues``, ``_cli_batches`` and ``_cli_web`` each add their commands with ``add(command)``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import NoReturn

from batchworks.backends.base import Backend
from batchworks.backends.postgres import PostgresBackend
from batchworks.errors import BatchworksError

#: ``command(name, func, help, under=commands)``: add a subcommand running ``func(args)``
Command = Callable[..., argparse.ArgumentParser]

EXIT_OK, EXIT_FAILED_JOBS, EXIT_USAGE = 0, 1, 2


EXIT_UNHEALTHY = 1


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


class Parser(argparse.ArgumentParser):
    """Every mistake in the arguments is one line too, naming the help to read."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"batchworks: error: {message} (see: {self.prog} --help)\n")


def parse_duration(text: str) -> float:
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


def parse_number(name: str, low: int, high: int) -> Callable[[str], int]:
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


parse_job_id = parse_number("a job id", 1, MAX_JOB_ID)


@contextlib.asynccontextmanager
async def open_backend(
    args: argparse.Namespace, *, open_timeout: float = 0.0
) -> AsyncIterator[PostgresBackend]:
    """The backend of --dsn. Operator commands fail at once when the database does not
    answer; workers wait ``open_timeout`` for it (they may start before it)."""
    if not args.dsn:
        raise UsageError("no database: pass --dsn or set BATCHWORKS_DSN")
    backend = PostgresBackend(args.dsn, schema=args.schema, min_size=1, open_timeout=open_timeout)
    async with backend_opened(backend, what="--dsn"):
        yield backend


@contextlib.asynccontextmanager
async def backend_opened(backend: Backend, what: str = "the APP's backend") -> AsyncIterator[None]:
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


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(timespec="seconds")


def plural(count: int, word: str) -> str:
    return word if count == 1 else f"{word}s"
