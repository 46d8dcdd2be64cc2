"""Fixtures of the chaos suite: a ledger per scenario, a fleet of worker processes, and the
figures printed at the end of the session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from batchworks import PostgresBackend
from tests.chaos.harness import Fleet, print_figures
from tests.chaos.ledger import Ledger


@pytest.fixture
async def ledger(pg_backend: PostgresBackend, pg_dsn: str) -> AsyncIterator[Ledger]:
    """The effects and faults tables of this test's (migrated) schema."""
    book = await Ledger.create(pg_dsn, pg_backend.schema)
    yield book
    await book.close()


@pytest.fixture
async def fleet(pg_dsn: str, ledger: Ledger, tmp_path: Path) -> AsyncIterator[Fleet]:
    """Worker processes on this test's schema; whatever is left is killed at teardown."""
    workers = Fleet(pg_dsn, ledger.schema, tmp_path, ledger)
    yield workers
    await workers.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    print_figures(terminalreporter)
