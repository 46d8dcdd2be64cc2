"""A worker process for the chaos and bad-input suites:
``python -m tests.support.worker CONFIG_JSON``.

CONFIG_JSON holds ``dsn``, ``schema``, ``name`` and optional settings:

- ``backend_dsn``: where the backend connects, when not ``dsn`` (a proxy that black-holes
  the network); the effects pool always uses ``dsn``, so the ledger stays exact

- ``runner``: keyword arguments for :class:`Runner` (``concurrency``, ``prune_after``...)
- ``queues``: the queues it serves, all with the handler below (default ``["q"]``)
- ``retry_wait`` / ``max_attempts``: the retry policy (a fixed wait, in seconds)
- ``ms_scale``: a factor on every job's duration (``{"ms": 20}`` runs ``20 * ms_scale`` ms)
- ``echo``: handlers return the payload itself and do nothing else (bad-input runs)
- ``effects_payload``: each effect row also records the md5 of the payload it ran, and a
  success returns that payload in its result (``ran``): the ledger then tells an execution of
  a job lost in a failover, and its outcome, from those of the job that reuses its id
- ``max_payload_bytes``, ``pool_max``, ``connect_options``, ``listen_dsn``: backend settings
- ``audit_handovers``: before each claim that hands over the slots of ended jobs (#14), it
  records them in the schema's ``handovers`` table (:mod:`tests.support.slots`), stamped then
- ``effects_dsn``: where the effects are written (default ``dsn``), when ``dsn`` goes through
  a pooler under test
- ``max_payload_bytes``, ``pool_max``: backend settings
- ``schedules``: keyword arguments of :class:`Schedule` objects the runner carries
- ``inject``: faults the process inflicts on itself, from inside the backend calls:
  ``{"point": "claim:after", "nth": 3, "seed": 7}`` kills it with SIGKILL around the nth claim
  (or settle, or ``ticks``: a schedule's tick claim): ``before`` the statement, ``during`` it
  (a timer of 0-3 ms) or 0-50 ms ``after`` it; ``{"kill_after_settled": 25}`` kills it right
  after the settle that brings the outcomes it wrote to 25 or more; ``{"settle_delay": 0.5}``
  holds every settle that long after printing ``settle-pending <n>`` (a slow network).

The environment variable ``BATCHWORKS_CHAOS_SKEW`` (seconds) moves this process's wall clock
(``time.time``, ``datetime.now``) before batchworks is imported: lease and prune arithmetic
must not notice.

It prints ``ready <pid> <time.time()>`` once registered, then runs until SIGTERM/SIGINT (or
until it finds itself pruned), then prints ``report <json>`` and exits 0.

Each handler call that reaches its end records ``(job_id, attempt, pid, started_at)`` in the
schema's ``effects`` table, in a transaction of its own on a pool of its own, before it returns
(or raises on purpose); ``started_at`` is the machine's real time when the call began. What
a job does comes
from its payload (a dict; anything else just returns):

- ``{"ms": 20}``: sleeps 20 ms; ``{"mark": true}`` also writes a "start" row in faults first
- ``{"fail": 2}``: raises ``Retryable`` on attempts 1-2; ``{"fail": "terminal"}``: ``Terminal``
- ``{"hang": 1}``: awaits forever on attempts 1..1 (a job timeout ends it)
- ``{"block": 3, "until": 1}``: blocks the event loop for 3 s on attempts 1..1
- ``{"poison": "kill"}``: kills its own process (SIGKILL) on every attempt
- ``{"poison": "raise"}``: raises ``RuntimeError`` on every attempt
"""

from __future__ import annotations

import os
import time

_SKEW = float(os.environ.get("BATCHWORKS_CHAOS_SKEW", "0") or 0)


def _skew_clock(skew: float) -> None:
    """Move the wall clock of this process by ``skew`` seconds, before anything imports it."""
    import datetime as dt

    real_time, real_time_ns = time.time, time.time_ns
    time.time = lambda: real_time() + skew  # type: ignore[assignment]
    time.time_ns = lambda: real_time_ns() + int(skew * 1e9)  # type: ignore[assignment]
    real = dt.datetime

    class SkewedDatetime(real):  # type: ignore[valid-type,misc]
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def]
            return real.now(tz) + dt.timedelta(seconds=skew)

        @classmethod
        def utcnow(cls):  # type: ignore[no-untyped-def]
            return real.utcnow() + dt.timedelta(seconds=skew)

        @classmethod
        def today(cls):  # type: ignore[no-untyped-def]
            return cls.now()

    dt.datetime = SkewedDatetime  # type: ignore[misc]


if _SKEW:
    _skew_clock(_SKEW)

import asyncio  # noqa: E402 - after the clock is skewed
import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Awaitable, Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import asyncpg  # noqa: E402
import tenacity  # noqa: E402

