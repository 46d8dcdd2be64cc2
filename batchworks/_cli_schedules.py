"""The ``batchworks schedules`` commands: list the periodic jobs, and run, pause, resume or
remove one."""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Sequence
from datetime import datetime

from batchworks._cli_common import EXIT_OK, Command, UsageError, open_backend, table, when
from batchworks.backends.base import Backend
from batchworks.schedule import Schedule

__all__ = ["add"]


def add(command: Command) -> None:
    """Add ``schedules`` and its subcommands."""
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


async def _schedules_list(args: argparse.Namespace) -> int:
    async with open_backend(args) as backend:
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
    lines = [["name", "cron", "timezone", "queue", "missed", "next tick", "last tick", "skipped"]]
    for row in rows:
        lines.append(
            [
                str(row["name"]) + (" (paused)" if row["paused"] else ""),
                str(row["cron"]),
                str(row["timezone"]),
                str(row["queue"]),
                str(row["missed"]),
                when(datetime.fromisoformat(str(row["next_tick"]))),
                "-" if row["last_tick"] is None else when(datetime.fromisoformat(row["last_tick"])),
                str(row["skipped"]),
            ]
        )
    print(table(lines))
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
    async with open_backend(args) as backend:
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
    async with open_backend(args) as backend:
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
        print(f"schedule {args.name!r} resumed: next tick {when(next_tick)}")
    else:
        print(f"schedule {args.name!r} was not paused: next tick {when(state.next_tick)}")
    return EXIT_OK


async def _schedules_remove(args: argparse.Namespace) -> int:
    async with open_backend(args) as backend:
        if not await backend.remove_schedule(args.name):
            raise _unknown_schedule(args.name, await _schedules_known(backend))
    print(
        f"schedule {args.name!r} removed (its jobs stay); a runner whose code still defines "
        "it stores it again when it starts"
    )
    return EXIT_OK
