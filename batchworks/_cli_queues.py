"""The flow-control commands of ``batchworks`` (#14): ``queues``, ``pause``, ``resume`` and
``limit``, and the "held back" column of ``stats``. They call the public API only
(:meth:`~batchworks.backends.base.Backend.queues`, ``configure_queue``, ``pause_queue``,
``resume_queue``); :mod:`batchworks.cli` wires them in with :func:`add`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from batchworks._cli_common import Command, open_backend, parse_duration, table
from batchworks.backends.base import HELD_BACK_BY, QueueState
from batchworks.errors import ConfigurationError

__all__ = ["add", "held_back_text", "queue_dict"]

EXIT_OK = 0
_RATE = re.compile(r"\s*(\d+)\s*/\s*(.+)")


def add(command: Command) -> None:
    """Add ``queues``, ``pause``, ``resume`` and ``limit``."""

    async def queues(args: argparse.Namespace) -> int:
        async with open_backend(args) as opened:
            states = await opened.queues()
        if args.json:
            print(json.dumps([queue_dict(state) for state in states]))
            return EXIT_OK
        rows = [["queue", "paused", "running", "key limit", "rate", "queued", "due", "held back"]]
        rows += [_row(state) for state in states]
        print(table(rows) if states else "no queues with settings or live jobs")
        return EXIT_OK

    async def pause(args: argparse.Namespace) -> int:
        async with open_backend(args) as opened:
            await opened.pause_queue(args.queue)
        print(
            f"queue {args.queue!r} paused: running jobs finish, none starts until "
            f"'batchworks resume {args.queue}'"
        )
        return EXIT_OK

    async def resume(args: argparse.Namespace) -> int:
        async with open_backend(args) as opened:
            await opened.resume_queue(args.queue)
        print(f"queue {args.queue!r} resumed")
        return EXIT_OK

    async def limit(args: argparse.Namespace) -> int:
        given = {
            name: getattr(args, name)
            for name in ("concurrency", "key_concurrency", "rate")
            if getattr(args, name) is not None
        }
        if args.clear == bool(given):
            raise ConfigurationError(
                "limit takes --clear, or one or more of --concurrency, --key-concurrency, --rate"
            )
        async with open_backend(args) as opened:
            current = {state.name: state for state in await opened.queues()}.get(args.queue)
            kept: dict[str, Any] = {}
            if current is not None and not args.clear:
                kept = {
                    "concurrency": current.concurrency,
                    "key_concurrency": current.key_concurrency,
                    "rate": current.rate,
                }
            settings = {**kept, **given}
            await opened.configure_queue(args.queue, **settings)
        print(f"queue {args.queue!r}: {_limits_text(settings) or 'no limits'}")
        return EXIT_OK

    listing = command("queues", queues, "flow control: each queue's limits, pause and use")
    listing.add_argument("--json", action="store_true", help="print JSON")
    command("pause", pause, "start no new job of a queue (durably) until resumed").add_argument(
        "queue", metavar="QUEUE"
    )
    command("resume", resume, "let a paused queue start jobs again").add_argument(
        "queue", metavar="QUEUE"
    )
    limits = command(
        "limit",
        limit,
        "set a queue's limits across every worker (those not given are kept; --clear removes all)",
    )
    limits.add_argument("queue", metavar="QUEUE")
    limits.add_argument(
        "--concurrency", type=_positive("--concurrency"), help="its jobs running at once"
    )
    limits.add_argument(
        "--key-concurrency",
        type=_positive("--key-concurrency"),
        help="its jobs of one concurrency_key running at once",
    )
    limits.add_argument(
        "--rate",
        type=_rate,
        metavar="N/WINDOW",
        help="at most N starts in any window, e.g. 100/60s, 10/1m, 5/s",
    )
    limits.add_argument("--clear", action="store_true", help="remove every limit of the queue")


def held_back_text(held: Mapping[str, int]) -> str:
    """``paused: 3`` or ``key_concurrency: 2``; empty when nothing is held back."""
    return ", ".join(f"{name}: {held[name]}" for name in HELD_BACK_BY if held.get(name))


def queue_dict(state: QueueState) -> dict[str, Any]:
    """A queue's state as JSON (``batchworks queues --json``)."""
    return {
        "name": state.name,
        "paused": state.paused,
        "concurrency": state.concurrency,
        "key_concurrency": state.key_concurrency,
        "rate": None if state.rate is None else {"n": state.rate[0], "seconds": state.rate[1]},
        "running": state.running,
        "queued": state.queued,
        "due": state.due,
        "recent_starts": state.recent_starts,
        "held_back": dict(state.held_back),
    }


def _row(state: QueueState) -> list[str]:
    running = str(state.running)
    if state.concurrency is not None:
        running += f"/{state.concurrency}"
    rate = "-"
    if state.rate is not None:
        rate = f"{state.recent_starts}/{state.rate[0]} per {state.rate[1]:g}s"
    return [
        state.name,
        "yes" if state.paused else "no",
        running,
        "-" if state.key_concurrency is None else str(state.key_concurrency),
        rate,
        str(state.queued),
        str(state.due),
        held_back_text(state.held_back) or "-",
    ]


def _limits_text(settings: Mapping[str, Any]) -> str:
    parts = []
    if settings.get("concurrency") is not None:
        parts.append(f"concurrency {settings['concurrency']}")
    if settings.get("key_concurrency") is not None:
        parts.append(f"key concurrency {settings['key_concurrency']}")
    if settings.get("rate") is not None:
        n, window = settings["rate"]
        parts.append(f"rate {n} per {window:g}s")
    return ", ".join(parts)


def _positive(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number >= 1, got {text!r}")
        return int(text)

    return parse


def _rate_of(duration: Callable[[str], float]) -> Callable[[str], tuple[int, float]]:
    def parse(text: str) -> tuple[int, float]:
        match = _RATE.fullmatch(text)
        if match is None or int(match[1]) < 1:
            raise argparse.ArgumentTypeError(
                f"--rate {text!r}: write N/WINDOW, at most N starts in any WINDOW, "
                "e.g. 100/60s, 10/1m, 5/s"
            )
        window = match[2].strip()
        seconds = duration(window if window[0].isdigit() else f"1{window}")
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"--rate {text!r}: the window must be > 0")
        return int(match[1]), seconds

    return parse


_rate = _rate_of(parse_duration)
