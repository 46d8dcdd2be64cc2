"""Screenshots of the dashboard's main pages, for docs/screenshots/ (the README shows them).

    .venv/bin/python tools/screenshots.py [--out docs/screenshots] [--dsn DSN]

Serves the dashboard (tests/web/support.py: mounted under /ops, on a throwaway schema seeded
with jobs in every state) and photographs each page in headless Chromium, Debian's
``chromium`` driven by Playwright. tests/web/test_screenshots.py runs it into a temporary
directory, so it keeps working.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchworks import PostgresBackend  # noqa: E402
from tests.web.support import OPERATE, DashboardServer, chromium  # noqa: E402

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
VIEWPORT = {"width": 1280, "height": 800}


def pages(server: DashboardServer) -> dict[str, str]:
    """File name -> the page's path under the dashboard."""
    seeded = server.seeded
    return {
        "overview.png": "/",
        "jobs.png": "/jobs?queue=emails",
        "job.png": f"/jobs/{seeded.failed[0]}",
        "job-waiting.png": f"/jobs/{seeded.later}",
        "workers.png": "/workers",
        "schedules.png": "/schedules",
        "batches.png": "/batches",
        "batch.png": f"/batches/{seeded.batch}",
    }


async def _spread(backend: PostgresBackend) -> None:
    """Demo data only: the seeded jobs all ended within a second; spread their ends over the
    last hour so that the overview's chart shows its shape (the dashboard writes no SQL)."""
    pool = backend._require_pool()
    await pool.execute(
        f'UPDATE "{backend.schema}".jobs SET finished_at = now() - '
        "make_interval(secs => (id * 7919 % 3500)) WHERE finished_at IS NOT NULL"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--dsn", default=os.environ.get("BATCHWORKS_DSN", DEFAULT_DSN))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    schema = f"screenshots_{uuid.uuid4().hex[:8]}"
    with DashboardServer(args.dsn, schema, drop_schema=True) as server, chromium() as browser:
        user, password = OPERATE
        context = browser.new_context(
            viewport=VIEWPORT, http_credentials={"username": user, "password": password}
        )
        server.call(_spread)
        page = context.new_page()
        for name, path in pages(server).items():
            page.goto(server.url + path)
            page.screenshot(path=str(args.out / name), full_page=True)
            print(f"wrote {args.out / name}")  # noqa: T201
        context.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
