"""Worker processes, their faults, the scale of a run, and the figures it reports.

``BATCHWORKS_CHAOS_SCALE`` picks the size of every scenario: ``ci`` (the default: small counts
and durations, so the whole chaos set adds a few minutes to ``make test``) or ``full`` (the
numbers of issue #5, run by ``make chaos``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from tests.pgserver import _pg_bin
from tests.support.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]
SCALE = os.environ.get("BATCHWORKS_CHAOS_SCALE", "ci")
if SCALE not in ("ci", "full"):
    raise RuntimeError(f"BATCHWORKS_CHAOS_SCALE must be 'ci' or 'full', got {SCALE!r}")
FULL = SCALE == "full"

T = TypeVar("T")

#: the line a worker ends its dump of asyncio tasks with (tests/support/worker.py)
TASKS_END = "-- end of tasks --"


def pick(ci: T, full: T) -> T:
    """The value for this run's scale."""
    return full if FULL else ci


# -- figures ------------------------------------------------------------------------------------

#: one dict per scenario that ran, in order; printed at the end of the session
FIGURES: list[dict[str, Any]] = []


def record_figures(scenario: str, **figures: Any) -> None:
    """Keep the figures of one scenario for the session's summary."""
    FIGURES.append({"scenario": scenario, "scale": SCALE, **figures})


def print_figures(reporter: pytest.TerminalReporter) -> None:
    """Print the figures of the session once (both suites' conftests call this), and write
    them as JSON to ``$BATCHWORKS_CHAOS_FIGURES`` when that is set."""
    if not FIGURES or _printed:
        return
    _printed.append(True)
    reporter.section(f"chaos and bad-input figures (BATCHWORKS_CHAOS_SCALE={SCALE})")
    for entry in FIGURES:
        rest = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("scenario", "scale"))
        reporter.write_line(f"{entry['scenario']}: {rest}")
    path = os.environ.get("BATCHWORKS_CHAOS_FIGURES")
    if path:
        Path(path).write_text(json.dumps(FIGURES, indent=2, default=str) + "\n")
        reporter.write_line(f"figures written to {path}")


_printed: list[bool] = []


def describe(values: list[float]) -> str:
    """'max 1.23 s, median 0.45 s (n=7)' for a list of durations."""
    if not values:
        return "-"
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    return f"max {ordered[-1]:.2f} s, median {median:.2f} s (n={len(ordered)})"


