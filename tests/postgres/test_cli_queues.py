"""The flow-control commands of ``batchworks`` (#14) in subprocesses, against the real
PostgreSQL: ``queues``, ``pause``, ``resume``, ``limit`` and the "held back" column of
``stats``."""

from __future__ import annotations

import asyncio
import json

import pytest

from batchworks import PostgresBackend
from tests.postgres.test_cli import Cli, cli, migrated

pytestmark = pytest.mark.postgres
__all__ = ["cli", "migrated"]  # the fixtures, shared with test_cli


async def run(cli: Cli, *args: str) -> str:
    result = await asyncio.to_thread(cli, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_pause_and_resume_are_durable_and_shown(cli: Cli, migrated: PostgresBackend) -> None:
    await migrated.enqueue_many("emails", [1, 2])
    assert "paused" in await run(cli, "pause", "emails")

    [shown] = json.loads(await run(cli, "queues", "--json"))
    assert shown["paused"] and shown["held_back"] == {"paused": 2}
    stats = json.loads(await run(cli, "stats", "--json"))
    assert stats["queues"]["emails"]["held_back"] == {"paused": 2}
    assert "paused: 2" in await run(cli, "stats")
    worker = await migrated.register_worker("w", ["emails"])
    assert await migrated.claim(worker, ["emails"], 5, lease=30, max_attempts=5) == []

    await run(cli, "resume", "emails")
    assert len(await migrated.claim(worker, ["emails"], 5, lease=30, max_attempts=5)) == 2


async def test_limit_sets_keeps_and_clears(cli: Cli, migrated: PostgresBackend) -> None:
    await run(cli, "limit", "crm", "--concurrency", "20", "--rate", "100/60s")
    await run(cli, "limit", "crm", "--key-concurrency", "1")  # the others are kept
    [state] = await migrated.queues()
    assert (state.concurrency, state.key_concurrency, state.rate) == (20, 1, (100, 60.0))
    table = await run(cli, "queues")
    assert "0/20" in table and "0/100 per 60s" in table

    await run(cli, "limit", "crm", "--rate", "5/s")
    [state] = await migrated.queues()
    assert state.rate == (5, 1.0) and state.concurrency == 20

    await run(cli, "limit", "crm", "--clear")
    [state] = await migrated.queues()
    assert not state.controlled


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("limit", "q"), "limit takes --clear, or one or more of"),
        (("limit", "q", "--clear", "--concurrency", "2"), "limit takes --clear, or one or more"),
        (("limit", "q", "--concurrency", "0"), "--concurrency must be a whole number >= 1"),
        (("limit", "q", "--rate", "100"), "write N/WINDOW"),
        (("limit", "q", "--rate", "100/soon"), "is not a duration"),
        (("pause", "bad name"), "queue name 'bad name' is invalid"),
    ],
)
async def test_bad_arguments_say_what_to_change(
    cli: Cli, migrated: PostgresBackend, args: tuple[str, ...], message: str
) -> None:
    result = await asyncio.to_thread(cli, *args)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
