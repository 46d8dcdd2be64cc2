"""Fixtures of the bad-input suite: those of :mod:`tests.support.fixtures`, with echo workers
(a handler that returns its payload)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.fixtures import fleet, ledger, pytest_terminal_summary

__all__ = ["fleet", "fleet_defaults", "ledger", "pytest_terminal_summary"]


@pytest.fixture
def fleet_defaults() -> dict[str, Any]:
    """Echo workers, polling often: a bad-input run waits on what they stored."""
    return {"echo": True, "runner": {"poll_interval": 0.2}}
