"""Refusal time: how long an enqueue takes to refuse bad input, against one plain encode.

Every case is an ``enqueue`` (and an ``enqueue_many`` of a good payload then the bad one) that
must raise ``PayloadError`` or ``ConfigurationError`` before anything is written. It runs on a
``PostgresBackend`` that is never opened: a refusal happens before any connection is needed, so
an enqueue that got as far as the database raises ``LifecycleError`` instead, and the benchmark
exits non-zero (it did not refuse). No server is used.

The reference, measured in the same process between the cases: ``json.dumps`` of a valid
payload of 1 MiB (the default size limit), the least any enqueue of a payload that large must
spend. The ratio says what a refusal costs in plain encodes at the limit. The 10 MiB cases cost
about a full encode of their 10 MiB (the size is known once the value is encoded: 7-12x here);
odd types, NUL, surrogates, deep nesting and bad names are refused far below one encode.

This used to be a test assertion (refused within 100 ms of CPU); on a loaded 2-core machine it
failed at 132-139 ms, so the figure lives here and the tests assert what is refused and that
nothing is stored (``tests/badinput``).

Each case runs ``--rounds`` times, best counts, garbage collector off while timing (as in
``overhead.py``).

Usage::

    .venv/bin/python bench/refusal.py            # 20 rounds a case
    .venv/bin/python bench/refusal.py --quick    # 3 rounds (CI)
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from _common import parser, ratio_line, write_json

from batchworks import ConfigurationError, PayloadError, PostgresBackend

MiB = 1024 * 1024


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def cases(backend: PostgresBackend) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Each case: a call that must be refused."""
    string = "x" * 10 * MiB
    rows = {"rows": ["r" * 62] * (10 * MiB // 64)}
    deep = nested(10_000)
    payloads: dict[str, Any] = {
        "10MiB-string": string,
        "10MiB-rows": rows,
        "nested-10000-lists": deep,
        "nan-deep": {"x": [1.0] * 10_000 + [math.nan]},
        "datetime": {"at": datetime.now(UTC)},
        "set": {1, 2},
        "lone-surrogate-deep": [1, "ok", {"deep": ["\udbff"]}],
    }
    found: dict[str, Callable[[], Awaitable[Any]]] = {}
    for name, payload in payloads.items():
        found[name] = lambda p=payload: backend.enqueue("q", p)
        found[f"{name} (enqueue_many)"] = lambda p=payload: backend.enqueue_many("q", [{}, p])
    found["queue-name"] = lambda: backend.enqueue('x";DROP TABLE jobs;--', {})
    found["dedupe-key-600"] = lambda: backend.enqueue("q", {}, dedupe_key="k" * 600)
    return found


async def time_refusal(call: Callable[[], Awaitable[Any]], name: str) -> float:
    start = time.perf_counter()
    try:
        await call()
    except (PayloadError, ConfigurationError):
        return time.perf_counter() - start
    except Exception as exc:
        sys.exit(f"error: case {name!r} was not refused as bad input: {type(exc).__name__}: {exc}")
    sys.exit(f"error: case {name!r} was accepted")


def time_reference(payload: Any) -> float:
    start = time.perf_counter()
    json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return time.perf_counter() - start


async def main() -> None:
    args = parser(__doc__).parse_args()
    rounds = 3 if args.quick else 20
    backend = PostgresBackend("postgresql://unused@127.0.0.1/none")  # never opened
    reference_payload = {"rows": ["r" * 62] * (MiB // 64)}  # about 1 MiB, valid
    calls = cases(backend)
    best: dict[str, float] = dict.fromkeys(calls, math.inf)
    reference = math.inf
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            # Alternate reference and cases so that drift hits both.
            reference = min(reference, time_reference(reference_payload))
            for name, call in calls.items():
                best[name] = min(best[name], await time_refusal(call, name))
    finally:
        gc.enable()
    print(f"refusals before any write, best of {rounds}; reference: json.dumps of 1 MiB")
    print(f"  {'reference (1 MiB encode)':<36} {reference * 1000:8.2f} ms")
    for name, seconds in best.items():
        print(f"  {name:<36} {seconds * 1000:8.2f} ms  {seconds / reference:6.2f}x")
    worst = max(best, key=best.__getitem__)
    print(ratio_line(f"slowest refusal ({worst}) / reference", best[worst], reference))
    write_json(
        args.json,
        "refusal",
        {
            "rounds": rounds,
            "reference_ms": reference * 1000,
            "cases_ms": {name: seconds * 1000 for name, seconds in best.items()},
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
