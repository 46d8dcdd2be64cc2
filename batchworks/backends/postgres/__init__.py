"""The PostgreSQL backend (asyncpg)."""

from __future__ import annotations

from batchworks.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
