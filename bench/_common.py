"""Helpers shared by the benchmarks: where PostgreSQL is, scratch schemas and databases, worker
processes, and the lines every benchmark prints.

Rules every benchmark keeps (see README.md):

- it compares against a reference measured in the same run, and prints that as a ratio;
- it exits non-zero only when what it measured did not happen (a job not run), never on speed;
- it works in schemas (and, for the peers, databases) of its own, dropped at the end;
- every wait is bounded in time, and it talks to this machine's PostgreSQL only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}
QUEUE = "bench"
WORKER_START_TIMEOUT = 60.0  # seconds a worker process gets to connect and say ready
PEERS = ("pgqueuer", "procrastinate")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    text = (doc or "").strip()
    parse = argparse.ArgumentParser(
        description=text.split("\n\n")[0],
        epilog="\n\n".join(text.split("\n\n")[1:]) or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parse.add_argument(
        "--dsn",
        default=None,
        help="PostgreSQL URL (default: $BATCHWORKS_BENCH_DSN, $BATCHWORKS_TEST_DSN, or "
        f"{DEFAULT_DSN}); loopback or a local socket only",
    )
    parse.add_argument("--quick", action="store_true", help="a few seconds, for CI: checks it runs")
    parse.add_argument(
        "--uvloop", action="store_true", help="run the measured event loops on uvloop"
    )
    parse.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parse


def dsn_of(args: argparse.Namespace) -> str:
    dsn: str = (
        args.dsn
        or os.environ.get("BATCHWORKS_BENCH_DSN")
        or os.environ.get("BATCHWORKS_TEST_DSN")
        or DEFAULT_DSN
    )
    host = urlsplit(dsn).hostname or ""
    if host not in LOOPBACK and not host.startswith("/"):
        sys.exit(f"error: benchmarks run against this machine only; {host!r} is not loopback")
    return dsn


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


def loop_name(use_uvloop: bool) -> str:
    return "uvloop" if use_uvloop else "asyncio"


def run(main: Any, *, use_uvloop: bool = False) -> Any:
    """asyncio.run, or uvloop's loop when asked for."""
    if use_uvloop:
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def uvloop_installed() -> bool:
    return installed("uvloop")


# -- scratch space --------------------------------------------------------------------------------
#
# Names end in ``_p<pid>`` of the benchmark process, so two runs on one server (a full run and
# the test suite's quick ones) never drop each other's tables. Whatever a killed run left behind
# is dropped by the next run, once no process has that pid.

_STALE = re.compile(r"bench_\w+_p(\d+)")


def scratch_name(base: str) -> str:
    return f"{base}_p{os.getpid()}"


def _stale(name: str) -> bool:
    match = _STALE.fullmatch(name)
    return match is not None and not Path(f"/proc/{match[1]}").exists()


