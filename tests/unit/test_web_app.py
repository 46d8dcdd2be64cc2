"""The dashboard's access and CSRF rules, through httpx's ASGI transport on the memory backend
(the pages themselves are tested in a real browser: tests/web)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from batchworks import BackendError, JobState, MemoryBackend
from batchworks.web import PasswordAuth, create_app
from batchworks.web._security import CSRF_COOKIE, Csrf


def client(app: Any, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", **options)


class TestAccess:
    async def test_closed_by_default(self, memory_backend: MemoryBackend) -> None:
        async with client(create_app(memory_backend)) as http:
            for path in ("/", "/jobs", "/workers", "/schedules"):
                assert (await http.get(path)).status_code == 403, path

    async def test_an_async_authorize_decides_and_anything_but_the_two_levels_is_refused(
        self, memory_backend: MemoryBackend
    ) -> None:
        async def authorize(request: Request) -> Any:
            return {"a": "operate", "r": "read", "x": "admin"}.get(request.headers.get("x-who", ""))

        app = Starlette(routes=[Mount("/ops", create_app(memory_backend, authorize=authorize))])
        async with client(app) as http:
            first = await http.get("/ops/", headers={"x-who": "a"})
            assert first.status_code == 200
            cookie = first.headers["set-cookie"]
            assert cookie.startswith(f"{CSRF_COOKIE}=")
            assert {"HttpOnly", "Path=/ops", "SameSite=strict"} <= set(cookie.split("; "))
            assert (await http.get("/ops/", headers={"x-who": "r"})).status_code == 200
            assert (await http.get("/ops/", headers={"x-who": "x"})).status_code == 403
            assert (await http.get("/ops/jobs/cancel", headers={"x-who": "r"})).status_code == 403
            page = await http.get("/ops/", headers={"x-who": "a"})
            assert 'href="/ops/jobs"' in page.text  # links carry the mount's prefix, no host
            assert 'href="http' not in page.text and 'action="http' not in page.text

    def test_password_auth_refuses_empty_or_equal_passwords(self) -> None:
        with pytest.raises(ValueError, match="non-empty operate password"):
            PasswordAuth("")
        with pytest.raises(ValueError, match="differ from the operate one"):
            PasswordAuth("same", "same")


class TestBackendErrors:
    async def test_a_backend_that_does_not_answer_is_a_503_saying_so(self) -> None:
        class Down(MemoryBackend):
            async def overview(self, **_: Any) -> Any:
                raise BackendError("PostgreSQL: ConnectionRefusedError: [Errno 111]")

        app = create_app(Down(), authorize=lambda request: "read")
        async with client(app) as http:
            page = await http.get("/")
        assert page.status_code == 503
        assert "The backend did not answer: PostgreSQL: ConnectionRefusedError" in page.text


class TestOverview:
    async def test_the_page_asks_for_estimates_and_marks_the_estimated_counts(self) -> None:
        asked: list[bool] = []

        class Sampling(MemoryBackend):
            async def overview(self, *, estimate: bool = False) -> Any:
                asked.append(estimate)
                exact = await super().overview()
                return {
                    name: replace(
                        queue, estimated=frozenset({"succeeded"}) if name == "big" else frozenset()
                    )
                    for name, queue in exact.items()
                }

        backend = Sampling()
        await backend.enqueue_many("big", [1, 2])
        await backend.enqueue("small", 3)
        async with client(create_app(backend, authorize=lambda request: "read")) as http:
            page = await http.get("/")
        assert page.status_code == 200
        assert asked == [True]
        rows = {
            name: page.text.split(f'<tr data-queue="{name}">')[1].split("</tr>")[0]
            for name in ("big", "small")
        }
        assert rows["big"].count('class="estimate"') == 1
        assert 'class="estimate"' not in rows["small"]


class TestActions:
    async def test_a_post_needs_the_cookies_token_and_is_logged_with_who(
        self, memory_backend: MemoryBackend, caplog: pytest.LogCaptureFixture
    ) -> None:
        job_id = await memory_backend.enqueue("q", {"n": 1})
        app = create_app(memory_backend, authorize=PasswordAuth("op"))
        async with client(app, auth=("ada", "op")) as http:
            await http.get(f"/jobs/{job_id}")
            token = http.cookies[CSRF_COOKIE]
            forged = Csrf(b"another key").new()
            for field in ("", "wrong", forged):
                refused = await http.post(f"/jobs/{job_id}/cancel", data={"csrf": field})
                assert refused.status_code == 403, field
            too_large = await http.post(
                f"/jobs/{job_id}/cancel", data={"csrf": token, "pad": "x" * 20_000}
            )
            assert too_large.status_code == 403
            assert "too large" in too_large.text
            cross = await http.post(
                f"/jobs/{job_id}/cancel",
                data={"csrf": token},
                headers={"sec-fetch-site": "cross-site"},
            )
            assert cross.status_code == 403
            record = await memory_backend.get_job(job_id)
            assert record is not None and record.state is JobState.QUEUED

            with caplog.at_level(logging.INFO, logger="batchworks.web"):
                done = await http.post(f"/jobs/{job_id}/cancel", data={"csrf": token})
            assert done.status_code == 303
            assert done.headers["location"] == f"/jobs/{job_id}?done=cancelled"
        record = await memory_backend.get_job(job_id)
        assert record is not None and record.state is JobState.CANCELLED
        [entry] = [r for r in caplog.records if getattr(r, "action", "") == "web_cancel"]
        assert entry.who == "ada"  # type: ignore[attr-defined]
        assert entry.getMessage() == f"job {job_id}: cancel True by ada"
