"""The dashboard in a real headless Chromium, against a real PostgreSQL seeded with jobs in
every state (tests/web/support.py), mounted under /ops in a parent Starlette app: each page
loads, filters and pages work, retry and cancel through the UI change the database, untrusted
text stays text, a read-only user can act on nothing, and CSRF refuses a cross-site POST."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest

from batchworks import JobState, PostgresBackend
from batchworks.backends.base import JobFilter, QueueState
from tests.web.support import PAGE_SIZE, PREFIX, XSS_IMG, XSS_SCRIPT, DashboardServer

pytestmark = pytest.mark.postgres


def state_of(dashboard: DashboardServer, job_id: int) -> JobState:
    async def get(backend: PostgresBackend) -> JobState:
        record = await backend.get_job(job_id)
        assert record is not None
        return record.state

    return dashboard.call(get)


async def queues(backend: PostgresBackend) -> list[QueueState]:
    return await backend.queues()


def navigate(page: Any, selector: str) -> None:
    """Click what loads another page (a link, a form's button), and wait until it has loaded:
    only then are its elements the new page's."""
    with page.expect_navigation(wait_until="load"):
        page.click(selector)


def listed_ids(page: Any) -> list[int]:
    return [int(i) for i in page.locator("#job-list tr[data-job]").evaluate_all(
        "rows => rows.map(row => row.dataset.job)"
    )]  # fmt: skip


class TestPages:
    def test_every_page_loads_under_the_prefix(self, operator: Any, dashboard: DashboardServer):
        seeded = dashboard.seeded
        operator.goto(dashboard.url + "/")
        assert operator.title() == "Overview · batchworks"
        queues = operator.locator("#queues tr[data-queue]")
        assert queues.evaluate_all("rows => rows.map(r => r.dataset.queue)") == [
            "emails",
            "exports",
            "imports",
            "reports",
            "thumbnails",
        ]
        emails = operator.locator('tr[data-queue="emails"]')
        assert emails.locator("td.state-succeeded").inner_text() == str(len(seeded.succeeded))
        # the last hour's chart: bars drawn on the server, no script needed
        assert emails.locator("svg.throughput rect.succeeded").count() >= 1
        assert emails.locator("svg.throughput rect.failed").count() >= 1
        assert "reports-1" in operator.locator("#live-workers").inner_text()
        # flow control (#14): the limits of reports and the slots its running job holds
        limits = operator.locator('tr[data-queue="reports"] td.flow')
        assert limits.locator("[data-limit=concurrency]").inner_text() == "1 running / 2 slots"
        assert limits.locator("[data-limit=key_concurrency]").inner_text() == "1 per key"
        assert limits.locator("[data-limit=rate]").inner_text() == "1 / 30 starts per 60 s"
        assert "no limits" in operator.locator('tr[data-queue="thumbnails"] td.flow').inner_text()
        hrefs = operator.locator("a").evaluate_all("links => links.map(a => a.pathname)")
        assert hrefs and all(href.startswith(PREFIX + "/") for href in hrefs), hrefs

        navigate(operator, "header nav >> text=Jobs")
        assert operator.title() == "Jobs · batchworks"
        assert len(listed_ids(operator)) == PAGE_SIZE

        failed = seeded.failed[0]
        operator.goto(f"{dashboard.url}/jobs/{failed}")
        assert operator.locator("#job-state").inner_text() == "failed"
        attempt = operator.locator("details.attempt").first.inner_text()
        assert "Terminal" in attempt or "KeyError" in attempt
        assert "Traceback" in operator.locator("pre.traceback").first.inner_text()
        assert '"to"' in operator.locator("#payload").inner_text()

        operator.goto(f"{dashboard.url}/jobs/{seeded.running}")
        fields = operator.locator("#job-fields").inner_text()
        assert "reports-1" in fields
        assert re.search(r"lease until\s+\d{4}-", fields), fields
        assert '"offset": 4000' in operator.locator("#checkpoint").inner_text()
        assert "running on worker reports-1" in operator.locator("#why").inner_text()

        navigate(operator, "header nav >> text=Workers")
        assert "reports-1" in operator.locator("#workers").inner_text()
        navigate(operator, "header nav >> text=Schedules")
        row = operator.locator('tr[data-schedule="nightly-report"]')
        assert "30 2 * * *" in row.inner_text()
        assert operator.errors == []

    def test_why_a_job_waits_is_on_its_page(self, operator: Any, dashboard: DashboardServer):
        operator.goto(f"{dashboard.url}/jobs/{dashboard.seeded.later}")
        reasons = operator.locator("#why li").evaluate_all(
            "items => items.map(i => i.dataset.reason)"
        )
        assert reasons == ["due_later"]
        operator.goto(f"{dashboard.url}/jobs?queue=thumbnails")
        thumbnail = listed_ids(operator)[0]
        operator.goto(f"{dashboard.url}/jobs/{thumbnail}")
        assert "no live worker serves queue 'thumbnails'" in operator.locator("#why").inner_text()

    def test_pages_update_live(self, operator: Any, dashboard: DashboardServer):
        operator.goto(dashboard.url + "/")
        cell = operator.locator('tr[data-queue="thumbnails"] td.state-queued')
        before = int(cell.inner_text())

        async def more(backend: PostgresBackend) -> None:
            await backend.enqueue("thumbnails", {"image": "dog.png"})

        dashboard.call(more)
        # the page polls every second (refresh=1.0): the new count arrives without a reload
        operator.wait_for_function(
            "n => Number(document.querySelector("
            "'tr[data-queue=\"thumbnails\"] td.state-queued').innerText) === n",
            arg=before + 1,
        )


class TestFiltersAndPaging:
    def test_filter_by_queue_and_state_then_page_on(
        self, operator: Any, dashboard: DashboardServer
    ):
        seeded = dashboard.seeded
        operator.goto(dashboard.url + "/jobs")
        operator.fill("#filters input[name=queue]", "emails")
        operator.select_option("#filters select[name=state]", "succeeded")
        navigate(operator, "#filters button[type=submit]")
        first = listed_ids(operator)
        assert len(first) == PAGE_SIZE
        navigate(operator, "#next-page")
        second = listed_ids(operator)
        seen = first + second
        while operator.locator("#next-page").count():
            navigate(operator, "#next-page")
            seen += listed_ids(operator)
        assert seen == sorted(seeded.succeeded, reverse=True)  # newest first, each once
        assert set(operator.locator("#job-list td.state").all_inner_texts()) == {"succeeded"}
        navigate(operator, "#first-page")
        assert listed_ids(operator) == first

    def test_filter_by_error_type_and_by_id(self, operator: Any, dashboard: DashboardServer):
        operator.goto(dashboard.url + "/jobs")
        operator.fill("#filters input[name=error_type]", "KeyError")
        navigate(operator, "#filters button[type=submit]")
        ids = listed_ids(operator)
        assert len(ids) == 6
        errors = operator.locator("#job-list td.error-text").all_inner_texts()
        assert all(text.startswith("KeyError") for text in errors)
        operator.goto(dashboard.url + "/jobs")
        operator.fill("#filters input[name=id]", str(ids[0]))
        navigate(operator, "#filters button[type=submit]")
        assert listed_ids(operator) == [ids[0]]

    def test_a_bad_filter_says_what_to_change(self, operator: Any, dashboard: DashboardServer):
        response = operator.goto(dashboard.url + "/jobs?queue=no%20spaces")
        assert response.status == 400
        assert "queue name 'no spaces' is invalid" in operator.locator("#error").inner_text()


class TestActions:
    def test_retry_a_failed_job(self, operator: Any, dashboard: DashboardServer):
        job_id = dashboard.seeded.failed[1]
        operator.goto(f"{dashboard.url}/jobs/{job_id}")
        navigate(operator, "#retry")
        assert operator.locator("#done").inner_text() == "Queued again with fresh attempts."
        assert operator.locator("#job-state").inner_text() == "queued"
        assert state_of(dashboard, job_id) is JobState.QUEUED

    def test_cancel_a_queued_job(self, operator: Any, dashboard: DashboardServer):
        job_id = dashboard.seeded.queued[0]
        operator.goto(f"{dashboard.url}/jobs/{job_id}")
        navigate(operator, "#cancel")
        assert operator.locator("#job-state").inner_text() == "cancelled"
        assert state_of(dashboard, job_id) is JobState.CANCELLED

    def test_cancel_all_matching_a_filter_after_seeing_the_count(
        self, operator: Any, dashboard: DashboardServer
    ):
        async def bulk(backend: PostgresBackend) -> list[int]:
            return await backend.enqueue_many("bulk", ["a", "b", "c"])

        async def bulk_one(backend: PostgresBackend) -> list[int]:
            return await backend.enqueue_many("bulk", ["d"])

        ids = dashboard.call(bulk)
        operator.goto(dashboard.url + "/jobs?queue=bulk")
        navigate(operator, "#cancel-matching")
        assert (
            "This cancels 3 queued or running jobs"
            in operator.locator("#cancel-count").inner_text()
        )
        [late] = dashboard.call(bulk_one)  # enqueued while the operator reads the count
        navigate(operator, "#confirm-cancel")
        assert operator.locator("#message").inner_text() == (
            "Cancelled 3 jobs (the confirmation showed 3)."
        )
        assert [state_of(dashboard, job_id) for job_id in ids] == [JobState.CANCELLED] * 3
        assert state_of(dashboard, late) is JobState.QUEUED

    def test_pause_and_resume_a_queue(
        self, operator: Any, dashboard: DashboardServer, caplog: pytest.LogCaptureFixture
    ):
        def paused() -> bool:
            [state] = [q for q in dashboard.call(queues) if q.name == "reports"]
            return state.paused

        caplog.set_level(logging.INFO, logger="batchworks.web")
        row = 'tr[data-queue="reports"]'
        waiting = dashboard.seeded.queued[3]
        operator.goto(dashboard.url + "/")
        assert operator.locator(f"{row} .queue-paused").count() == 0
        navigate(operator, f"{row} button[data-action=pause]")
        assert operator.locator("#done").inner_text().startswith("Queue paused")
        assert operator.locator(f"{row} .queue-paused").inner_text() == "paused"
        assert paused() is True
        operator.goto(f"{dashboard.url}/jobs/{waiting}")
        reasons = operator.locator("#why li").evaluate_all(
            "items => items.map(i => i.dataset.reason)"
        )
        assert "paused" in reasons, reasons

        operator.goto(dashboard.url + "/")
        navigate(operator, f"{row} button[data-action=resume]")
        assert operator.locator("#done").inner_text().startswith("Queue resumed")
        assert operator.locator(f"{row} .queue-paused").count() == 0
        assert operator.locator(f"{row} button[data-action=pause]").count() == 1
        assert paused() is False
        logged = [(r.getMessage(), r.__dict__.get("who")) for r in caplog.records]
        assert ("queue 'reports' paused by ada", "ada") in logged, logged
        assert ("queue 'reports' resumed by ada", "ada") in logged, logged

    def test_run_a_schedule_now(self, operator: Any, dashboard: DashboardServer):
        operator.goto(dashboard.url + "/schedules")
        navigate(operator, 'tr[data-schedule="nightly-report"] button[data-action=run]')
        assert operator.locator("#done").inner_text() == "Enqueued a manual run of the schedule."
        job_id = int(operator.url.rsplit("/", 1)[1].split("?")[0])

        async def record(backend: PostgresBackend) -> tuple[str | None, Any]:
            job = await backend.get_job(job_id)
            assert job is not None
            return job.schedule, job.scheduled_for

        assert dashboard.call(record) == ("nightly-report", None)

    def test_pause_and_resume_a_schedule(self, operator: Any, dashboard: DashboardServer):
        async def paused(backend: PostgresBackend) -> bool:
            listing = await backend.schedules()
            [state] = [s for s in listing.schedules if s.name == "nightly-report"]
            return state.paused

        row = 'tr[data-schedule="nightly-report"]'
        operator.goto(dashboard.url + "/schedules")
        navigate(operator, f"{row} button[data-action=pause]")
        assert operator.locator("#done").inner_text().startswith("Paused")
        assert "paused" in operator.locator(row).inner_text()
        assert dashboard.call(paused) is True
        navigate(operator, f"{row} button[data-action=resume]")
        assert operator.locator("#done").inner_text().startswith("Resumed")
        assert dashboard.call(paused) is False


class TestUntrustedText:
    def test_script_and_onerror_payloads_render_as_text(
        self, operator: Any, dashboard: DashboardServer
    ):
        dialogs: list[str] = []
        operator.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        seeded = dashboard.seeded
        xss_result = seeded.succeeded[-1]  # the last two succeeded jobs returned XSS_SCRIPT
        for path in (f"/jobs/{seeded.xss}", f"/jobs/{xss_result}", "/jobs?queue=emails", "/"):
            operator.goto(dashboard.url + path)
            operator.wait_for_load_state("load")  # an <img src=x> would have errored by now
            assert operator.evaluate("typeof window.__xss") == "undefined", path
            assert operator.locator("img").count() == 0, path
            assert operator.locator("main script").count() == 0, path
        assert dialogs == []
        operator.goto(f"{dashboard.url}/jobs/{seeded.xss}")
        payload = operator.locator("#payload").inner_text()
        assert XSS_SCRIPT in payload and XSS_IMG.replace('"', '\\"') in payload
        assert XSS_IMG in operator.locator("details.attempt .error-text").inner_text()
        operator.goto(f"{dashboard.url}/jobs/{xss_result}")
        assert XSS_SCRIPT in operator.locator("#result").inner_text()


class TestAccess:
    def test_no_credentials_no_page(self, stranger: Any, dashboard: DashboardServer):
        # (a navigation would end in ERR_INVALID_AUTH_CREDENTIALS: headless has no login dialog)
        response = stranger.context.request.get(dashboard.url + "/")
        assert response.status == 401
        assert response.headers["www-authenticate"].startswith("Basic")
        wrong = stranger.context.request.get(
            dashboard.url + "/",
            headers={"authorization": "Basic YWRhOndyb25n"},  # ada:wrong
        )
        assert wrong.status == 403

    def test_a_read_only_user_sees_no_action_and_a_forged_post_is_refused(
        self, reader: Any, dashboard: DashboardServer
    ):
        seeded = dashboard.seeded
        failed, queued = seeded.failed[2], seeded.queued[1]
        reader.goto(f"{dashboard.url}/jobs/{failed}")
        assert reader.locator("#access").inner_text() == "read-only"
        assert reader.locator("#retry, #cancel, form[method=post]").count() == 0
        reader.goto(f"{dashboard.url}/jobs/{queued}")
        assert reader.locator("#cancel, form[method=post]").count() == 0
        reader.goto(dashboard.url + "/jobs")
        assert reader.locator("#cancel-matching").count() == 0
        reader.goto(dashboard.url + "/")
        assert reader.locator("button[data-action], form[method=post]").count() == 0
        reader.goto(dashboard.url + "/schedules")
        assert reader.locator("button").count() == 1  # the live toggle only: no "Run now"
        assert reader.goto(dashboard.url + "/jobs/cancel").status == 403

        # A forged POST with everything a browser could send, a valid CSRF token included.
        [cookie] = [c for c in reader.context.cookies() if c["name"] == "batchworks_csrf"]
        forged = (f"/jobs/{failed}/retry", f"/jobs/{queued}/cancel", "/jobs/cancel")
        for path in (*forged, "/queues/reports/pause"):
            response = reader.context.request.post(
                dashboard.url + path, form={"csrf": cookie["value"], "queue": "reports"}
            )
            assert response.status == 403, path
        assert state_of(dashboard, failed) is JobState.FAILED
        assert state_of(dashboard, queued) is JobState.QUEUED
        assert not [q for q in dashboard.call(queues) if q.name == "reports" and q.paused]

    def test_csrf_refuses_a_cross_site_post_and_one_without_the_token(
        self, operator: Any, dashboard: DashboardServer
    ):
        queued = dashboard.seeded.queued[2]
        operator.goto(f"{dashboard.url}/jobs/{queued}")  # the operator is logged in, with a cookie
        target = f"{dashboard.url}/jobs/{queued}/cancel"
        attacker = (
            f'<form id="f" method="post" action="{target}">'
            '<input name="csrf" value="guessed"></form>'
            "<script>document.getElementById('f').submit()</script>"
        )
        operator.route(
            "http://attacker.test/",
            lambda route: route.fulfill(status=200, content_type="text/html", body=attacker),
        )
        with operator.expect_navigation(url=target):
            operator.goto("http://attacker.test/")
        assert operator.locator("#message").inner_text().startswith("Refused:")
        assert state_of(dashboard, queued) is JobState.QUEUED

        # same origin, the cookie sent, the form field missing
        operator.goto(f"{dashboard.url}/jobs/{queued}")
        status = operator.evaluate(
            "url => fetch(url, {method: 'POST', headers: {'content-type': "
            "'application/x-www-form-urlencoded'}, body: 'x=1'}).then(r => r.status)",
            target,
        )
        assert status == 403
        assert state_of(dashboard, queued) is JobState.QUEUED

        async def count(backend: PostgresBackend) -> int:
            return await backend.count_jobs(JobFilter(queue="reports", state="queued"))

        assert dashboard.call(count) >= 1


class TestBatches:
    def test_batches_page_shows_progress_state_and_counts(
        self, operator: Any, dashboard: DashboardServer
    ):
        seeded = dashboard.seeded
        operator.goto(dashboard.url + "/batches")
        assert operator.title() == "Batches · batchworks"
        row = operator.locator(f'tr[data-batch="{seeded.batch}"]')
        assert row.locator("[data-state]").inner_text() == "finished"
        counts = {
            kind: row.locator(f'[data-count="{kind}"]').inner_text()
            for kind in ("succeeded", "failed", "cancelled", "running", "queued")
        }
        assert counts == {"succeeded": "6", "failed": "2", "cancelled": "0", "running": "0",
                          "queued": "0"}  # fmt: skip
        # the bar is drawn on the server: 6 of 8 succeeded, 2 of 8 failed, of 200 units
        widths = row.locator("svg.progress rect[data-kind]").evaluate_all(
            "rects => rects.map(r => [r.dataset.kind, Number(r.getAttribute('width'))])"
        )
        assert widths == [["succeeded", 150.0], ["failed", 50.0]]
        assert row.locator(".percent").inner_text() == "100%"
        waiting = operator.locator(f'tr[data-batch="{seeded.open_batch}"]')
        assert waiting.locator(".percent").inner_text() == "0%"
        assert waiting.locator("svg.progress rect[data-kind]").count() == 0

    def test_batch_page_groups_failures_links_callbacks_and_members(
        self, operator: Any, dashboard: DashboardServer
    ):
        seeded = dashboard.seeded

        async def batch(backend: PostgresBackend) -> Any:
            return await backend.get_batch(seeded.batch)

        record = dashboard.call(batch)
        assert record is not None and record.complete_job is not None
        operator.goto(f"{dashboard.url}/batches/{seeded.batch}")
        assert operator.locator("#batch-state").inner_text() == "finished"
        assert operator.locator('[data-count="failed"] td').inner_text() == "2"
        [group] = operator.locator("#batch-failures tr[data-error]").all()
        assert group.get_attribute("data-error") == "Terminal"
        assert group.locator("td.num").inner_text() == "2"
        assert "nobody@example.com" in group.locator("td.error-text").inner_text()
        callback = operator.locator('tr[data-callback="on_complete"] a')
        assert callback.inner_text() == f"job {record.complete_job}"
        assert operator.locator("#cancel-batch").count() == 0  # finished: nothing to cancel

        navigate(operator, "#members")
        assert sorted(listed_ids(operator)) == sorted(seeded.batch_jobs)
        assert operator.locator("#filters input[name=batch]").input_value() == str(seeded.batch)

        operator.goto(f"{dashboard.url}/jobs/{seeded.batch_jobs[0]}")
        why = operator.locator('#why li[data-reason="batch"]').inner_text()
        batch_name = f"batch {seeded.batch} ('nightly-export')"
        assert why == f"a member of {batch_name}, finished: 8 of 8 members ended"
        navigate(operator, "#job-batch a >> nth=0")
        assert operator.title() == f"Batch {seeded.batch} · batchworks"

    def test_cancel_a_batch_from_its_page(self, operator: Any, dashboard: DashboardServer):
        batch_id = dashboard.seeded.open_batch

        async def batch(backend: PostgresBackend) -> Any:
            record = await backend.get_batch(batch_id)
            assert record is not None
            members = [job.state async for job in backend.batch_results(batch_id)]
            return record.state.value, members

        assert dashboard.call(batch) == ("closed", [JobState.QUEUED] * 3)
        operator.goto(f"{dashboard.url}/batches/{batch_id}")
        navigate(operator, "#cancel-batch")
        assert operator.locator("#done").inner_text().startswith("Batch cancelled")
        assert operator.locator("#batch-state").inner_text() == "cancelled"
        assert dashboard.call(batch) == ("cancelled", [JobState.CANCELLED] * 3)

    def test_a_read_only_user_cannot_cancel_a_batch(self, reader: Any, dashboard: DashboardServer):
        batch_id = dashboard.seeded.batch
        reader.goto(f"{dashboard.url}/batches/{batch_id}")
        assert reader.locator("#cancel-batch, form[method=post]").count() == 0
        [cookie] = [c for c in reader.context.cookies() if c["name"] == "batchworks_csrf"]
        response = reader.context.request.post(
            f"{dashboard.url}/batches/{batch_id}/cancel", form={"csrf": cookie["value"]}
        )
        assert response.status == 403
