"""The dashboard's batch pages (#16): the newest batches with their progress, one batch
(its counts, its failures grouped by error, its callbacks' jobs, links to its members) and
the action that cancels it. A mixin of the dashboard's routes, kept apart so that _app.py
does not grow."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from batchworks.backends.base import Backend
from batchworks.batch import BatchRecord
from batchworks.errors import BatchNotFound
from batchworks.web._chart import PROGRESS_WIDTH, Segment, progress

__all__ = ["BatchPages", "bar_of"]

BATCHES_SHOWN = 50  # the newest batches the batches page lists
FAILURE_GROUPS = 20  # the largest groups of failures a batch's page shows


def bar_of(batch: BatchRecord) -> tuple[Segment, ...]:
    """The progress bar of ``batch``: its members by state."""
    counts = {
        "succeeded": batch.succeeded,
        "failed": batch.failed,
        "cancelled": batch.cancelled,
        "running": batch.running,
    }
    return progress(counts, batch.total)


class BatchPages:
    """The batch pages of the dashboard (``_Dashboard``'s)."""

    _backend: Backend

    def _render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        raise NotImplementedError  # the dashboard's

    def _message(self, request: Request, text: str, status: int) -> Response:
        raise NotImplementedError  # the dashboard's

    def _redirect(self, request: Request, name: str, done: str, **params: Any) -> Response:
        raise NotImplementedError  # the dashboard's

    def _log(self, request: Request, action: str, text: str, **extra: Any) -> None:
        raise NotImplementedError  # the dashboard's

    async def batches(self, request: Request) -> Response:
        listing = await self._backend.batches(limit=BATCHES_SHOWN)
        return self._render(
            request,
            "batches.html",
            rows=[(batch, bar_of(batch)) for batch in listing],
            bar_width=PROGRESS_WIDTH,
        )

    async def batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        batch = await self._backend.get_batch(batch_id)
        if batch is None:
            return self._message(request, f"No batch {batch_id}.", 404)
        failures = await self._backend.batch_failures(batch_id, limit=FAILURE_GROUPS)
        return self._render(
            request,
            "batch.html",
            batch=batch,
            bar=bar_of(batch),
            bar_width=PROGRESS_WIDTH,
            failures=failures,
        )

    async def cancel_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        try:
            batch = await self._backend.cancel_batch(batch_id)
        except BatchNotFound:
            return self._message(request, f"No batch {batch_id}.", 404)
        self._log(
            request,
            "cancel_batch",
            f"batch {batch_id} cancelled ({batch.pending} members pending)",
            batch_id=batch_id,
        )
        return self._redirect(request, "batch", "batch-cancelled", batch_id=batch_id)