from batchworks import (  # noqa: E402
    Job,
    PostgresBackend,
    Retryable,
    RetryPolicy,
    Runner,
    Schedule,
    Terminal,
)
from batchworks.backends.base import ClaimedJob, WorkerToken  # noqa: E402
from batchworks.outcome import Outcome  # noqa: E402


def wall_clock() -> float:
    """The machine's real time, which the skew leaves alone: effects are stamped with it."""
    return time.clock_gettime(time.CLOCK_REALTIME)


def tasks_on_sigusr1() -> None:
    """On SIGUSR1, write every asyncio task and its chain of awaits to stderr (the worker's
    log), then the line the harness waits for (tests/support/harness.py: a hung worker's
    stacks)."""
    loop = asyncio.get_running_loop()

    def chain(awaited: Any) -> list[str]:
        lines = []
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is None:  # a future, or a coroutine that ended: where the chain stops
                lines.append(f"    waits on {awaited!r:.300}")
                break
            code = frame.f_code
            lines.append(f"    {code.co_filename}:{frame.f_lineno} {code.co_qualname}")
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
        return lines

    def dump() -> None:
        for task in asyncio.all_tasks(loop):
            lines = [f"task {task.get_name()}:", *chain(task.get_coro())]
            sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.write("-- end of tasks --\n")
        sys.stderr.flush()

    loop.add_signal_handler(signal.SIGUSR1, dump)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class ChaosBackend(PostgresBackend):
    """The real backend, plus faults this process inflicts on itself and a log of its settles."""

    def __init__(self, dsn: str, *, inject: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(dsn, **kwargs)
        self.inject = inject
        self.calls = {"claim": 0, "settle": 0, "ticks": 0}
        self.settled = 0
        #: [monotonic time the settle was sent, outcomes, rows it changed (None: no answer),
        #: the worker token it was fenced by]
        self.settles: list[list[Any]] = []
        self.rng = random.Random(inject.get("seed"))
        #: called with the ended outcomes a claim is about to hand over (audit_handovers)
        self.on_handover: Callable[[Sequence[Outcome]], Awaitable[None]] | None = None

    def audit_handovers(self, pool: asyncpg.Pool, schema: str, *, on: bool) -> None:
        """With ``on``, record the slots each claim hands over in ``handovers``, first."""
        if on:
            self.on_handover = functools.partial(_record_handover, pool, schema)

    def _fault(self, op: str, stage: str) -> None:
        point = self.inject.get("point", "")
        if point.partition(":")[0] != op or self.calls[op] < self.inject.get("nth", 1):
            return
        where = point.partition(":")[2]
        if stage == "before" and where == "before":
            _die()
        elif stage == "before" and where == "during":
            threading.Timer(self.rng.uniform(0, 0.003), _die).start()
        elif stage == "after" and where == "after":
            asyncio.get_running_loop().call_later(self.rng.uniform(0, 0.05), _die)

    async def claim(  # type: ignore[override]
        self,
        worker: WorkerToken,
        queues: Sequence[str],
        limit: int,
        *,
        ended: Sequence[Outcome] = (),
        **kwargs: Any,
    ) -> list[ClaimedJob]:
        self.calls["claim"] += 1
        if ended and self.on_handover is not None:
            await self.on_handover(ended)  # before the claim: its time bounds the handover's
        self._fault("claim", "before")
        jobs = await super().claim(worker, queues, limit, ended=ended, **kwargs)
        if jobs:
            self._fault("claim", "after")
        return jobs

    async def claim_ticks(self, name: str, **kwargs: Any) -> Any:  # type: ignore[override]
        self.calls["ticks"] += 1
        self._fault("ticks", "before")
        claim = await super().claim_ticks(name, **kwargs)
        self._fault("ticks", "after")
        return claim

    async def settle(  # type: ignore[override]
        self, worker: WorkerToken, outcomes: Sequence[Outcome], *args: Any, **kwargs: Any
    ) -> list[int]:
        self.calls["settle"] += 1
        delay = self.inject.get("settle_delay")
        if delay:
            # A slow network: the test can SIGSTOP the process while this settle is pending.
            print(f"settle-pending {len(outcomes)}", flush=True)  # noqa: T201 - read by the test
            await asyncio.sleep(delay)
        self._fault("settle", "before")
        entry = [time.monotonic(), len(outcomes), None, str(worker)]
        self.settles.append(entry)  # its rows stay None if the call never returns
        lost = await super().settle(worker, outcomes, *args, **kwargs)
        changed = entry[2] = len(outcomes) - len(lost)
        self.settled += changed
        self._fault("settle", "after")
        limit = self.inject.get("kill_after_settled")
        if limit is not None and self.settled >= limit:
            print(f"settled {self.settled}", flush=True)  # noqa: T201 - read by the test
            _die()
        return lost


async def _record_handover(pool: asyncpg.Pool, schema: str, ended: Sequence[Outcome]) -> None:
    await pool.execute(
        f'INSERT INTO "{schema}".handovers (job_id, claimed_at, at) '
        "SELECT id, claimed_at, clock_timestamp() "
        "FROM unnest($1::bigint[], $2::timestamptz[]) AS h(id, claimed_at)",
        [o.job_id for o in ended],
        [o.claimed_at for o in ended],
    )


def _with_app_name(dsn: str, app: str) -> str:
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}application_name={app}"


