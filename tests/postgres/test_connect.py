"""How a PostgresBackend connects: the options it passes on, the ones it refuses, and its
first connection retried while the server is not up yet."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import asyncpg
import pytest

from batchworks import BackendError, ConfigurationError, PostgresBackend
from tests.conftest import eventually
from tests.pgcluster import free_port

pytestmark = pytest.mark.postgres


def _nowhere() -> str:
    return f"postgresql://postgres:secret@127.0.0.1:{free_port()}/postgres"


class TestConnectOptions:
    @pytest.mark.parametrize("key", ["dsn", "min_size", "max_size", "reset", "loop", "connect"])
    def test_keys_the_backend_sets_itself_are_refused(self, key: str) -> None:
        with pytest.raises(ConfigurationError, match=f"may not set '{key}': batchworks sets it"):
            PostgresBackend("postgresql://localhost/x", connect_options={key: 1})

    def test_an_unknown_key_is_refused_naming_the_known_ones(self) -> None:
        with pytest.raises(
            ConfigurationError,
            match=r"'statement_cache', which asyncpg does not take; use one of .*_cache_size",
        ):
            PostgresBackend("postgresql://localhost/x", connect_options={"statement_cache": 0})

    def test_not_a_mapping_is_refused(self) -> None:
        with pytest.raises(ConfigurationError, match="must be a mapping"):
            PostgresBackend("postgresql://localhost/x", connect_options=[("timeout", 1)])  # type: ignore[arg-type]

    async def test_with_a_callers_pool_options_belong_on_that_pool(self, pg_dsn: str) -> None:
        pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1)
        try:
            with pytest.raises(ConfigurationError, match="set them on your own pool"):
                PostgresBackend(pool=pool, connect_options={"command_timeout": 5})
        finally:
            await pool.close()

    @pytest.mark.parametrize("value", ["", 5])
    def test_listen_dsn_must_be_a_dsn(self, value: Any) -> None:
        with pytest.raises(ConfigurationError, match="listen_dsn must be a non-empty str"):
            PostgresBackend("postgresql://localhost/x", listen_dsn=value)

    @pytest.mark.parametrize("value", [-1, float("nan"), "60", True])
    def test_open_timeout_must_be_seconds(self, value: Any) -> None:
        with pytest.raises(ConfigurationError, match="open_timeout"):
            PostgresBackend("postgresql://localhost/x", open_timeout=value)

    async def test_options_reach_the_pool_and_the_listen_connection(
        self, pg_dsn: str, pg_schema: str
    ) -> None:
        options = {"server_settings": {"application_name": "bw-options"}, "command_timeout": 7}
        async with PostgresBackend(
            pg_dsn, schema=pg_schema, connect_options=options, listen_dsn=pg_dsn
        ) as backend:
            await backend.migrate()
            await backend.wait_for_work(["q"], max_wait=0.001)  # starts the listener
            pool = backend._require_pool()
            assert await pool.fetchval("SHOW application_name") == "bw-options"
            async with pool.acquire() as conn:
                assert conn._config.command_timeout == 7
            watcher = await asyncpg.connect(pg_dsn)
            try:

                async def listening_with_the_options() -> bool:
                    names = await watcher.fetch(
                        "SELECT application_name FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"
                    )
                    return "bw-options" in {row[0] for row in names}

                await eventually(listening_with_the_options, what="LISTEN with the options")
            finally:
                await watcher.close()

    async def test_a_users_init_still_runs_on_each_new_connection(
        self, pg_dsn: str, pg_schema: str
    ) -> None:
        seen: list[int] = []

        async def init(conn: asyncpg.Connection) -> None:
            seen.append(conn.get_server_pid())

        options = {"init": init}
        async with PostgresBackend(
            pg_dsn, schema=pg_schema, min_size=2, max_size=2, connect_options=options
        ) as backend:
            await backend.migrate()
            pids = {await backend._require_pool().fetchval("SELECT pg_backend_pid()")}
        assert len(seen) == 2 and pids <= set(seen)


class TestOpenRetries:
    async def test_gives_up_after_open_timeout_saying_where_and_how_long(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="batchworks")
        dsn = _nowhere()
        backend = PostgresBackend(dsn, open_timeout=1.5)
        with pytest.raises(BackendError, match=r"gave up after [0-9]+ tries in 1\.5s") as info:
            await backend.open()
        message = str(info.value)
        assert "secret" not in message and "postgres:***@127.0.0.1" in message
        assert "open_timeout" in message
        tries = [r for r in caplog.records if getattr(r, "action", None) == "connect_retry"]
        assert len(tries) >= 1 and "not reachable yet (try 1" in tries[0].getMessage()
        assert all("secret" not in r.getMessage() for r in tries)

    async def test_open_timeout_zero_tries_once(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="batchworks")
        with pytest.raises(BackendError, match="it does not answer"):
            await PostgresBackend(_nowhere(), open_timeout=0).open()
        assert not [r for r in caplog.records if getattr(r, "action", None) == "connect_retry"]

    async def test_a_lasting_error_is_not_retried(
        self, pg_dsn: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="batchworks")
        missing = pg_dsn.rsplit("/", 1)[0] + "/no_such_database_here"
        with pytest.raises(BackendError, match="InvalidCatalogNameError"):
            await PostgresBackend(missing, open_timeout=60).open()
        assert not [r for r in caplog.records if getattr(r, "action", None) == "connect_retry"]

    async def test_a_dsn_asyncpg_cannot_parse_is_not_retried(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="batchworks")
        with pytest.raises(ValueError, match="port"):
            async with asyncio.timeout(10):
                await PostgresBackend("postgresql://x@127.0.0.1:notaport/x", open_timeout=60).open()
        assert not [r for r in caplog.records if getattr(r, "action", None) == "connect_retry"]

    async def test_cancelling_open_stops_the_wait(self) -> None:
        backend = PostgresBackend(_nowhere(), open_timeout=60)
        task = asyncio.create_task(backend.open())
        await asyncio.sleep(0.3)  # into its first backoff
        task.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert "not opened" in repr(backend)
