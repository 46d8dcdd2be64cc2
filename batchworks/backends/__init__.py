"""Backends: where jobs live. :class:`MemoryBackend` in this process, PostgreSQL for durable
work shared by many processes."""

from __future__ import annotations

from batchworks.backends.base import Backend
from batchworks.backends.memory import MemoryBackend
from batchworks.backends.postgres import PostgresBackend

__all__ = ["Backend", "MemoryBackend", "PostgresBackend"]
