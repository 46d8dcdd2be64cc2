"""The ledger of a chaos scenario and the checker that judges it, Jepsen-style.

Worker handlers write one row per execution into ``effects`` (see :mod:`tests.support.worker`);
the test and the workers write one row per fault into ``faults``. Once the faults stop and the
queue is drained, :meth:`Ledger.check` classifies every job:

- lost: enqueued (and expected to succeed), but never succeeded with a recorded execution;
- duplicated: executed successfully more than once;
- unexpected: executed, but never enqueued by this test;
- foreign: executions of a job the database no longer has, as after a failover to a standby
  that lagged: the job is gone, or its id now names another job (the effect row carries the
  md5 of the payload it ran, where the worker was asked to record it). They are set apart,
  never counted as an execution of the job that holds the id now;

and checks the invariants: nothing left queued or running, ``attempts <= max_attempts``, every
superseded execution started before a fault hit its worker, and no final state written by a
worker that had lost its lease (the result names the writer's pid and attempt, which must be
the job's last claim; error entries never repeat an attempt).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

TABLES = """
CREATE TABLE "{schema}".effects (
    job_id     bigint      NOT NULL,
    attempt    integer     NOT NULL,
    pid        integer     NOT NULL,
    worker     text        NOT NULL,
    outcome    text        NOT NULL,
    started_at timestamptz NOT NULL,
    done_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    payload_md5 text
);
CREATE TABLE "{schema}".faults (
    pid  integer     NOT NULL,
    kind text        NOT NULL,
    at   timestamptz NOT NULL
);
"""

#: rows of ``faults`` that mark an event without hurting the worker (no duplicate is excused)
MARKS = frozenset({"hang", "start"})


@dataclass
class Verdict:
    """What the checker found; :meth:`problems` lists every broken invariant."""

    enqueued: int
    expected_failed: int
    states: dict[str, int]
    lost: list[int]
    duplicated: list[int]
    unexpected: list[int]
    left_running: list[int]
    left_queued: list[int]
    over_attempts: list[int]
    unjustified: list[tuple[int, int, int]]  # (job, attempt, pid) of a superseded execution
    stale_writes: list[int]
    executions: int
    #: (job, attempt, pid) of executions of a job the database no longer has
    foreign: list[tuple[int, int, int]]
    attempts_histogram: dict[int, int]
    throughput: float
    window: float
    notes: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = []
        for name in ("lost", "unexpected", "left_running", "left_queued", "over_attempts"):
            ids = getattr(self, name)
            if ids:
                found.append(f"{name}: {len(ids)} jobs, e.g. {sorted(ids)[:10]}")
        if self.unjustified:
            found.append(
                f"{len(self.unjustified)} superseded executions started after the last fault "
                f"that hit their worker (job, attempt, pid): {self.unjustified[:10]}"
            )
        if self.stale_writes:
            found.append(
                f"{len(self.stale_writes)} jobs whose final state was written by a worker that "
                f"had lost their lease, e.g. {self.stale_writes[:10]}"
            )
        return found + self.notes

    def assert_ok(self, *, duplicates_allowed: bool = True) -> None:
        problems = self.problems()
        if not duplicates_allowed and self.duplicated:
            problems.append(
                f"duplicated: {len(self.duplicated)} jobs ran more than once, "
                f"e.g. {self.duplicated[:10]}"
            )
        assert not problems, "ledger check failed:\n  " + "\n  ".join(problems) + f"\n{self}"

    def figures(self) -> dict[str, Any]:
        return {
            "jobs": self.enqueued + self.expected_failed,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unexpected": len(self.unexpected),
            "executions": self.executions,
            "foreign": len(self.foreign),
            "throughput": round(self.throughput, 1),
        }


class Ledger:
    """The effects and faults of one scenario, in the scenario's schema."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        #: job ids that must end succeeded
        self.expected: set[int] = set()
        #: job ids that must end failed (poison jobs)
        self.expected_failed: set[int] = set()

    @classmethod
    async def create(cls, dsn: str, schema: str) -> Ledger:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        await pool.execute(TABLES.format(schema=schema))
        return cls(pool, schema)

    async def close(self) -> None:
        await self.pool.close()

    def expect(self, ids: Iterable[int], *, failed: bool = False) -> None:
        (self.expected_failed if failed else self.expected).update(ids)

    async def fault(self, pid: int, kind: str, at: float | None = None) -> None:
        """Record that a fault hit process ``pid`` at ``at`` (default: now)."""
        when = datetime.fromtimestamp(time.time() if at is None else at, UTC)
        await self.pool.execute(
            f'INSERT INTO "{self.schema}".faults (pid, kind, at) VALUES ($1, $2, $3)',
            pid,
            kind,
            when,
        )

    async def faults(self) -> list[asyncpg.Record]:
        return list(await self.pool.fetch(f'SELECT * FROM "{self.schema}".faults ORDER BY at'))

    async def count(self, where: str, *args: Any) -> int:
        query = f'SELECT count(*) FROM "{self.schema}".jobs WHERE {where}'
        return int(await self.pool.fetchval(query, *args))

    async def settled(self) -> int:
        """Jobs this ledger expects that reached a final state."""
        ids = list(self.expected | self.expected_failed)
        return await self.count("id = ANY($1) AND state IN ('succeeded', 'failed')", ids)

    async def drained(self) -> bool:
        return await self.settled() == len(self.expected | self.expected_failed)

    async def held_by(self, pid: int) -> list[tuple[int, Any]]:
        """(job id, token) of the jobs running under the worker process ``pid``."""
        rows = await self.pool.fetch(
            f'SELECT j.id, j.worker_token FROM "{self.schema}".jobs AS j '
            f'JOIN "{self.schema}".workers AS w ON w.token = j.worker_token '
            "WHERE j.state = 'running' AND w.pid = $1",
            pid,
        )
        return [(row["id"], row["worker_token"]) for row in rows]

    async def still_held(self, held: list[tuple[int, Any]]) -> int:
        """How many of ``held`` still run under the same token."""
        if not held:
            return 0
        return int(
            await self.pool.fetchval(
                f'SELECT count(*) FROM "{self.schema}".jobs AS j '
                "JOIN unnest($1::bigint[], $2::uuid[]) AS h(id, token) ON h.id = j.id "
                "WHERE j.state = 'running' AND j.worker_token = h.token",
                [job for job, _ in held],
                [token for _, token in held],
            )
        )

    async def check(self) -> Verdict:
        s = self.schema
        jobs = {
            row["id"]: row
            for row in await self.pool.fetch(
                f"SELECT id, state, attempts, max_attempts, result, errors, "
                "md5(payload::text) AS payload_md5, "
                # a result naming the payload it ran ("ran": effects_payload) must name this one
                "CASE WHEN jsonb_typeof(result) = 'object' THEN "
                "coalesce(result -> 'ran' <> payload, false) ELSE false END AS result_foreign "
                f'FROM "{s}".jobs'
            )
        }
        effects, strangers = _split_foreign(
            jobs,
            await self.pool.fetch(
                f"SELECT job_id, attempt, pid, outcome, started_at, done_at, payload_md5 "
                f'FROM "{s}".effects'
            ),
        )
        unjustified: list[tuple[int, int, int]] = []
        faults: dict[int, list[datetime]] = {}
        for row in await self.faults():
            if row["kind"] not in MARKS:
                faults.setdefault(row["pid"], []).append(row["at"])

        foreign = [(row["job_id"], row["attempt"], row["pid"]) for row in strangers]
        unjustified.extend(  # a job gone under a worker that no fault hit: a bug
            (row["job_id"], row["attempt"], row["pid"])
            for row in strangers
            if not any(at >= row["started_at"] for at in faults.get(row["pid"], []))
        )
        ok: dict[int, list[asyncpg.Record]] = {}
        for row in effects:
            if row["outcome"] == "ok":
                ok.setdefault(row["job_id"], []).append(row)
        known = self.expected | self.expected_failed
        states: dict[str, int] = {}
        histogram: dict[int, int] = {}
        lost, stale, over = [], [], []
        for job_id in sorted(known):
            row = jobs.get(job_id)
            if row is None:
                lost.append(job_id)
                continue
            states[row["state"]] = states.get(row["state"], 0) + 1
            histogram[row["attempts"]] = histogram.get(row["attempts"], 0) + 1
            if row["max_attempts"] is not None and row["attempts"] > row["max_attempts"]:
                over.append(job_id)
            if _stale_write(row, ok.get(job_id, [])):
                stale.append(job_id)
            if job_id in self.expected and (row["state"] != "succeeded" or job_id not in ok):
                lost.append(job_id)
            final = _final_execution(row)
            for execution in ok.get(job_id, []):
                if (execution["attempt"], execution["pid"]) == final:
                    continue
                hits = faults.get(execution["pid"], [])
                if not any(at >= execution["started_at"] for at in hits):
                    unjustified.append((job_id, execution["attempt"], execution["pid"]))
        starts = [row["started_at"] for row in effects]
        ends = [row["done_at"] for row in effects]
        window = (max(ends) - min(starts)).total_seconds() if effects else 0.0
        good = sum(1 for job_id in self.expected if job_id in ok)
        return Verdict(
            enqueued=len(self.expected),
            expected_failed=len(self.expected_failed),
            states=states,
            lost=lost,
            duplicated=sorted(job_id for job_id, rows in ok.items() if len(rows) > 1),
            unexpected=sorted({row["job_id"] for row in effects} - known),
            left_running=[j for j in known if j in jobs and jobs[j]["state"] == "running"],
            left_queued=[j for j in known if j in jobs and jobs[j]["state"] == "queued"],
            over_attempts=over,
            unjustified=unjustified,
            stale_writes=stale,
            executions=len(effects),
            foreign=sorted(foreign),
            attempts_histogram=dict(sorted(histogram.items())),
            throughput=good / window if window > 0 else 0.0,
            window=window,
        )


