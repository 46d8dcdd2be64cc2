"""What the browser tests (tests/web) and tools/screenshots.py share: a dashboard served by a
real uvicorn in a thread of its own, mounted under a path prefix in a parent Starlette app, on
a real PostgreSQL schema seeded with jobs in every state; and a Chromium launched the way this
machine (and CI) can run it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from batchworks import (
    Callback,
    Job,
    PostgresBackend,
    RetryPolicy,
    Runner,
    Schedule,
    Terminal,
)
from batchworks.web import PasswordAuth, create_app

T = TypeVar("T")

PREFIX = "/ops"  # where the parent app mounts the dashboard
OPERATE = ("ada", "operate-pass")  # (user, password) of an operator
READ = ("bob", "read-pass")  # of a read-only user
PAGE_SIZE = 10  # small pages, so that 60 jobs make several
CHROMIUM = os.environ.get("BATCHWORKS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Payloads, results and error texts that would run script if a page rendered them as HTML:
#: each sets window.__xss, which the tests read.
XSS_SCRIPT = "<script>window.__xss = 'script'</script>"
XSS_IMG = '"><img src=x onerror="window.__xss = \'img\'">'


def chromium_missing() -> str | None:
    """Why no Chromium can be launched here, or None."""
    if shutil.which(CHROMIUM) is None and not os.path.exists(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; or set BATCHWORKS_CHROMIUM)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (the dev extra has it)"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """One headless Chromium (Playwright's sync API), closed after. Playwright gives each
    launch a fresh temporary profile (its --user-data-dir) and each ``new_context()`` its own
    cookies and credentials."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Seeded:
    """The ids of the seeded jobs, by what they show."""

    succeeded: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    running: int = 0
    queued: list[int] = field(default_factory=list)
    later: int = 0
    cancelled: int = 0
    xss: int = 0
    schedule: str = "nightly-report"
    #: a finished batch (6 of 8 members succeeded, 2 failed alike) and its members
    batch: int = 0
    batch_jobs: list[int] = field(default_factory=list)
    #: a batch whose 3 members are queued, no worker serving their queue
    open_batch: int = 0


async def _handler(job: Job) -> Any:
    kind = job.payload.get("kind")
    if kind == "fail":
        raise Terminal(f"mailbox {job.payload.get('to')} does not exist")
    if kind == "xss":
        raise ValueError(f"bad address {XSS_IMG} {XSS_SCRIPT}")
    if kind == "boom":
        raise KeyError("template")
    return {"sent": True, "note": XSS_SCRIPT if kind == "xss-result" else "ok"}


async def seed(backend: PostgresBackend) -> Seeded:
    """Jobs in every state, in three queues, as workers would leave them."""
    seeded = Seeded()
    kinds = ["ok"] * 40 + ["fail"] * 12 + ["boom"] * 6 + ["xss-result"] * 2
    payloads = [{"kind": kind, "to": f"user{i}@example.com"} for i, kind in enumerate(kinds)]
    done = await backend.enqueue_many("emails", payloads)
    seeded.xss = await backend.enqueue("emails", {"kind": "xss", "to": XSS_IMG, "note": XSS_SCRIPT})
    runner = Runner(
        backend,
        {"emails": _handler},
        retry=RetryPolicy(max_attempts=1),
        worker_name="emails-1",
        concurrency=20,
    )
    await runner.run_until_empty()
    for job_id in [*done, seeded.xss]:
        record = await backend.get_job(job_id)
        assert record is not None
        (seeded.succeeded if record.state.value == "succeeded" else seeded.failed).append(job_id)
    seeded.failed.remove(seeded.xss)

    # Flow control (#14) on the reports queue: the overview shows its limits and their use.
    await backend.configure_queue("reports", concurrency=2, key_concurrency=1, rate=(30, 60.0))
    seeded.queued = await backend.enqueue_many(
        "reports", [{"report": f"r{i}"} for i in range(5)], priority=1
    )
    seeded.later = await backend.enqueue("reports", {"report": "tomorrow"}, delay=86400)
    seeded.cancelled = await backend.enqueue("reports", {"report": "unwanted"})
    await backend.cancel(seeded.cancelled)
    worker = await backend.register_worker("reports-1", ["reports"])
    [running] = await backend.claim(worker, ["reports"], 1, lease=3600, max_attempts=3)
    seeded.running = running.id
    seeded.queued.remove(running.id)
    await backend.save_checkpoint(worker, running.id, {"offset": 4000}, lease=3600)
    await backend.enqueue("thumbnails", {"image": "cat.png"})  # a queue no worker serves

    # Batches (#16): one run to the end with its on_complete callback, one left waiting.
    exports = await backend.enqueue_batch(
        "exports",
        [{"kind": "fail" if i < 2 else "ok", "to": "nobody@example.com"} for i in range(8)],
        name="nightly-export",
        on_complete=Callback("exports", {"report": "exports done"}),
    )
    seeded.batch, seeded.batch_jobs = exports.id, exports.job_ids
    await Runner(
        backend,
        {"exports": _handler},
        retry=RetryPolicy(max_attempts=1),
        worker_name="exports-1",
        concurrency=8,
    ).run_until_empty()
    waiting = await backend.enqueue_batch("imports", [{"file": f"f{i}.csv"} for i in range(3)])
    seeded.open_batch = waiting.id

    nightly = Schedule(seeded.schedule, "30 2 * * *", "reports", {"report": "daily"})
    await backend.put_schedule(
        nightly.name, nightly.definition(), next_tick=nightly.next_after(datetime.now(UTC))
    )
    return seeded


class DashboardServer:
    """The dashboard under :data:`PREFIX` of a parent Starlette app, served by uvicorn on a
    free loopback port from a thread with its own event loop, on schema ``schema``."""

    def __init__(
        self, dsn: str, schema: str, *, refresh: float = 0.0, drop_schema: bool = False
    ) -> None:
        self.dsn, self.schema, self.refresh = dsn, schema, refresh
        self.drop_schema = drop_schema
        # Bound and listening before uvicorn starts: a browser may connect at once (the
        # backlog holds it until uvicorn accepts), and no other process can take the port.
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}{PREFIX}"
        self.seeded = Seeded()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._server: uvicorn.Server | None = None
        self.backend: PostgresBackend | None = None
        self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    def __enter__(self) -> DashboardServer:
        self._thread.start()
        if not self._ready.wait(120) or self._failed is not None:
            raise RuntimeError(f"the dashboard did not start: {self._failed!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(setattr, self._server, "should_exit", True)
        self._thread.join(30)
        self._socket.close()
        assert not self._thread.is_alive(), "the dashboard's thread did not stop within 30 s"

    def call(self, make: Callable[[PostgresBackend], Awaitable[T]]) -> T:
        """Run ``make(backend)`` on the server's loop and return its result (within 30 s)."""
        assert self.backend is not None
        backend = self.backend

        async def run() -> T:
            return await make(backend)

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        async with PostgresBackend(self.dsn, schema=self.schema) as backend:
            await backend.migrate()
            self.backend = backend
            self.seeded = await seed(backend)
            dashboard = create_app(
                backend,
                authorize=PasswordAuth(OPERATE[1], READ[1]),
                page_size=PAGE_SIZE,
                refresh=self.refresh,
            )
            parent = Starlette(
                routes=[
                    Route("/", lambda request: PlainTextResponse("the host app")),
                    Mount(PREFIX, app=dashboard),
                ]
            )
            config = uvicorn.Config(parent, log_level="warning", lifespan="off")
            self._server = uvicorn.Server(config)
            serving = asyncio.create_task(self._server.serve(sockets=[self._socket]))
            self._ready.set()
            try:
                await serving
            finally:
                if self.drop_schema:
                    await backend.aclose()
                    conn = await asyncpg.connect(self.dsn)
                    try:
                        await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
                    finally:
                        await conn.close()
