"""What both backends share, written once: the lifecycle of ``async with`` and the whole of
``enqueue``/``enqueue_many`` (checked options and dedupe keys, payloads encoded and checked
before anything is stored, the ``send`` span) on top of a few abstract methods.

In the manner of anyio's ``abc`` classes: :class:`BackendBase` holds the behaviour, each
backend fills in :meth:`~BackendBase._encode_payloads` and :meth:`~BackendBase._insert` (and
may refine :meth:`~BackendBase._check_connection` and
:meth:`~BackendBase._in_transaction`). The :class:`~batchworks.backends.base.Backend`
protocol stays the type that code written against a backend names.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

from batchworks import _json
from batchworks._checks import (
    check_concurrency_key,
    check_concurrency_keys,
    check_dedupe_key,
    check_dedupe_keys,
    check_label,
    check_limit,
    check_queue,
    check_rate,
    positive_int,
)
from batchworks.backends.base import BatchSpec, EnqueueOptions, Limits
from batchworks.batch import Batch, Callback
from batchworks.errors import ConfigurationError
from batchworks.job import JobRecord
from batchworks.tracing import send_span

__all__ = ["BackendBase", "payload_label"]

MAX_BATCH_NAME = 200  # characters

#: what a backend's :meth:`BackendBase._encode_payloads` makes of a batch of payloads
Encoded = TypeVar("Encoded")


def payload_label(queue: str, index: int | None) -> str:
    """How errors name a payload: ``payload for queue 'q'`` or ``payload #3 for queue 'q'``."""
    if index is None:
        return f"payload for queue {queue!r}"
    return f"payload #{index} for queue {queue!r}"


