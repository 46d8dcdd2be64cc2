"""``batchworks batches`` (#16) and ``retry --batch``: the real command in subprocesses against
the real PostgreSQL, the batches made and drained through the public API."""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import PIPE

import pytest

from batchworks import Callback, Job, PostgresBackend, Runner, Terminal
from tests.postgres.test_cli import ROOT, Cli, cli, migrated, on_terminal

__all__ = ["cli", "migrated"]  # the fixtures, taken from test_cli

pytestmark = pytest.mark.postgres


async def _flaky(job: Job) -> object:
    if job.payload.get("bad"):
        raise Terminal(f"row {job.payload['row']} is malformed")
    await asyncio.sleep(job.payload.get("sleep", 0))
    return job.payload["row"]


async def _drain(backend: PostgresBackend) -> None:
    await Runner(backend, {"q": _flaky}, concurrency=1).run_until_empty()


class TestBatchesCommand:
    async def test_list_and_show_give_counts_failures_by_error_and_the_callback_job(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        empty = await asyncio.to_thread(cli, "batches")
        assert (empty.returncode, empty.stdout.strip()) == (0, "no batches")
        payloads = [{"row": i, "bad": i % 3 == 0} for i in range(7)]  # rows 0, 3, 6 fail
        batch = await migrated.enqueue_batch(
            "q", payloads, name="import", on_complete=Callback("reports", {"x": 1})
        )
        await _drain(migrated)

        listing = await asyncio.to_thread(cli, "batches")
        assert listing.returncode == 0, listing.stderr
        header, row = listing.stdout.strip().splitlines()
        assert header.split()[:5] == ["ID", "NAME", "STATE", "PROGRESS", "TOTAL"]
        assert row.split()[:3] == [str(batch.id), "import", "finished"]
        assert row.split()[5:11] == ["7", "0", "0", "4", "3", "0"]

        shown = await asyncio.to_thread(cli, "batches", "show", str(batch.id))
        assert shown.returncode == 0, shown.stderr
        record = await migrated.get_batch(batch.id)
        assert record is not None and record.complete_job is not None
        text = shown.stdout
        assert f"batch {batch.id} 'import': finished" in text
        assert "7 members: queued 0, running 0, succeeded 4, failed 3, cancelled 0" in text
        assert f"on_complete: queue 'reports', job {record.complete_job} (queued)" in text
        for row_number in (0, 3, 6):  # each its own message: three groups of one
            assert f"      1  Terminal: row {row_number} is malformed" in text

        as_json = await asyncio.to_thread(cli, "batches", "show", str(batch.id), "--json")
        data = json.loads(as_json.stdout)
        assert (data["failed"], data["state"], len(data["failures"])) == (3, "finished", 3)
        assert data["callback_jobs"] == {str(record.complete_job): "queued"}
        missing = await asyncio.to_thread(cli, "batches", "show", "999999")
        assert missing.returncode == 2 and "no batch 999999" in missing.stderr

    async def test_retry_batch_queues_only_that_batchs_failed_members(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        ours = await migrated.enqueue_batch("q", [{"row": 1, "bad": True}, {"row": 2}])
        other = await migrated.enqueue_batch("q", [{"row": 3, "bad": True}])
        await _drain(migrated)

        result = await asyncio.to_thread(cli, "retry", "--batch", str(ours.id))
        assert result.returncode == 0, result.stderr
        assert f"queued 1 failed job of batch {ours.id} again" in result.stdout
        mine, theirs = await migrated.get_batch(ours.id), await migrated.get_batch(other.id)
        assert mine is not None and (mine.state, mine.failed, mine.queued) == ("closed", 0, 1)
        assert theirs is not None and (theirs.state, theirs.failed) == ("finished", 1)
        missing = await asyncio.to_thread(cli, "retry", "--batch", "999999")
        assert missing.returncode == 2 and "no batch 999999" in missing.stderr

    async def test_cancel_and_close(self, cli: Cli, migrated: PostgresBackend) -> None:
        batch = await migrated.enqueue_batch("q", [{"row": 1}, {"row": 2}], close=False)
        cancelled = await asyncio.to_thread(cli, "batches", "cancel", str(batch.id))
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancelled: 2 members: queued 0, running 0" in cancelled.stdout
        open_one = await migrated.enqueue_batch("q", [], close=False)
        closed = await asyncio.to_thread(cli, "batches", "close", str(open_one.id))
        assert closed.returncode == 0, closed.stderr
        assert f"batch {open_one.id} finished: 0 members" in closed.stdout


class TestWatch:
    async def test_watch_draws_a_live_bar_on_a_terminal_and_lines_in_a_pipe(
        self, migrated: PostgresBackend, pg_dsn: str, pg_schema: str
    ) -> None:
        # Members of 0.3 s, one at a time: the watch outlasts a few redraws (0.5 s apart).
        batch = await migrated.enqueue_batch("q", [{"row": i, "sleep": 0.3} for i in range(5)])
        command = [sys.executable, "-m", "batchworks", "--dsn", pg_dsn, "--schema", pg_schema]
        code, _, terminal = await on_terminal(
            [*command, "batches", "show", str(batch.id), "--watch"], "stdout", _drain(migrated)
        )
        assert code == 0, terminal
        frames = [part for part in terminal.split("\r") if part.startswith(f"batch {batch.id} ")]
        assert any("[" in frame and "%" in frame for frame in frames), terminal
        assert f"batch {batch.id}: finished" in terminal  # the summary once done
        assert "5 members: queued 0, running 0, succeeded 5" in terminal

        again = await migrated.enqueue_batch("q", [{"row": i, "sleep": 0.2} for i in range(3)])
        piped = await asyncio.create_subprocess_exec(
            *command, "batches", "show", str(again.id), "--watch", cwd=ROOT, stdout=PIPE
        )
        await _drain(migrated)
        out, _ = await asyncio.wait_for(piped.communicate(), timeout=60)
        text = out.decode()
        assert piped.returncode == 0, text
        assert "\r" not in text and "\x1b" not in text
        first = text.splitlines()[0]
        assert first.startswith(f"batch {again.id} closed [") and "3 members" in first
        assert f"batch {again.id}: finished" in text
