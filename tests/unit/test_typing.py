"""What a type checker says about user code: ``mypy --strict`` on small apps.

A plain ``def`` handler used to pass ``mypy --strict`` and fail when the Runner was built; now
the type checker refuses it unless ``sync_in_thread=True``, and ``Job[Payload]`` types a
handler's payload. Each line marked ``# error`` must get a mypy error, and no other line may.
One mypy run checks every snippet (a few seconds; its cache lives in the test's tmp dir).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAD = """\
from __future__ import annotations

from typing import Any, TypedDict

from batchworks import Job, MemoryBackend, Runner

backend = MemoryBackend()
"""

SNIPPETS = {
    "sync_without_opt_in": """
        def send(job: Job) -> None:
            print(job.payload)

        Runner(backend, {"emails": send})  # error
        Runner(backend, {"emails": send}, sync_in_thread=False)  # error
    """,
    "sync_with_opt_in": """
        def send(job: Job) -> None:
            print(job.payload)

        async def log(job: Job) -> None:
            print(job.id)

        Runner(backend, {"emails": send, "logs": log}, sync_in_thread=True, concurrency=4)
    """,
    "async_handlers": """
        async def send(job: Job) -> dict[str, bool]:
            return {"sent": True}

        class Sender:
            async def __call__(self, job: Job) -> None:
                pass

        runner = Runner(backend, {"emails": send, "sms": Sender()}, concurrency=5, batch_size=10)
        Runner(backend, {"emails": send}, concurrency="5")  # error
        Runner(backend, {"emails": send}, no_such_option=1)  # error
    """,
    "typed_payload": """
        class Order(TypedDict):
            sku: str
            quantity: int

        async def ship(job: Job[Order]) -> int:
            sku: str = job.payload["sku"]
            print(sku)
            return job.payload["quantity"]

        async def wrong(job: Job[Order]) -> None:
            count: str = job.payload["quantity"]  # error
            print(count, job.payload["colour"])  # error

        Runner(backend, {"orders": ship, "other": wrong})
    """,
    "bare_job_is_any": """
        async def anything(job: Job) -> Any:
            return job.payload["whatever"][0].attribute

        Runner(backend, {"q": anything})
    """,
}

ERROR = re.compile(r"^(?P<file>[\w.]+\.py):(?P<line>\d+): error: (?P<message>.*)$", re.M)


def test_mypy_strict_refuses_sync_handlers_without_opt_in_and_types_payloads(
    tmp_path: Path,
) -> None:
    expected: set[tuple[str, int]] = set()
    for name, body in SNIPPETS.items():
        text = HEAD + textwrap.dedent(body)
        (tmp_path / f"{name}.py").write_text(text)
        for number, line in enumerate(text.splitlines(), start=1):
            if line.endswith("# error"):
                expected.add((f"{name}.py", number))
    env = {**os.environ, "MYPYPATH": str(ROOT)}  # batchworks as the checkout has it
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            *sorted(path.name for path in tmp_path.glob("*.py")),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang net: a cold mypy run takes seconds
        check=False,
    )
    errors = list(ERROR.finditer(result.stdout))
    output = result.stdout + result.stderr
    assert {(m["file"], int(m["line"])) for m in errors} == expected, output
    # A plain function is refused as not being a Handler (whose docstring names the way out:
    # sync_in_thread=True), not for some other reason.
    sync = [m["message"] for m in errors if m["file"] == "sync_without_opt_in.py"]
    assert all('expected "str": "Handler[Any]"' in message for message in sync), output
