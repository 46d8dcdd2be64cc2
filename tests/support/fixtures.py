"""Fixtures of the chaos and bad-input suites: a ledger per test, a fleet of worker processes,
and the figures printed at the end of the session.

Each suite's conftest imports them; a suite changes what its workers run by overriding
``fleet_defaults`` (the bad-input suite runs echo workers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from batchworks import PostgresBackend
from tests.support.harness import Fleet, print_figures
from tests.support.ledger import Ledger


@pytest.fixture
async def ledger(pg_backend: PostgresBackend, pg_dsn: str) -> AsyncIterator[Ledger]:
    """The effects and faults tables of this test's (migrated) schema."""
    book = await Ledger.create(pg_dsn, pg_backend.schema)
    yield book
    await book.close()


@pytest.fixture
def fleet_defaults() -> dict[str, Any]:
    """Settings every worker of ``fleet`` starts with (a suite's conftest may override it)."""
    return {}


@pytest.fixture
async def fleet(
    pg_dsn: str, ledger: Ledger, tmp_path: Path, fleet_defaults: dict[str, Any]
) -> AsyncIterator[Fleet]:
    """Worker processes on this test's schema; whatever is left is killed at teardown."""
    workers = Fleet(pg_dsn, ledger.schema, tmp_path, ledger)
    workers.defaults = fleet_defaults
    yield workers
    await workers.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Both suites' conftests hold this hook; print_figures prints the session's figures once.
    print_figures(terminalreporter)