def _split_foreign(
    jobs: dict[int, asyncpg.Record], rows: Iterable[asyncpg.Record]
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """The effect rows of the jobs in ``jobs``, and those of an execution of another payload
    (a job gone, or whose id names another job now), by the payload's md5 where recorded."""
    own, foreign = [], []
    for row in rows:
        job = jobs.get(row["job_id"])
        recorded = row["payload_md5"]
        if recorded is not None and (job is None or job["payload_md5"] != recorded):
            foreign.append(row)
        else:
            own.append(row)
    return own, foreign


def _final_execution(row: asyncpg.Record) -> tuple[int, int] | None:
    """(attempt, pid) of the execution whose outcome the job's succeeded state holds."""
    if row["state"] != "succeeded" or row["result"] is None:
        return None
    result = json.loads(row["result"])
    if not isinstance(result, dict) or "pid" not in result:
        return None
    return result["attempt"], result["pid"]


def _stale_write(row: asyncpg.Record, ok: list[asyncpg.Record]) -> bool:
    """True when the job's final state came from a worker that no longer held the job."""
    if row["result_foreign"]:
        return True  # the outcome of an execution of another job that had the same id
    errors = json.loads(row["errors"])
    attempts = [entry["attempt"] for entry in errors]
    if attempts != sorted(set(attempts)):
        return True  # a late worker appended an entry for an attempt already recorded
    if row["state"] == "failed" and errors and errors[-1]["attempt"] != row["attempts"]:
        return True
    final = _final_execution(row)
    if row["state"] == "succeeded" and final is not None:
        attempt, pid = final
        if attempt != row["attempts"]:
            return True
        if not any((e["attempt"], e["pid"]) == (attempt, pid) for e in ok):
            return True
    return False
