"""Bad input fails at once, with a message that says what to change, and stores nothing."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from batchworks import (
    BatchworksError,
    ConfigurationError,
    Job,
    JobState,
    MemoryBackend,
    PayloadError,
    RetryPolicy,
    Runner,
)
from batchworks.backends.base import Backend


async def handler(job: Job) -> object:
    return None


def nested(depth: int) -> object:
    value: object = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture
async def seeded(backend: Backend) -> AsyncIterator[Backend]:
    """The backend with one job already in it, so that "nothing stored" is not trivially {}."""
    await backend.enqueue("q", {"seed": True})
    yield backend


async def refused(
    backend: Backend,
    call: Callable[[], Awaitable[object]],
    error: type[Exception],
    *fragments: str,
) -> str:
    """Run ``call``, expect ``error`` with every fragment in its message, and nothing stored."""
    before = await backend.stats()
    with pytest.raises(error) as info:
        await call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert await backend.stats() == before
    return message


class TestErrorTypes:
    def test_payload_error_is_a_value_error_and_a_type_error(self) -> None:
        assert issubclass(PayloadError, ValueError)
        assert issubclass(PayloadError, TypeError)
        assert issubclass(PayloadError, BatchworksError)

    def test_configuration_error_is_a_value_error(self) -> None:
        assert issubclass(ConfigurationError, ValueError)
        assert issubclass(ConfigurationError, BatchworksError)

    async def test_payload_error_is_caught_as_type_error(self, seeded: Backend) -> None:
        with pytest.raises(TypeError):
            await seeded.enqueue("q", {"at": datetime.now(UTC)})

    async def test_configuration_error_is_caught_as_value_error(self, seeded: Backend) -> None:
        with pytest.raises(ValueError):
            await seeded.enqueue("", {})


class TestPayloads:
    async def test_datetime_names_its_path_and_the_fix(self, seeded: Backend) -> None:
        payload = {"order": {"items": [1, 2], "sent_at": datetime.now(UTC)}}

        message = await refused(
            seeded,
            lambda: seeded.enqueue("emails", payload),
            PayloadError,
            "'emails'",
            "datetime",
            "order.sent_at",
            "isoformat",
        )

        assert "not JSON" in message

    async def test_datetime_in_a_list_names_its_index(self, seeded: Backend) -> None:
        await refused(
            seeded,
            lambda: seeded.enqueue("q", {"events": ["a", datetime.now(UTC)]}),
            PayloadError,
            "events[1]",
            "isoformat",
        )

    @pytest.mark.parametrize(
        ("value", "fragment"),
        [
            (Decimal("1.5"), "Decimal"),
            ({1, 2}, "pass a list"),
            (b"raw", "base64"),
            (object(), "convert it"),
        ],
        ids=["decimal", "set", "bytes", "object"],
    )
    async def test_other_non_json_values_say_what_to_pass(
        self, seeded: Backend, value: object, fragment: str
    ) -> None:
        await refused(
            seeded, lambda: seeded.enqueue("q", {"v": value}), PayloadError, "'$.v'", fragment
        )

    @pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf], ids=str)
    async def test_nan_and_infinity_are_refused(self, seeded: Backend, number: float) -> None:
        await refused(
            seeded,
            lambda: seeded.enqueue("q", {"score": number}),
            PayloadError,
            "score",
            "NaN or Infinity",
        )

    @pytest.mark.parametrize(
        "payload", [{"name": "a\x00b"}, {"a\x00": 1}, ["\x00"]], ids=["value", "key", "list"]
    )
    async def test_nul_in_a_string_is_refused(self, seeded: Backend, payload: object) -> None:
        await refused(seeded, lambda: seeded.enqueue("q", payload), PayloadError, "NUL")

    async def test_escaped_backslash_before_u0000_is_not_a_nul(self, backend: Backend) -> None:
        job_id = await backend.enqueue("q", {"path": "C:\\u0000"})

        record = await backend.get_job(job_id)
        assert record is not None and record.payload == {"path": "C:\\u0000"}

    @pytest.mark.parametrize("text", ["\ud800", "ok \udfff"], ids=["high", "low"])
    async def test_lone_surrogate_is_refused(self, seeded: Backend, text: str) -> None:
        await refused(
            seeded, lambda: seeded.enqueue("q", {"text": text}), PayloadError, "surrogate"
        )

    async def test_nesting_ten_thousand_deep_is_refused(self, seeded: Backend) -> None:
        await refused(
            seeded, lambda: seeded.enqueue("q", nested(10_000)), PayloadError, "nested too deeply"
        )

    async def test_payload_over_max_payload_bytes_is_refused(self) -> None:
        backend = MemoryBackend(max_payload_bytes=100)
        await backend.enqueue("q", "x" * 90)

        await refused(
            backend,
            lambda: backend.enqueue("q", "x" * 200),
            PayloadError,
            "202 bytes",
            "limit of 100",
            "max_payload_bytes",
        )

    async def test_enqueue_many_with_one_bad_payload_stores_none(self, seeded: Backend) -> None:
        payloads = [{"n": 0}, {"n": 1}, {"n": datetime.now(UTC)}, {"n": 3}]

        await refused(
            seeded,
            lambda: seeded.enqueue_many("q", payloads),
            PayloadError,
            "payload #2",
            "isoformat",
        )

    async def test_enqueue_many_with_a_wrong_number_of_dedupe_keys_stores_none(
        self, seeded: Backend
    ) -> None:
        await refused(
            seeded,
            lambda: seeded.enqueue_many("q", [1, 2], dedupe_keys=["a"]),
            ConfigurationError,
            "one key (or None) per payload",
        )


class TestQueueNames:
    @pytest.mark.parametrize(
        "queue",
        ["", 'x";DROP TABLE jobs', "q" * 200, "two words", " q", "-q", "q\n", 42, None, b"q"],
        ids=[
            "empty",
            "injection",
            "200-chars",
            "space",
            "leading-space",
            "leading-dash",
            "newline",
            "int",
            "none",
            "bytes",
        ],
    )
    async def test_invalid_queue_name_is_refused(self, seeded: Backend, queue: Any) -> None:
        await refused(
            seeded,
            lambda: seeded.enqueue(queue, {}),
            ConfigurationError,
            "queue name",
            "1-128 characters",
        )
        await refused(seeded, lambda: seeded.enqueue_many(queue, [{}]), ConfigurationError)

    @pytest.mark.parametrize("queue", ["q", "emails.high-priority", "tenant:42_jobs", "Q" * 128])
    async def test_valid_queue_names_are_accepted(self, backend: Backend, queue: str) -> None:
        job_id = await backend.enqueue(queue, {})

        record = await backend.get_job(job_id)
        assert record is not None and record.queue == queue


class TestEnqueueOptions:
    async def test_delay_and_run_at_together_are_refused(self, seeded: Backend) -> None:
        run_at = datetime.now(UTC) + timedelta(minutes=1)

        await refused(
            seeded,
            lambda: seeded.enqueue("q", {}, delay=60, run_at=run_at),
            ConfigurationError,
            "not both",
        )

    async def test_naive_run_at_is_refused(self, seeded: Backend) -> None:
        naive = datetime.now() + timedelta(minutes=1)  # the bad input itself

        await refused(
            seeded,
            lambda: seeded.enqueue("q", {}, run_at=naive),
            ConfigurationError,
            "timezone-aware",
            "timezone.utc",
        )

    @pytest.mark.parametrize("delay", [-1, -0.5, timedelta(seconds=-1), math.nan, math.inf])
    async def test_negative_or_non_finite_delay_is_refused(
        self, seeded: Backend, delay: Any
    ) -> None:
        await refused(
            seeded, lambda: seeded.enqueue("q", {}, delay=delay), ConfigurationError, "delay"
        )

    async def test_delay_that_is_not_a_number_is_refused(self, seeded: Backend) -> None:
        await refused(
            seeded,
            lambda: seeded.enqueue("q", {}, delay="60"),  # type: ignore[arg-type]
            ConfigurationError,
            "delay must be seconds",
        )

    @pytest.mark.parametrize("priority", [2**31, -(2**31), 10**20])
    async def test_priority_out_of_range_is_refused(self, seeded: Backend, priority: int) -> None:
        await refused(
            seeded,
            lambda: seeded.enqueue("q", {}, priority=priority),
            ConfigurationError,
            "priority must be within",
        )

    @pytest.mark.parametrize("priority", ["1", 1.0, True, None])
    async def test_priority_that_is_not_an_int_is_refused(
        self, seeded: Backend, priority: Any
    ) -> None:
        await refused(
            seeded,
            lambda: seeded.enqueue("q", {}, priority=priority),
            ConfigurationError,
            "priority must be an int",
        )

    @pytest.mark.parametrize("max_attempts", [0, -1, "3", True, 2.5])
    async def test_max_attempts_below_one_or_not_an_int_is_refused(
        self, seeded: Backend, max_attempts: Any
    ) -> None:
        await refused(
            seeded,
            lambda: seeded.enqueue("q", {}, max_attempts=max_attempts),
            ConfigurationError,
            "max_attempts must be an int >= 1",
        )
        await refused(
            seeded,
            lambda: seeded.enqueue_many("q", [{}], max_attempts=max_attempts),
            ConfigurationError,
            "max_attempts",
        )

    @pytest.mark.parametrize("key", ["", "k" * 513, "a\x00b", 7])
    async def test_invalid_dedupe_key_is_refused(self, seeded: Backend, key: Any) -> None:
        await refused(
            seeded,
            lambda: seeded.enqueue("q", {}, dedupe_key=key),
            ConfigurationError,
            "dedupe_key must be",
        )

    async def test_connection_on_the_memory_backend_is_refused(self) -> None:
        backend = MemoryBackend()

        await refused(
            backend,
            lambda: backend.enqueue("q", {}, connection=object()),
            ConfigurationError,
            "PostgresBackend",
        )


class TestRunnerConstruction:
    def test_unknown_queue_in_queues_is_refused(self, backend: Backend) -> None:
        with pytest.raises(ConfigurationError, match=r"'sms' has no handler.*handled: emails"):
            Runner(backend, {"emails": handler}, queues=["emails", "sms"])

    def test_queues_as_one_str_is_refused(self, backend: Backend) -> None:
        with pytest.raises(ConfigurationError, match="list of names"):
            Runner(backend, {"emails": handler}, queues="emails")

    def test_sync_handler_without_sync_in_thread_is_refused(self, backend: Backend) -> None:
        def send(job: Job) -> object:
            return None

        with pytest.raises(ConfigurationError, match="send") as info:
            Runner(backend, {"emails": send})

        assert "'async def'" in str(info.value)
        assert "sync_in_thread=True" in str(info.value)

    async def test_sync_handler_with_sync_in_thread_runs_in_a_thread(
        self, backend: Backend
    ) -> None:
        threads: list[threading.Thread] = []

        def send(job: Job) -> object:
            threads.append(threading.current_thread())
            return {"sent": job.payload["to"]}

        job_id = await backend.enqueue("emails", {"to": "a@example.com"})
        runner = Runner(backend, {"emails": send}, sync_in_thread=True)
        async with asyncio.timeout(15):  # a hang net
            report = await runner.run_until_empty()

        assert report.succeeded == 1
        assert len(threads) == 1 and threads[0] is not threading.main_thread()
        record = await backend.get_job(job_id)
        assert record is not None
        assert (record.state, record.result) == (JobState.SUCCEEDED, {"sent": "a@example.com"})

    def test_async_callable_instance_is_accepted(self, backend: Backend) -> None:
        class Sender:
            async def __call__(self, job: Job) -> object:
                return None

        runner = Runner(backend, {"emails": Sender()})

        assert runner.worker_name

    def test_handler_that_is_not_callable_is_refused(self, backend: Backend) -> None:
        with pytest.raises(ConfigurationError, match="not callable"):
            Runner(backend, {"emails": "send_email"})  # type: ignore[dict-item]

    def test_handler_for_an_invalid_queue_name_is_refused(self, backend: Backend) -> None:
        with pytest.raises(ConfigurationError, match="queue name"):
            Runner(backend, {"bad queue": handler})

    @pytest.mark.parametrize("name", ["concurrency", "batch_size"])
    @pytest.mark.parametrize("value", [0, -1, 1.5, True, "10"])
    def test_concurrency_and_batch_size_below_one_are_refused(
        self, backend: Backend, name: str, value: Any
    ) -> None:
        with pytest.raises(ConfigurationError, match=f"{name} must be an int >= 1"):
            Runner(backend, {"q": handler}, **{name: value})

    @pytest.mark.parametrize(("prune_after", "heartbeat_interval"), [(5.0, 5.0), (4.0, 5.0)])
    def test_prune_after_not_longer_than_heartbeat_interval_is_refused(
        self, backend: Backend, prune_after: float, heartbeat_interval: float
    ) -> None:
        with pytest.raises(
            ConfigurationError, match=r"prune_after .* must be longer than heartbeat_interval"
        ):
            Runner(
                backend,
                {"q": handler},
                prune_after=prune_after,
                heartbeat_interval=heartbeat_interval,
            )

    @pytest.mark.parametrize("value", [-1, -0.1, math.nan, math.inf, "30"])
    def test_bad_shutdown_timeout_is_refused(self, backend: Backend, value: Any) -> None:
        with pytest.raises(ConfigurationError, match="shutdown_timeout must be"):
            Runner(backend, {"q": handler}, shutdown_timeout=value)

    def test_zero_shutdown_timeout_is_accepted(self, backend: Backend) -> None:
        assert Runner(backend, {"q": handler}, shutdown_timeout=0).worker_name

    @pytest.mark.parametrize(
        "name", ["job_timeout", "heartbeat_interval", "poll_interval", "prune_after"]
    )
    @pytest.mark.parametrize("value", [0, -1])
    def test_zero_or_negative_durations_are_refused(
        self, backend: Backend, name: str, value: float
    ) -> None:
        options: dict[str, Any] = {name: value}

        with pytest.raises(ConfigurationError, match=f"{name} must be > 0 seconds"):
            Runner(backend, {"q": handler}, **options)

    def test_empty_handlers_are_refused(self, backend: Backend) -> None:
        with pytest.raises(ConfigurationError, match="non-empty mapping"):
            Runner(backend, {})

    @pytest.mark.parametrize("handlers", [[("q", handler)], handler, None])
    def test_handlers_that_are_not_a_mapping_are_refused(
        self, backend: Backend, handlers: Any
    ) -> None:
        with pytest.raises(ConfigurationError, match=r"mapping of queue name to handler"):
            Runner(backend, handlers)

    @pytest.mark.parametrize("retry", [{"max_attempts": 3}, 3, "exponential"])
    def test_retry_that_is_not_a_retry_policy_is_refused(
        self, backend: Backend, retry: Any
    ) -> None:
        with pytest.raises(ConfigurationError, match="retry must be a RetryPolicy"):
            Runner(backend, {"q": handler}, retry=retry)

    def test_retry_policy_is_accepted(self, backend: Backend) -> None:
        assert Runner(backend, {"q": handler}, retry=RetryPolicy(max_attempts=1)).worker_name

    @pytest.mark.parametrize("value", [object(), "postgresql://localhost/db", None, {}])
    def test_backend_that_is_not_a_backend_is_refused(self, value: Any) -> None:
        with pytest.raises(ConfigurationError, match="MemoryBackend, PostgresBackend"):
            Runner(value, {"q": handler})

    @pytest.mark.parametrize("name", ["", 42])
    def test_empty_or_non_str_worker_name_is_refused(self, backend: Backend, name: Any) -> None:
        with pytest.raises(ConfigurationError, match="worker_name must be a non-empty str"):
            Runner(backend, {"q": handler}, worker_name=name)
