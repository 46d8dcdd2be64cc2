"""Fixtures of the browser tests: one Chromium and one dashboard server for the package (on
a schema of its own, dropped at the end), and a fresh browser context per test.

Without Chromium or Playwright these tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.web.support import OPERATE, READ, DashboardServer, chromium, chromium_missing


# Package scope: Playwright's sync API keeps its event loop set as the running one of this
# thread while a browser is open, which asyncio.run() and async tests elsewhere would trip
# on; the browser closes when the tests of this package are done.
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    missing = chromium_missing()
    if missing is not None:
        if IN_CI:
            pytest.fail(f"{missing} (CI=true: the browser tests must not be skipped)")
        pytest.skip(missing)
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="package")
def dashboard(pg_dsn: str) -> Iterator[DashboardServer]:
    """The dashboard on a schema of its own, which it drops when it stops."""
    schema = f"t_web_{uuid.uuid4().hex[:12]}"
    with DashboardServer(pg_dsn, schema, refresh=1.0, drop_schema=True) as server:
        yield server


def _page(browser: Any, credentials: tuple[str, str] | None) -> Iterator[Any]:
    options = {} if credentials is None else {"http_credentials": dict(
        zip(("username", "password"), credentials, strict=True)
    )}  # fmt: skip
    context = browser.new_context(**options)
    context.set_default_timeout(15_000)  # ms: a net against a hang, not a measure
    page = context.new_page()
    page.errors = []  # uncaught script errors of the page, which a test asserts are none
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def operator(browser: Any, dashboard: DashboardServer) -> Iterator[Any]:
    """A page of an operator (may act)."""
    yield from _page(browser, OPERATE)


@pytest.fixture
def reader(browser: Any, dashboard: DashboardServer) -> Iterator[Any]:
    """A page of a read-only user."""
    yield from _page(browser, READ)


@pytest.fixture
def stranger(browser: Any, dashboard: DashboardServer) -> Iterator[Any]:
    """A page with no credentials at all."""
    yield from _page(browser, None)
