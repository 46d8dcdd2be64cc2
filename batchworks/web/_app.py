"""The dashboard's routes: pages that read through the backend's public calls, and the POST
actions (retry, cancel one or all matching a filter, run a schedule now), each checked for
access and CSRF and logged with who did it.

Every value a page shows comes from jobs (payloads, results, error texts are the producers'
and the handlers') and is rendered by Jinja2 with autoescaping, as text; the pages carry a
Content-Security-Policy that runs no inline script either way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from batchworks._checks import check_before, check_filters, check_queue
from batchworks._text import age
from batchworks.backends.base import Backend, JobFilter, JobSummary
from batchworks.errors import BackendError, ConfigurationError
from batchworks.job import JobState
from batchworks.schedule import Schedule
from batchworks.web._batches import BatchPages
from batchworks.web._chart import chart
from batchworks.web._security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    Access,
    Authorize,
    Csrf,
    access_of,
    who,
)
from batchworks.why import LIVE_SILENCE, gather, reasons

__all__ = ["create_app"]

logger = logging.getLogger("batchworks.web")

PAGE_SIZE = 50  # jobs a page of the list shows
REFRESH = 10.0  # seconds between the pages' live updates
MAX_FORM_BYTES = 16_384  # a POST body larger than this is refused
_FILTERS = ("queue", "state", "schedule", "error_type")
_FIELDS = (*_FILTERS, "batch")  # the list's filters as query parameters
_DONE = {
    "retried": "Queued again with fresh attempts.",
    "not-retried": "Not queued again: only a failed job can be retried.",
    "cancelled": "Cancelled (a running job: at its worker's next heartbeat).",
    "not-cancelled": "Nothing to cancel: the job is no longer queued or running.",
    "ran": "Enqueued a manual run of the schedule.",
    "paused": "Paused: its ticks are skipped (and counted) until it is resumed.",
    "resumed": "Resumed: it goes on from its next tick after now.",
    "queue-paused": "Queue paused: no new job of it starts; running ones finish.",
    "queue-resumed": "Queue resumed: its jobs start again.",
    "batch-cancelled": "Batch cancelled: its queued members now, running ones at their next "
    "heartbeat; on_complete comes once the last ended.",
}
_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    backend: Backend,
    *,
    authorize: Authorize | None = None,
    secret: bytes | None = None,
    page_size: int = PAGE_SIZE,
    refresh: float = REFRESH,
) -> Starlette:
    """The dashboard as an ASGI app, to mount under any path (``Mount("/ops", app)``) or serve.

    :param backend: an opened backend; the app never opens or closes it.
    :param authorize: ``authorize(request)`` (sync or async) returns ``"operate"`` (may act),
        ``"read"`` (sees everything, acts on nothing) or None (403). Without one every request
        is refused: the dashboard is closed by default. See :class:`PasswordAuth`.
    :param secret: the key signing CSRF tokens; processes serving one dashboard behind a load
        balancer need the same one. Default: a random key for this app.
    :param page_size: jobs per page of the list.
    :param refresh: seconds between live updates of a page (0: none).
    """
    dashboard = _Dashboard(
        backend,
        authorize=authorize if authorize is not None else _closed,
        csrf=Csrf(secret if secret is not None else secrets.token_bytes(32)),
        page_size=page_size,
        refresh=refresh,
    )
    return Starlette(routes=dashboard.routes())


def _closed(request: Request) -> Access | None:
    return None


class _Dashboard(BatchPages):
    def __init__(
        self,
        backend: Backend,
        *,
        authorize: Authorize,
        csrf: Csrf,
        page_size: int,
        refresh: float,
    ) -> None:
        self._backend = backend
        self._authorize = authorize
        self._csrf = csrf
        self._page_size = page_size
        self._refresh = refresh
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("batchworks.web", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._templates.filters["age"] = age
        self._templates.filters["pretty"] = _pretty
        self._templates.filters["path"] = _path

    def routes(self) -> list[Route | Mount]:
        read: Access = "read"
        operate: Access = "operate"

        def post(path: str, handler: Endpoint, name: str) -> Route:
            return Route(path, self._guard(handler, operate), methods=["POST"], name=name)

        return [
            Route("/", self._guard(self.overview, read), name="overview"),
            Route("/jobs", self._guard(self.jobs, read), name="jobs"),
            Route("/jobs/cancel", self._guard(self.confirm_cancel, operate), name="confirm_cancel"),
            post("/jobs/cancel", self.cancel_jobs, "cancel_jobs"),
            Route("/jobs/{job_id:int}", self._guard(self.job, read), name="job"),
            post("/jobs/{job_id:int}/retry", self.retry, "retry_job"),
            post("/jobs/{job_id:int}/cancel", self.cancel, "cancel_job"),
            Route("/workers", self._guard(self.workers, read), name="workers"),
            Route("/schedules", self._guard(self.schedules, read), name="schedules"),
            post("/schedules/{name:str}/run", self.run_schedule, "run_schedule"),
            post("/schedules/{name:str}/pause", self.pause_schedule, "pause_schedule"),
            post("/schedules/{name:str}/resume", self.resume_schedule, "resume_schedule"),
            Route("/batches", self._guard(self.batches, read), name="batches"),
            Route("/batches/{batch_id:int}", self._guard(self.batch, read), name="batch"),
            post("/batches/{batch_id:int}/cancel", self.cancel_batch, "cancel_batch"),
            post("/queues/{name:str}/pause", self.pause_queue, "pause_queue"),
            post("/queues/{name:str}/resume", self.resume_queue, "resume_queue"),
            Mount("/static", StaticFiles(packages=[("batchworks.web", "static")]), name="static"),
        ]

    # -- access and rendering -------------------------------------------------------------------

    def _guard(self, handler: Endpoint, need: Access) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            access = await access_of(self._authorize, request)
            if access is None:
                return self._refused(request)
            request.state.access = access
            if need == "operate" and access != "operate":
                return self._message(request, "Read-only access: this needs operate.", 403)
            if request.method == "POST":
                form = await _form(request)
                problem = self._csrf.check(request, form.get(CSRF_FIELD))
                if form is _TOO_LARGE:
                    problem = "the form is too large"
                if problem is not None:
                    logger.warning(
                        "refused a POST to %s by %s: %s",
                        request.url.path,
                        who(request),
                        problem,
                        extra={"action": "web_refused", "who": who(request)},
                    )
                    return self._message(request, f"Refused: {problem}.", 403)
                request.state.form = form
            try:
                return await handler(request)
            except BackendError as exc:  # SchemaNotMigrated too
                # The database is down, or not migrated: say so (the live poll tries again).
                logger.warning(
                    "dashboard page %s failed: %s",
                    request.url.path,
                    exc,
                    extra={"action": "web_backend_error"},
                )
                return self._message(request, f"The backend did not answer: {exc}", 503)

        return endpoint

    def _refused(self, request: Request) -> Response:
        challenge = getattr(self._authorize, "challenge", None)
        if challenge and "authorization" not in request.headers:
            response = Response("authentication required", 401, media_type="text/plain")
            response.headers["www-authenticate"] = str(challenge)
        else:
            response = Response("forbidden", 403, media_type="text/plain")
        response.headers.update(_HEADERS)
        return response

    def _render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        token = self._csrf.token_of(request) or self._csrf.new()
        done = request.query_params.get("done")
        html = self._templates.get_template(name).render(
            request=request,
            operate=getattr(request.state, "access", None) == "operate",
            csrf=token,
            csrf_field=CSRF_FIELD,
            refresh=self._refresh,
            done=_DONE.get(done or ""),
            **context,
        )
        response = HTMLResponse(html, status)
        response.headers.update(_HEADERS)
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(
                CSRF_COOKIE,
                token,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path=request.scope.get("root_path") or "/",
            )
        return response

    def _message(self, request: Request, text: str, status: int) -> Response:
        return self._render(request, "message.html", status, message=text)

    def _redirect(self, request: Request, name: str, done: str, **params: Any) -> Response:
        url = request.url_for(name, **params).include_query_params(done=done)
        return RedirectResponse(_path(url), status_code=303)

    def _log(self, request: Request, action: str, text: str, **extra: Any) -> None:
        user = who(request)
        logger.info("%s by %s", text, user, extra={"action": f"web_{action}", "who": user, **extra})

    # -- pages ----------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        # Estimated, as a large history makes exact counts of finished jobs a scan of it all
        # at every live update; the live states stay exact.
        queues = await self._backend.overview(estimate=True)
        seen = await self._backend.throughput(window=3600.0, buckets=60)
        workers = await self._backend.workers()
        flow = {state.name: state for state in await self._backend.queues()}
        names = sorted(set(queues) | set(seen.queues) | set(flow))
        charts = {}
        for name in names:
            counts = seen.queues.get(name)
            if counts is not None:
                charts[name] = chart(counts["succeeded"], counts["failed"], bucket=seen.bucket)
        return self._render(
            request,
            "overview.html",
            names=names,
            queues=queues,
            flow=flow,
            charts=charts,
            states=[state.value for state in JobState],
            # a queue the overview lacks (one the sample missed) is estimated at 0 in these
            estimated=frozenset().union(*(queue.estimated for queue in queues.values())),
            workers=workers,
            live_silence=LIVE_SILENCE,
        )

    async def jobs(self, request: Request) -> Response:
        params = request.query_params
        chosen = {name: params.get(name) or None for name in _FIELDS}
        records: list[JobSummary] = []
        error = None
        more = False
        try:
            where = _checked_filter(params)
            before = check_before(_int(params.get("before"), "before"))
            job_id = _int(params.get("id"), "id")
            if job_id is not None:
                found = await self._backend.get_job(job_id)
                records = [JobSummary.of(found)] if found is not None else []
            else:
                records = await self._backend.list_job_summaries(
                    where, before=before, limit=self._page_size + 1
                )
                more = len(records) > self._page_size
                records = records[: self._page_size]
        except ConfigurationError as exc:
            error = str(exc)
        filtered = {name: value for name, value in chosen.items() if value}
        base = request.url_for("jobs").include_query_params(**filtered)
        return self._render(
            request,
            "jobs.html",
            400 if error else 200,
            records=records,
            chosen=chosen,
            job_id=params.get("id") or "",
            error=error,
            states=[state.value for state in JobState],
            next_url=_path(base.include_query_params(before=records[-1].id)) if more else None,
            first_url=_path(base) if params.get("before") else None,
            cancel_url=_path(request.url_for("confirm_cancel").include_query_params(**filtered)),
        )

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        facts = await gather(self._backend, job_id)
        if facts is None:
            return self._message(request, f"No job {job_id}.", 404)
        return self._render(request, "job.html", job=facts.job, reasons=reasons(facts))

    async def workers(self, request: Request) -> Response:
        workers = await self._backend.workers()
        return self._render(request, "workers.html", workers=workers, live_silence=LIVE_SILENCE)

    async def schedules(self, request: Request) -> Response:
        listing = await self._backend.schedules()
        rows = [(state, json.loads(state.definition)) for state in listing.schedules]
        return self._render(request, "schedules.html", rows=rows, now=listing.now)

    async def confirm_cancel(self, request: Request) -> Response:
        where, error = _filter_of(request.query_params)
        count = 0
        if where is not None:
            # The cancel takes the jobs counted here, not those enqueued before it is confirmed.
            newest = await self._backend.list_job_summaries(where, limit=1)
            where = dataclasses.replace(where, up_to=newest[0].id if newest else 1)
            count = await self._cancellable(where)
        return self._render(
            request,
            "confirm_cancel.html",
            400 if error else 200,
            where=where,
            error=error,
            count=count,
            back=_path(request.url_for("jobs").include_query_params(**_params_of(where))),
        )

    async def _cancellable(self, where: JobFilter) -> int:
        """How many jobs a cancel of ``where`` would take: its queued and running ones."""
        states = [where.state] if where.state else ["queued", "running"]
        total = 0
        for state in states:
            if state in ("queued", "running"):
                total += await self._backend.count_jobs(dataclasses.replace(where, state=state))
        return total

    # -- actions --------------------------------------------------------------------------------

    async def retry(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        count = await self._backend.retry_failed(ids=[job_id])
        self._log(request, "retry", f"job {job_id}: retried {count}", job_id=job_id)
        return self._redirect(request, "job", "retried" if count else "not-retried", job_id=job_id)

    async def cancel(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        done = await self._backend.cancel(job_id)
        self._log(request, "cancel", f"job {job_id}: cancel {done}", job_id=job_id)
        return self._redirect(
            request, "job", "cancelled" if done else "not-cancelled", job_id=job_id
        )

    async def cancel_jobs(self, request: Request) -> Response:
        form = request.state.form
        where, error = _filter_of(form)
        if where is None:
            return self._message(request, f"Nothing cancelled: {error}", 400)
        count = await self._backend.cancel_jobs(where)
        expected = form.get("expected", "?")
        self._log(
            request,
            "cancel_jobs",
            f"cancelled {count} jobs matching {_params_of(where)} up to id {where.up_to} "
            f"(confirmed {expected})",
            count=count,
        )
        return self._message(
            request, f"Cancelled {count} jobs (the confirmation showed {expected}).", 200
        )

    async def run_schedule(self, request: Request) -> Response:
        name = request.path_params["name"]
        job_id = await self._backend.run_schedule(name)
        if job_id is None:
            return self._message(request, f"No schedule {name!r}.", 404)
        self._log(request, "run_schedule", f"schedule {name!r} run as job {job_id}", job_id=job_id)
        return self._redirect(request, "job", "ran", job_id=job_id)

    async def pause_schedule(self, request: Request) -> Response:
        return await self._set_paused(request, paused=True)

    async def resume_schedule(self, request: Request) -> Response:
        return await self._set_paused(request, paused=False)

    async def _set_paused(self, request: Request, *, paused: bool) -> Response:
        name = request.path_params["name"]
        listing = await self._backend.schedules()
        state = next((s for s in listing.schedules if s.name == name), None)
        if state is None:
            return self._message(request, f"No schedule {name!r}.", 404)
        # A resume goes on from the first tick after now, on the backend's clock (as the CLI's).
        next_tick = Schedule.from_definition(state.name, state.definition).next_after(listing.now)
        await self._backend.pause_schedule(name, paused, next_tick=next_tick)
        done = "paused" if paused else "resumed"
        self._log(request, f"{done[:-1]}_schedule", f"schedule {name!r} {done}")
        return self._redirect(request, "schedules", done)

    async def pause_queue(self, request: Request) -> Response:
        return await self._set_queue_paused(request, paused=True)

    async def resume_queue(self, request: Request) -> Response:
        return await self._set_queue_paused(request, paused=False)

    async def _set_queue_paused(self, request: Request, *, paused: bool) -> Response:
        name = request.path_params["name"]
        try:
            queue = check_queue(name)
        except ConfigurationError as exc:
            return self._message(request, f"Nothing changed: {exc}", 400)
        if paused:
            await self._backend.pause_queue(queue)
        else:
            await self._backend.resume_queue(queue)
        done = "paused" if paused else "resumed"
        self._log(request, f"{done[:-1]}_queue", f"queue {queue!r} {done}", queue=queue)
        return self._redirect(request, "overview", f"queue-{done}")


_TOO_LARGE: dict[str, str] = {}


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form's fields, the last value of each; ``_TOO_LARGE`` past the limit."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return _TOO_LARGE
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[-1] for name, values in fields.items()}


def _int(text: str | None, name: str) -> int | None:
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigurationError(f"{name} must be an id (a whole number), got {text!r}") from None
    if not 1 <= value <= 2**63 - 1:
        raise ConfigurationError(f"{name} must be an id from 1 to 2**63-1, got {text!r}")
    return value


def _checked_filter(values: Any) -> JobFilter:
    """The JobFilter of a query string or form; ConfigurationError if a value is bad."""
    chosen = [values.get(name) or None for name in _FILTERS]
    checked = dict(zip(_FILTERS, check_filters(*chosen), strict=True))
    return JobFilter(
        **checked,
        batch_id=_int(values.get("batch"), "batch"),
        up_to=_int(values.get("up_to"), "up_to"),
    )


def _filter_of(values: Any) -> tuple[JobFilter | None, str | None]:
    """The JobFilter of a query string or form, or None and why not."""
    try:
        return _checked_filter(values), None
    except ConfigurationError as exc:
        return None, str(exc)


def _params_of(where: JobFilter | None) -> dict[str, str]:
    if where is None:
        return {}
    params = {name: value for name in _FILTERS if (value := getattr(where, name))}
    if where.batch_id is not None:
        params["batch"] = str(where.batch_id)
    return params


def _path(url: URL) -> str:
    """``url`` without its scheme and host (``/ops/jobs?queue=q``): links and redirects keep
    working behind a proxy that passes on another Host than the browser's."""
    return url.path + (f"?{url.query}" if url.query else "")


def _pretty(value: Any) -> str:
    """A JSON value as indented text (the template escapes it)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
