"""The operators' dashboard mounted in a FastAPI app of yours, behind your own authorization.

What it shows:

- ``app.mount("/ops", create_app(backend, authorize=authorize))``: the dashboard under a path
  prefix of your app, every link and form following it;
- ``authorize(request)`` deciding who may act (``"operate"``), who may only look (``"read"``)
  and who gets a 403 (None); here from a token header, in your app from its users;
- an action through the dashboard's form: a POST with the CSRF token of its cookie.

Needs the web extra (``pip install 'batchworks[web]'``). Run it from the repository root; it
drives itself through httpx and prints what it got::

    .venv/bin/python examples/dashboard.py

As a real service: ``OPS_TOKEN=... uvicorn examples.dashboard:app``, then open /ops/ with the
header ``X-Ops-Token`` set (a browser extension, or a proxy that adds it). It uses the in-memory
backend unless ``BATCHWORKS_DSN`` is set.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request

from batchworks import Backend, Job, MemoryBackend, PostgresBackend, RetryPolicy, Runner, Terminal
from batchworks.web import create_app

SCHEMA = os.environ.get("BATCHWORKS_SCHEMA", "batchworks_dashboard_example")
OPERATORS = os.environ.get("OPS_TOKEN", "ops-secret")
VIEWERS = os.environ.get("VIEW_TOKEN", "view-secret")


def authorize(request: Request) -> str | None:
    token = request.headers.get("x-ops-token", "")
    if hmac.compare_digest(token, OPERATORS):
        return "operate"
    if hmac.compare_digest(token, VIEWERS):
        return "read"
    return None  # 403


async def send(job: Job) -> dict[str, bool]:
    if "@" not in job.payload["to"]:
        raise Terminal(f"not an address: {job.payload['to']!r}")
    return {"sent": True}


backend: Backend = (
    PostgresBackend(os.environ["BATCHWORKS_DSN"], schema=SCHEMA)
    if os.environ.get("BATCHWORKS_DSN")
    else MemoryBackend()
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with backend:
        await backend.migrate()
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/ops", create_app(backend, authorize=authorize))


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://service") as client,
    ):
        ids = await backend.enqueue_many("emails", [{"to": "ada@example.com"}, {"to": "bob"}])
        await Runner(backend, {"emails": send}, retry=RetryPolicy(max_attempts=1)).run_until_empty()

        stranger = await client.get("/ops/")
        print(f"GET /ops/ without a token: {stranger.status_code}")
        client.headers["x-ops-token"] = VIEWERS
        failed = await client.get("/ops/jobs", params={"state": "failed"})
        listed = re.findall(r'data-job="(\d+)"', failed.text)
        print(f"GET /ops/jobs?state=failed as a viewer: {failed.status_code}, jobs {listed}")
        token = client.cookies["batchworks_csrf"]  # the form's hidden field repeats it
        refused = await client.post(f"/ops/jobs/{ids[1]}/retry", data={"csrf": token})
        print(f"POST retry as a viewer: {refused.status_code}")
        client.headers["x-ops-token"] = OPERATORS
        retried = await client.post(f"/ops/jobs/{ids[1]}/retry", data={"csrf": token})
        print(f"POST retry as an operator: {retried.status_code} -> {retried.headers['location']}")
        record = await backend.get_job(ids[1])
        assert record is not None
        print(f"job {ids[1]} is {record.state.value} again, attempts {record.attempts}")


if __name__ == "__main__":
    asyncio.run(main())