async def main(config: dict[str, Any]) -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    tasks_on_sigusr1()
    dsn, schema, name = config["dsn"], config["schema"], config["name"]
    pid = os.getpid()
    effects = await asyncpg.create_pool(  # the ledger's own: straight to PostgreSQL
        _with_app_name(config.get("effects_dsn", dsn), f"chaos-fx-{name}-{pid}"),
        min_size=1,
        max_size=4,
    )
    scale = float(config.get("ms_scale", 1.0))
    echo = bool(config.get("echo", False))
    record = (
        f'INSERT INTO "{schema}".effects (job_id, attempt, pid, worker, outcome, started_at, '
        "payload_md5) VALUES ($1, $2, $3, $4, $5, to_timestamp($6), md5($7::jsonb::text))"
    )
    with_payload = bool(config.get("effects_payload", False))
    fault = f'INSERT INTO "{schema}".faults (pid, kind, at) VALUES ($1, $2, clock_timestamp())'

    async def effect(job: Job, began: float, outcome: str) -> None:
        payload = json.dumps(job.payload) if with_payload else None
        await effects.execute(record, job.id, job.attempt, pid, name, outcome, began, payload)

    async def handler(job: Job) -> Any:
        began = wall_clock()
        if echo:  # bad-input runs: whatever the payload holds, it is data
            await effect(job, began, "ok")
            return job.payload
        spec = job.payload if isinstance(job.payload, dict) else {}
        poison = spec.get("poison")
        if spec.get("mark"):
            await effects.execute(fault, pid, "start")  # a mark: the test waits for it
        if poison == "kill":
            await effects.execute(fault, pid, "poison-kill")
            _die()
        if "hang" in spec and job.attempt <= spec["hang"]:
            await effects.execute(fault, pid, "hang")  # a mark, not a fault: the worker is fine
            await asyncio.Event().wait()
        if "block" in spec and job.attempt <= spec.get("until", 1):
            await effects.execute(fault, pid, "block")
            time.sleep(spec["block"])  # noqa: ASYNC251 - blocks the loop, on purpose
        if "ms" in spec:
            await asyncio.sleep(spec["ms"] * scale / 1000)
        failing = spec.get("fail")
        if (
            poison == "raise"
            or failing == "terminal"
            or (isinstance(failing, int) and job.attempt <= failing)
        ):
            await effect(job, began, "raise")
            if failing == "terminal":
                raise Terminal("planned terminal failure")
            if poison == "raise":
                raise RuntimeError("poison: always raises")
            raise Retryable("planned failure", delay=spec.get("retry_delay"))
        await effect(job, began, "ok")
        if with_payload:
            return {"pid": pid, "attempt": job.attempt, "ran": job.payload}
        return {"pid": pid, "attempt": job.attempt}

    policy = RetryPolicy(
        max_attempts=int(config.get("max_attempts", 5)),
        wait=tenacity.wait_fixed(float(config.get("retry_wait", 0.05))),
    )
    backend = ChaosBackend(
        _with_app_name(config.get("backend_dsn", dsn), f"chaos-bw-{name}-{pid}"),
        schema=schema,
        inject=config.get("inject", {}),
        max_size=int(config.get("pool_max", 10)),
        **{
            key: config[key]
            for key in ("max_payload_bytes", "connect_options", "listen_dsn")
            if key in config
        },
    )
    backend.audit_handovers(effects, schema, on=bool(config.get("audit_handovers")))
    async with backend:
        handlers = {queue: handler for queue in config.get("queues", ["q"])}
        schedules = [Schedule(**spec) for spec in config.get("schedules", [])]
        runner = Runner(
            backend,
            handlers,
            worker_name=name,
            retry=policy,
            schedules=schedules or None,
            **config["runner"],
        )
        task = asyncio.create_task(runner.run())
        await runner.wait_ready()
        print(f"ready {pid} {time.time()}", flush=True)  # noqa: T201 - the line tests wait for
        await task
        report = runner.report
    await effects.close()
    summary = {
        "succeeded": report.succeeded,
        "failed": report.failed,
        "retried": report.retried,
        "released": report.released,
        "lost": report.lost,
        "settles": backend.settles,
    }
    print(f"report {json.dumps(summary)}", flush=True)  # noqa: T201 - read by the test


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
