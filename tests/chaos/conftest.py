"""Fixtures of the chaos suite: those of :mod:`tests.support.fixtures`, as they are."""

from __future__ import annotations

from tests.support.fixtures import fleet, fleet_defaults, ledger, pytest_terminal_summary

__all__ = ["fleet", "fleet_defaults", "ledger", "pytest_terminal_summary"]