# -- worker processes ---------------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """One worker process started by a :class:`Fleet`."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    ready: bool = False
    #: the wall clock the worker printed with its ready line (skew tests check it)
    clock: float | None = None
    report: dict[str, Any] | None = None
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    #: signals the test sent it, by name
    signals: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def send(self, sig: signal.Signals) -> None:
        self.signals.append(sig.name)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def exit_code(self, within: float) -> int:
        try:
            async with asyncio.timeout(within):
                code = await self.proc.wait()
        except TimeoutError:
            pytest.fail(
                f"worker {self.name} (pid {self.pid}) did not exit within {within}s; where its "
                f"tasks wait:\n{await self.task_stacks()}"
            )
        if self.reader is not None:
            await self.reader
        return code

    async def task_stacks(self, within: float = 5.0) -> str:
        """The worker's asyncio tasks and where each waits, which it writes to its log on
        SIGUSR1 (``tasks_on_sigusr1`` in tests/support/worker.py): for a worker that hangs,
        what it hangs on."""
        before = len(self.stderr())
        self.send(signal.SIGUSR1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while TASKS_END not in self.stderr()[before:]:  # a file: nothing to await but a poll
            if loop.time() > deadline:
                return f"(no answer to SIGUSR1 within {within}s: is its event loop blocked?)"
            await asyncio.sleep(0.1)
        return self.stderr()[before:]

    async def wait_line(self, prefix: str, *, after: int = 0, within: float = 20.0) -> str:
        """The first line starting with ``prefix`` among the lines printed after the first
        ``after``; waits for it."""

        def found() -> str | None:
            return next((ln for ln in self.lines[after:] if ln.startswith(prefix)), None)

        await poll(lambda: found() is not None, within=within, every=0.002, what=prefix)
        line = found()
        assert line is not None
        return line

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


#: what a worker's stderr shows when something broke inside it
CRASH_SIGNS = (
    "exception was never retrieved",
    "Exception in callback",
    "Unhandled exception",
    "internal error while running job",
    "Fatal Python error",
)


class Fleet:
    """Starts worker processes (``tests.support.worker``) on one schema and cleans them up."""

    def __init__(self, dsn: str, schema: str, logs: Path, ledger: Ledger) -> None:
        self.dsn = dsn
        self.schema = schema
        self.logs = logs
        self.ledger = ledger
        self.defaults: dict[str, Any] = {}
        self.all: list[WorkerProcess] = []
        self.current: dict[str, WorkerProcess] = {}
        self.configs: dict[str, dict[str, Any]] = {}
        self._count = 0

    async def start(
        self,
        name: str,
        *,
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        **config: Any,
    ) -> WorkerProcess:
        """Start a worker named ``name``; wait for its ready line (or its death)."""
        self.configs[name] = {**config, "env": env}
        runner = {**self.defaults.get("runner", {}), **config.pop("runner", {})}
        full = {**self.defaults, **config, "runner": runner}
        full.update(dsn=self.dsn, schema=self.schema, name=name)
        self._count += 1
        log = self.logs / f"{name}.{self._count}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.worker",
                json.dumps(full),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env={**os.environ, **(env or {})},
            )
        worker = WorkerProcess(name, proc, log)
        ready = asyncio.Event()
        worker.reader = asyncio.create_task(self._read(worker, ready))
        self.all.append(worker)
        self.current[name] = worker
        if wait_ready:
            try:
                async with asyncio.timeout(30):
                    await ready.wait()
            except TimeoutError:
                pytest.fail(f"worker {name} did not print its ready line within 30 s")
        return worker

    async def _read(self, worker: WorkerProcess, ready: asyncio.Event) -> None:
        assert worker.proc.stdout is not None
        try:
            async for raw in worker.proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                worker.lines.append(line)
                if line.startswith("ready "):
                    worker.ready = True
                    worker.clock = float(line.split()[2])
                    ready.set()
                elif line.startswith("report "):
                    worker.report = json.loads(line.partition(" ")[2])
        finally:
            await worker.proc.wait()
            ready.set()  # a worker that died before it got ready wakes its starter too

    async def restart(self, name: str, *, wait_ready: bool = True) -> WorkerProcess:
        """Start ``name`` again with the settings it was last started with."""
        config = dict(self.configs[name])
        return await self.start(name, wait_ready=wait_ready, **config)

    async def kill(self, name: str) -> WorkerProcess:
        """SIGKILL the current process of ``name``, record the fault, wait for it to die."""
        worker = self.current[name]
        worker.send(signal.SIGKILL)
        await worker.exit_code(within=10)
        await self.ledger.fault(worker.pid, "sigkill")
        return worker

    async def died(self, worker: WorkerProcess) -> None:
        """Record a worker that killed itself (an injected fault) once it is gone."""
        await worker.exit_code(within=10)
        await self.ledger.fault(worker.pid, "self-kill")

    @contextlib.asynccontextmanager
    async def supervised(self) -> AsyncIterator[list[WorkerProcess]]:
        """Restart any current worker that dies (like systemd would), recording each death as
        a fault; yields the list of the dead, which grows."""
        dead: list[WorkerProcess] = []

        async def watch() -> None:
            while True:
                for name, worker in list(self.current.items()):
                    if worker.proc.returncode is not None:
                        dead.append(worker)
                        await self.ledger.fault(worker.pid, "died")
                        await self.restart(name)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        try:
            yield dead
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def stop_all(self, within: float = 20.0) -> dict[str, int]:
        """SIGTERM every live worker; return the exit codes by name."""
        live = [worker for worker in self.current.values() if worker.alive]
        for worker in live:
            worker.send(signal.SIGTERM)
        return {worker.name: await worker.exit_code(within=within) for worker in live}

    def crashes(self) -> list[str]:
        """Crashes, internal errors and unexpected exits of the workers, for an assertion
        message. (Tracebacks alone are no crash: asyncpg's pool logs one for each failed
        reconnect.)"""
        found = []
        for worker in self.all:
            text = worker.stderr()
            signs = [sign for sign in CRASH_SIGNS if sign in text]
            if signs:
                found.append(f"{worker.name} (pid {worker.pid}) logged {signs}:\n{text[-3000:]}")
            code = worker.proc.returncode
            killed = "SIGKILL" in worker.signals or code == -signal.SIGKILL
            if code not in (None, 0) and not killed:
                found.append(f"{worker.name} (pid {worker.pid}) exited with {code}")
        return found

    async def cleanup(self) -> None:
        for worker in self.all:
            if worker.alive:
                worker.send(signal.SIGKILL)
            with contextlib.suppress(Exception):
                await worker.exit_code(within=10)