class BackendBase(abc.ABC, Generic[Encoded]):
    """The behaviour both backends share; subclasses set ``_max_bytes`` in ``__init__``."""

    #: the largest encoded payload, result or checkpoint, in bytes (``max_payload_bytes=``)
    _max_bytes: int
    #: whether an ``enqueue_many`` of no payloads still opens its (empty) ``send`` span: the
    #: memory backend always did, the PostgreSQL one returns before it; kept as they were.
    _SPAN_EMPTY_BATCH: ClassVar[bool] = False

    @property
    def max_payload_bytes(self) -> int:
        """The largest encoded payload, result or checkpoint this backend accepts."""
        return self._max_bytes

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    # -- enqueue --------------------------------------------------------------------------------

    async def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        dedupe_key: str | None = None,
        timeout: float | timedelta | None = None,
        connection: Any = None,
        concurrency_key: str | None = None,
    ) -> int:
        """Add one job; see :meth:`Backend.enqueue`."""
        options = EnqueueOptions.build(
            queue,
            delay=delay,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
        )
        self._check_connection(connection)
        keys = [check_dedupe_key(dedupe_key)]
        groups = [check_concurrency_key(concurrency_key)]
        [job_id] = await self._add(options, [payload], keys, groups, connection, numbered=False)
        return job_id

    async def enqueue_many(
        self,
        queue: str,
        payloads: Sequence[Any],
        *,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        dedupe_keys: Sequence[str | None] | None = None,
        timeout: float | timedelta | None = None,
        connection: Any = None,
        concurrency_keys: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Add many jobs at once; every payload is checked before any is stored, and ids come
        back in payload order."""
        options = EnqueueOptions.build(
            queue,
            delay=delay,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
        )
        self._check_connection(connection)
        keys = check_dedupe_keys(dedupe_keys, len(payloads))
        groups = check_concurrency_keys(concurrency_keys, len(payloads))
        return await self._add(options, payloads, keys, groups, connection, numbered=True)

    async def _add(
        self,
        options: EnqueueOptions,
        payloads: Sequence[Any],
        keys: list[str | None],
        groups: list[str | None],
        connection: Any,
        *,
        numbered: bool,
    ) -> list[int]:
        """Encode every payload (all are checked before any is stored), then store them
        inside a ``send`` span."""
        if not payloads and not self._SPAN_EMPTY_BATCH:
            return []
        encoded = self._encode_payloads(options.queue, payloads, numbered=numbered)
        in_transaction = self._in_transaction(connection)
        with send_span(options.queue, len(payloads), in_transaction=in_transaction) as span:
            ids = await self._insert(options, encoded, keys, groups, connection, span.carrier)
            span.sent(ids)
            return ids

    # -- batches --------------------------------------------------------------------------------

    async def enqueue_batch(
        self,
        queue: str,
        payloads: Sequence[Any],
        *,
        on_complete: Callback | None = None,
        on_success: Callback | None = None,
        name: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        close: bool = True,
        connection: Any = None,
    ) -> Batch:
        """Add a batch and its members at once; see :meth:`Backend.enqueue_batch`."""
        options = EnqueueOptions.build(
            queue,
            delay=delay,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
        )
        self._check_connection(connection)
        spec = BatchSpec(
            name=check_label(name, "batch name", MAX_BATCH_NAME),
            on_complete=self._callback_json(on_complete, "on_complete"),
            on_success=self._callback_json(on_success, "on_success"),
        )
        encoded = self._encode_payloads(queue, payloads, numbered=True)
        in_transaction = self._in_transaction(connection)
        with send_span(queue, len(payloads), in_transaction=in_transaction) as span:
            batch = await self._insert_batch(
                options, encoded, spec, close=close, connection=connection, carrier=span.carrier
            )
            span.batch(batch.id)
            return batch

    async def add_to_batch(
        self,
        batch_id: int,
        payloads: Sequence[Any],
        *,
        queue: str | None = None,
        delay: float | timedelta | None = None,
        run_at: datetime | None = None,
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        connection: Any = None,
    ) -> Batch:
        """Add members to a batch; see :meth:`Backend.add_to_batch`."""
        positive_int(batch_id, "batch_id")
        self._check_connection(connection)
        if queue is None:
            queue = await self._batch_queue(batch_id, connection)
        options = EnqueueOptions.build(
            queue,
            delay=delay,
            run_at=run_at,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
        )
        encoded = self._encode_payloads(queue, payloads, numbered=True)
        in_transaction = self._in_transaction(connection)
        with send_span(queue, len(payloads), in_transaction=in_transaction) as span:
            span.batch(batch_id)
            ids = await self._add_members(
                batch_id, options, encoded, connection=connection, carrier=span.carrier
            )
            return Batch(batch_id, ids)

    async def batch_results(
        self, batch_id: int, *, page_size: int = 500
    ) -> AsyncIterator[JobRecord]:
        """The batch's members in id order, ``page_size`` read at a time."""
        positive_int(page_size, "page_size")
        after = 0
        while True:
            page = await self._batch_page(batch_id, after, page_size)
            for record in page:
                yield record
            if len(page) < page_size:
                return
            after = page[-1].id

    def _callback_json(self, callback: Callback | None, which: str) -> str | None:
        if callback is None:
            return None
        if not isinstance(callback, Callback):
            raise ConfigurationError(f"{which} takes a Callback(queue, payload), got {callback!r}")
        return self._encode(callback.spec(), f"payload of the {which} callback")

    @abc.abstractmethod
    async def _insert_batch(
        self,
        options: EnqueueOptions,
        payloads: Encoded,
        spec: BatchSpec,
        *,
        close: bool,
        connection: Any,
        carrier: dict[str, str] | None,
    ) -> Batch:
        """Store a batch and its members (closed at once with ``close``: an empty one then
        finishes, its callbacks enqueued) with the enqueue's trace context."""

    @abc.abstractmethod
    async def _add_members(
        self,
        batch_id: int,
        options: EnqueueOptions,
        payloads: Encoded,
        *,
        connection: Any,
        carrier: dict[str, str] | None,
    ) -> list[int]:
        """Store members of an existing batch; raises BatchNotFound or BatchClosed."""

    @abc.abstractmethod
    async def _batch_queue(self, batch_id: int, connection: Any) -> str:
        """The queue the batch was enqueued to; raises BatchNotFound."""

    @abc.abstractmethod
    async def _batch_page(self, batch_id: int, after: int, limit: int) -> list[JobRecord]:
        """Up to ``limit`` members of the batch with ids above ``after``, in id order."""

    # -- flow control (#14) -----------------------------------------------------------------

    async def configure_queue(
        self,
        queue: str,
        *,
        concurrency: int | None = None,
        key_concurrency: int | None = None,
        rate: tuple[int, float] | None = None,
    ) -> None:
        """Set every limit of ``queue`` at once (None removes one); see
        :meth:`Backend.configure_queue`."""
        check_queue(queue)
        limits = Limits(
            check_limit(concurrency, "concurrency"),
            check_limit(key_concurrency, "key_concurrency"),
            check_rate(rate),
        )
        await self._configure(queue, limits)

    async def pause_queue(self, queue: str) -> None:
        """Start no new job of ``queue`` until :meth:`resume_queue`."""
        await self._pause(check_queue(queue), True)

    async def resume_queue(self, queue: str) -> None:
        """Let ``queue`` start jobs again, and wake its idle runners."""
        await self._pause(check_queue(queue), False)

    @abc.abstractmethod
    async def _configure(self, queue: str, limits: Limits) -> None:
        """Store the checked limits of ``queue``."""

    @abc.abstractmethod
    async def _pause(self, queue: str, paused: bool) -> None:
        """Store whether ``queue`` is paused."""

    def _encode(self, value: Any, what: str) -> str:
        """``value`` as JSON text, or :class:`PayloadError` naming it as ``what``."""
        return _json.dumps(value, what=what, limit=self._max_bytes)

    def _check_connection(self, connection: Any) -> None:
        """Refuse a ``connection=`` this backend cannot use (before any other work)."""

    def _in_transaction(self, connection: Any) -> bool:
        """Whether the enqueue runs in a transaction of the caller's (the span says so)."""
        return False

    @abc.abstractmethod
    def _encode_payloads(self, queue: str, payloads: Sequence[Any], *, numbered: bool) -> Encoded:
        """The payloads encoded for :meth:`_insert`; raises :class:`PayloadError` naming the
        first bad one (``payload #3 for queue 'q'`` when ``numbered``)."""

    @abc.abstractmethod
    async def _insert(
        self,
        options: EnqueueOptions,
        payloads: Encoded,
        dedupe_keys: list[str | None],
        concurrency_keys: list[str | None],
        connection: Any,
        trace_context: dict[str, str] | None,
    ) -> list[int]:
        """Store the encoded payloads with ``options``, one dedupe key and one concurrency key
        (or None) each, and the enqueue's W3C trace context; return their ids in payload
        order (for a dedupe key held by a live job, that job's id)."""