async def _drop_stale(conn: asyncpg.Connection) -> None:
    for row in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench%'"):
        if _stale(row[0]):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{row[0]}" CASCADE')
    for row in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'bench%'"):
        if _stale(row[0]):
            await conn.execute(f'DROP DATABASE IF EXISTS "{row[0]}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def scratch_schema(dsn: str, base: str) -> AsyncIterator[str]:
    """A schema name of this run's own (``base_p<pid>``); yields it, drops it at the end."""
    schema = scratch_name(base)
    conn = await asyncpg.connect(dsn)
    try:
        await _drop_stale(conn)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        yield schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_database(dsn: str, base: str) -> AsyncIterator[str]:
    """A database of its own (for the peers), created fresh and dropped at the end."""
    database = scratch_name(base)
    conn = await asyncpg.connect(dsn)
    try:
        await _drop_stale(conn)
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{database}"')
        yield with_database(dsn, database)
    finally:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.close()


async def server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


async def describe_machine(dsn: str, use_uvloop: bool) -> str:
    cpu = cpu_model()
    return (
        f"machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"PostgreSQL {await server_version(dsn)}, event loop {loop_name(use_uvloop)}"
    )


# -- worker processes -----------------------------------------------------------------------------


@dataclass(slots=True)
class WorkerResult:
    """What one worker process reported: its clock at go and at empty, and jobs it ran."""

    start: float
    end: float
    done: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Drain:
    """One drain by one or more worker processes."""

    system: str
    jobs: int
    seconds: float
    done: int
    workers: list[WorkerResult]
    rss_samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else float("nan")


def worker_command(system: str, dsn: str, **options: Any) -> list[str]:
    command = [sys.executable, str(BENCH / "_workers.py"), system, "--dsn", dsn]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        command += [flag] if value is True else [flag, str(value)]
    return command


async def run_workers(
    commands: Sequence[list[str]],
    *,
    within: float,
    sample_rss: float | None = None,
    on_line: Any = None,
) -> tuple[list[WorkerResult], list[tuple[float, int]]]:
    """Start worker processes, wait until each says ``ready``, say ``go`` to all at once, and
    collect the ``result`` line each prints when its queue is empty.

    :param within: seconds the drain may take, after go, before the workers are killed.
    :param sample_rss: sample the first worker's resident memory every this many seconds.
    :param on_line: called with each other line a worker prints (for the latency benchmark).
    """
    procs = [
        await asyncio.create_subprocess_exec(
            *command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        for command in commands
    ]
    try:
        async with asyncio.timeout(WORKER_START_TIMEOUT):
            for proc in procs:
                await _expect(proc, "ready")
        samples: list[tuple[float, int]] = []
        sampler = None
        if sample_rss:
            sampler = asyncio.create_task(_sample_rss(procs[0].pid, sample_rss, samples))
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
        async with asyncio.timeout(within):
            results = await asyncio.gather(*(_result(proc, on_line) for proc in procs))
            for proc in procs:
                await proc.wait()
        if sampler is not None:
            sampler.cancel()
        for proc in procs:
            if proc.returncode != 0:
                raise RuntimeError(f"worker {proc.pid} exited {proc.returncode}")
        return list(results), samples
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _expect(proc: asyncio.subprocess.Process, word: str) -> None:
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {proc.pid} exited before it said {word!r}")
        if line.decode().strip() == word:
            return


async def _result(proc: asyncio.subprocess.Process, on_line: Any) -> WorkerResult:
    assert proc.stdout is not None
    while True:
        line = (await proc.stdout.readline()).decode()
        if not line:
            raise RuntimeError(f"worker {proc.pid} exited without a result")
        if line.startswith("result "):
            data = json.loads(line[len("result ") :])
            return WorkerResult(data.pop("start"), data.pop("end"), data.pop("done"), data)
        if on_line is not None:
            on_line(line.rstrip("\n"))


def rss_of(pid: int) -> int | None:
    """Resident set size of a process in bytes, from /proc (Linux), or None if it is gone."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


async def _sample_rss(pid: int, every: float, into: list[tuple[float, int]]) -> None:
    while True:
        rss = rss_of(pid)
        if rss is not None:
            into.append((time.monotonic(), rss))
        await asyncio.sleep(every)


def summarize(system: str, jobs: int, results: list[WorkerResult]) -> Drain:
    start = min(result.start for result in results)
    end = max(result.end for result in results)
    return Drain(system, jobs, end - start, sum(r.done for r in results), results)


# -- printing -------------------------------------------------------------------------------------


def rate(value: float) -> str:
    return f"{value:>10,.0f} jobs/s"


def ratio_line(name: str, value: float, reference: float, target: str | None = None) -> str:
    """``ratio NAME: 0.83x (target >= 0.7x: met)``: the line CI looks for."""
    ratio = value / reference if reference else float("nan")
    line = f"ratio {name}: {ratio:.2f}x"
    if target is not None:
        op, _, number = target.partition(" ")
        met = ratio >= float(number) if op == ">=" else ratio <= float(number)
        line += f" (target {target}x: {'met' if met else 'MISSED'})"
    return line


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_json(path: Path | None, name: str, figures: dict[str, Any]) -> None:
    """Write the figures to ``path``, and always to ``bench/results/NAME.json`` in full runs."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, **figures}, indent=2, default=str) + "\n")