async def poll(
    condition: Callable[[], Any], *, within: float, every: float = 0.02, what: str
) -> float:
    """Await ``condition()`` (sync or async) becoming true; return the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > within:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(every)


async def recovery_time(
    ledger: Ledger, held: list[tuple[int, Any]], *, since: float, within: float
) -> float:
    """Seconds from ``since`` (loop time of the fault) until none of ``held`` still runs under
    the token that held it."""

    async def released() -> bool:
        return await ledger.still_held(held) == 0

    await poll(released, within=within, what=f"{len(held)} jobs of a dead worker to move on")
    return asyncio.get_running_loop().time() - since


async def work_resumed(ledger: Ledger, *, since: float, within: float) -> float:
    """Wait for a job started after ``since`` (wall clock: a failover's kill) to finish; return
    the seconds it took. The ledger's connections may still be the dead server's until the pool
    replaces them: a look that fails counts as not yet."""

    async def resumed() -> bool:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            done = "started_at > to_timestamp($1) AND finished_at IS NOT NULL"
            return await ledger.count(done, since) > 0
        return False

    return await poll(resumed, within=within, what="work to resume after the failover")


# -- the PostgreSQL server ------------------------------------------------------------------------


async def restart_server(dsn: str) -> None:
    """``pg_ctl restart -m fast`` the (throwaway) cluster behind ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        data = await conn.fetchval("SHOW data_directory")
    finally:
        await conn.close()
    bindir = _pg_bin()
    assert bindir is not None
    prefix: list[str] = []
    if os.geteuid() == 0:  # as tests.pgserver started it: as the postgres user
        prefix = ["runuser", "-u", "postgres", "--"]
    log = os.path.join(os.path.dirname(data), "log")
    args = [*prefix, os.path.join(bindir, "pg_ctl"), "-D", data, "-w", "-m", "fast", "-l", log]
    proc = await asyncio.create_subprocess_exec(
        *args, "restart", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"pg_ctl restart failed: {out.decode(errors='replace')}"


APP_NAME = re.compile(r"chaos-bw-(?P<name>.+)-(?P<pid>\d+)$")


# -- the end of every scenario ------------------------------------------------------------------


async def settle_and_judge(ledger: Ledger, fleet: Fleet, *, within: float) -> Any:
    """Wait for every expected job to reach a final state, stop the workers gracefully, and
    return the ledger's verdict; fails on a worker crash or a non-zero exit."""
    await poll(ledger.drained, within=within, every=0.1, what="the queue to drain")
    codes = await fleet.stop_all()
    assert all(code == 0 for code in codes.values()), f"graceful stops must exit 0: {codes}"
    crashes = fleet.crashes()
    assert not crashes, "workers crashed:\n" + "\n".join(crashes)
    return await ledger.check()
