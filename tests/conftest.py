"""Fixtures shared by every test directory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from batchworks import MemoryBackend
from batchworks.backends.base import Backend


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    """A fresh, migrated backend. Contract tests take this fixture so they run on every
    backend; the PostgreSQL tests add their own parameter."""
    async with MemoryBackend() as memory:
        await memory.migrate()
        yield memory


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool],
    *,
    within: float = 5.0,
    what: str,
) -> None:
    """Await ``condition`` becoming true, checking every few milliseconds, for at most
    ``within`` seconds; fail with ``what`` in the message otherwise."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)
