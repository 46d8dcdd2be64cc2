"""``batchworks jobs why`` and ``batchworks web``, the real command in subprocesses against the
real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys

import httpx
import pytest

from batchworks import PostgresBackend
from tests.postgres.test_cli import ROOT, Cli, cli, migrated

pytestmark = pytest.mark.postgres

__all__ = ["cli", "migrated"]  # fixtures, used by name


class TestJobsWhy:
    async def test_prints_each_reason_of_a_waiting_job(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        job_id = await migrated.enqueue("emails", {"to": "ada"}, delay=3600)
        result = await asyncio.to_thread(cli, "jobs", "why", str(job_id))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == f"job {job_id}:"
        assert lines[1].startswith("- due later: in ")
        assert lines[2] == "- no live worker serves queue 'emails'"
        as_json = await asyncio.to_thread(cli, "jobs", "why", str(job_id), "--json")
        assert [r["code"] for r in json.loads(as_json.stdout)] == ["due_later", "no_live_worker"]

    async def test_an_unknown_job_is_one_line_and_exit_2(
        self, cli: Cli, migrated: PostgresBackend
    ) -> None:
        result = await asyncio.to_thread(cli, "jobs", "why", "999999")
        assert result.returncode == 2
        assert result.stderr.strip().endswith("no job 999999 in schema " + repr(migrated.schema))


class TestWeb:
    def test_refuses_a_public_host_without_a_password(self, cli: Cli) -> None:
        result = cli("web", "--host", "0.0.0.0")
        assert result.returncode == 2
        assert "refusing to serve the dashboard on '0.0.0.0' without a password" in result.stderr
        assert "BATCHWORKS_WEB_PASSWORD" in result.stderr

    def test_without_the_web_extra_it_says_what_to_install(self, pg_dsn: str) -> None:
        # uvicorn made unimportable, as on an install without the extra
        code = (
            "import sys; sys.modules['uvicorn'] = None; from batchworks.cli import main; "
            f"sys.exit(main(['--dsn', {pg_dsn!r}, 'web']))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2
        assert result.stderr.strip() == (
            "batchworks: error: the dashboard needs the web extra (uvicorn is missing): "
            "pip install 'batchworks[web]'"
        )

    async def test_serves_the_dashboard_behind_its_password_and_stops_on_sigterm(
        self, pg_dsn: str, migrated: PostgresBackend
    ) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "BATCHWORKS_WEB_PASSWORD": "s3cret"}
        args = ["--dsn", pg_dsn, "--schema", migrated.schema, "web", "--port", str(port)]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "batchworks",
            *args,
            cwd=ROOT,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stderr is not None
            async with asyncio.timeout(30):
                while b"Uvicorn running" not in (line := await process.stderr.readline()):
                    assert line, "batchworks web exited before serving"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                refused = await client.get("/")
                assert refused.status_code == 401
                assert refused.headers["www-authenticate"].startswith("Basic")
                page = await client.get("/", auth=("ops", "s3cret"))
                assert page.status_code == 200
                assert "<h1>Queues</h1>" in page.text
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
