"""A FastAPI service that runs its jobs in the background and answers with their results.

What it shows:

- the lifespan that a FastAPI (or Starlette) app needs, five lines: open the backend, migrate,
  and ``async with Runner(...)`` around the ``yield``, so the runner starts with the app and
  stops gracefully with it (running jobs finish, unstarted ones go back to the queue);
- an endpoint that enqueues a job and awaits its outcome with ``backend.wait_job(job_id,
  timeout=...)``, woken when the job ends (PostgreSQL: by a NOTIFY), not by polling;
- ``GET /healthz`` answering from ``runner.healthy``, for a liveness probe;
- a handler typed by its payload, ``Job[Quote]``.

Run it from the repository root; it drives itself through httpx (``httpx.ASGITransport``,
with the app's lifespan run around it) and prints what it got::

    .venv/bin/python examples/fastapi_service.py

As a real service: ``uvicorn examples.fastapi_service:app``. It uses the in-memory backend
unless ``BATCHWORKS_DSN`` is set.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

import httpx
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

from batchworks import Backend, Job, JobState, MemoryBackend, PostgresBackend, Runner

SCHEMA = os.environ.get("BATCHWORKS_SCHEMA", "batchworks_fastapi_example")


class Quote(TypedDict):
    """A job's payload, as the handler sees it."""

    items: list[float]
    tax_rate: float


class QuoteRequest(BaseModel):
    """The request body, as FastAPI checks it."""

    items: list[float]
    tax_rate: float


async def price_quote(job: Job[Quote]) -> dict[str, Any]:
    await asyncio.sleep(0.01)  # the pricing service's API call
    net = sum(job.payload["items"])
    return {"net": round(net, 2), "gross": round(net * (1 + job.payload["tax_rate"]), 2)}


def make_backend() -> Backend:
    dsn = os.environ.get("BATCHWORKS_DSN")
    return PostgresBackend(dsn, schema=SCHEMA) if dsn else MemoryBackend()


backend = make_backend()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with backend:
        await backend.migrate()
        async with Runner(backend, {"quotes": price_quote}) as runner:
            app.state.runner = runner
            yield


app = FastAPI(lifespan=lifespan)


@app.post("/quotes")
async def create_quote(quote: QuoteRequest, response: Response) -> dict[str, Any]:
    job_id = await backend.enqueue("quotes", quote.model_dump())
    try:
        record = await backend.wait_job(job_id, timeout=10)
    except TimeoutError:
        response.status_code = 202  # still queued or running: it goes on; ask again later
        return {"job": job_id}
    if record.state is not JobState.SUCCEEDED:
        raise HTTPException(status_code=502, detail=f"job {job_id} ended {record.state}")
    return {"job": job_id, **record.result}


@app.get("/healthz")
async def healthz(request: Request, response: Response) -> dict[str, bool]:
    healthy = request.app.state.runner.healthy
    response.status_code = 200 if healthy else 503
    return {"healthy": healthy}


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://service") as client,
    ):
        health = await client.get("/healthz")
        print(f"GET /healthz: {health.status_code} {health.json()}")
        quotes = [{"items": [10.0, 5.5], "tax_rate": 0.2}, {"items": [99.99], "tax_rate": 0.07}]
        answers = await asyncio.gather(*(client.post("/quotes", json=q) for q in quotes))
        for answer in answers:
            body = answer.json()
            print(f"POST /quotes: {answer.status_code} net {body['net']} gross {body['gross']}")
        runner = app.state.runner
    print(f"after shutdown: healthy={runner.healthy}, succeeded {runner.report.succeeded}")


if __name__ == "__main__":
    asyncio.run(main())
