"""docs/schema.sql is the schema migrate() builds, so it can be read instead of the migrations."""

from __future__ import annotations

import pytest

from tools.dump_schema import SCHEMA_FILE, current_schema_text

pytestmark = pytest.mark.postgres


async def test_schema_file_matches_what_migrate_builds(pg_dsn: str) -> None:
    built = await current_schema_text(pg_dsn)
    assert "CREATE TABLE batchworks.jobs (" in built  # the catalog read found the tables
    assert SCHEMA_FILE.read_text() == built, (
        "docs/schema.sql no longer matches what migrate() builds: run "
        "`.venv/bin/python tools/dump_schema.py` and commit the file"
    )
