"""Scenario: failover to a promoted standby that lags (asynchronous replication).

Most deployments replicate asynchronously (a managed read replica promoted by hand, Patroni's
default ``synchronous_mode: false``): at promotion the new primary holds a *prefix* of the old
one's commits, as if the server had rolled back its last transactions. The test makes that lag
deterministic. The standby streams from the primary through the suite's TCP proxy
(``proxy.py``); the proxy is black-holed for a couple of seconds of busy work, then the
primary's postmaster is SIGKILLed and the standby promoted, the replication stream still cut: every
write of those seconds is gone. The LSNs prove the lag (the primary's WAL position past what
the standby received), and the rows prove the loss (acknowledged enqueues missing).

What the window holds, and what must follow on the new primary:

- enqueues: gone, though acknowledged (counted: ``acknowledged_lost`` > 0). A lost job's id may
  be drawn again for another job after the failover (a sequence is WAL-logged 32 values ahead,
  and the log record past the prefix is gone too), so the producer's jobs are matched by their
  payload, not their id;
- claims: jobs replicated while queued and due a second after the cut are claimed inside the
  window and still run at the kill: they are queued again on the new primary, their attempt
  unused, and run there (the first worker's heartbeat finds their leases gone and cancels
  them);
- settles: jobs long enough to be claimed (and replicated) before the window and settled inside
  it are ``running`` on the new primary under the token of worker ``a``, which is alive and has
  forgotten them: their leases must run out and recovery run them again (``prune_after`` 3 s);
- a registration: worker ``b`` starts inside the window, so its token does not exist on the
  new primary: its claims take nothing, its heartbeat says not alive, and it must register
  again and carry on, without a restart.

Then every job that exists on the new primary reaches a final state, both worker processes are
the ones started, and an idle worker is woken by NOTIFY on the new primary.

The ledger (``effects``, ``faults``) lives in the same cluster, so it is a prefix too. That stays
consistent: a handler records its effect before it returns, so before its settle, and the WAL is
one sequence; a settle that survived has its effect row, and a lost effect row belongs to an
execution whose settle was lost as well, whose job ran again and recorded the effect that
counts. An effect that survived beside a lost settle is a duplicate execution, which the
``failover`` fault recorded against both workers (at a time after the kill) justifies. And a
handler that ran a job across the failover records its effect on the new primary, where the
job may be gone or its id drawn again for another job: the effect rows carry the md5 of the
payload they ran, and successes the payload itself, so the ledger sets those executions apart
(``foreign``, justified by the same fault) and flags an outcome written onto a job that is
not the one that ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from batchworks import PostgresBackend
from tests.chaos.proxy import Proxy
from tests.conftest import IN_CI
from tests.pgcluster import STANDBY, Cluster, clusters, free_port, primary_and_standby
from tests.support.harness import (
    Fleet,
    pick,
    poll,
    record_figures,
    settle_and_judge,
    work_resumed,
)
from tests.support.ledger import Ledger

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(pick(120, 240))]

SCHEMA = "failover_async"
BEFORE = pick(200, 1500)  # jobs finished before the replication is cut
LAG = pick(2.0, 4.0)  # seconds of writes, at least, that the standby never receives
AFTER = pick(1.5, 5.0)  # seconds the producer goes on after the failover
PRUNE_AFTER = 3.0  # seconds: the lease of a job whose settle was lost runs out this soon
POLL_INTERVAL = 30.0  # seconds: long, so that only NOTIFY wakes an idle worker quickly
LONG = 6  # jobs claimed before the cut and settled inside the window
LONG_MS = 1200
STRADDLE = 4  # jobs due 1 s after the cut: claimed inside the window, running at the kill
STRADDLE_MS = 4000
FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Producer:
    """Enqueues batches until stopped; keeps (id, seq, i) of every job an enqueue returned and
    the sequence numbers of the batches whose enqueue raised (they may have committed)."""

    backend: PostgresBackend
    acknowledged: list[tuple[int, int, int]] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    #: loop time of each enqueue that returned
    returned_at: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        rng = random.Random(13)
        loop = asyncio.get_running_loop()
        for seq in itertools.count():
            if self.stop.is_set():
                return
            payloads = [{"ms": rng.randint(2, 20), "seq": seq, "i": i} for i in range(10)]
            try:
                ids = await self.backend.enqueue_many("q", payloads)
            except Exception:
                self.uncertain.append(seq)
                await asyncio.sleep(0.05)
                continue
            self.acknowledged.extend((job_id, seq, i) for i, job_id in enumerate(ids))
            self.returned_at.append(loop.time())
            await asyncio.sleep(0.04)


@pytest.fixture
async def lagging(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Cluster, Proxy]]:
    """An asynchronous primary and standby, the standby streaming through a proxy."""
    port = free_port()
    async with Proxy(f"postgresql://postgres@127.0.0.1:{port}/postgres") as proxy:
        through = urlsplit(proxy.dsn).port
        try:
            with clusters() as root:
                primary, standby = await asyncio.to_thread(
                    primary_and_standby,
                    root,
                    synchronous=False,
                    primary_port=port,
                    replication_port=through,
                )
                yield primary, standby, proxy
                return
        except RuntimeError as exc:
            if IN_CI:
                raise
            pytest.skip(f"no throwaway clusters: {exc}")


async def _jobs(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch(
        f'SELECT id, state, attempts, payload, errors, worker_name FROM "{SCHEMA}".jobs'
    )
    return {row["id"]: row for row in rows}


def _tag(row: asyncpg.Record | None) -> tuple[Any, Any] | None:
    """(seq, i) of a producer's job, from its payload."""
    if row is None:
        return None
    payload = json.loads(row["payload"])
    return payload.get("seq"), payload.get("i")


def _seq(row: asyncpg.Record) -> Any:
    return json.loads(row["payload"]).get("seq")


async def test_failover_to_a_lagging_standby_recovers_every_job_it_has(
    lagging: tuple[Cluster, Cluster, Proxy], tmp_path: Path
) -> None:
    primary, standby, proxy = lagging
    old = await asyncpg.connect(primary.dsn)
    # Read-only until the promotion; the same session reads the new primary after it.
    new = await asyncpg.connect(standby.dsn)
    try:
        await _run(primary, standby, proxy, old, new, tmp_path)
    finally:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            await old.close(timeout=1)
        await new.close()


async def _run(
    primary: Cluster,
    standby: Cluster,
    proxy: Proxy,
    old: asyncpg.Connection,
    new: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    async def streaming() -> bool:
        state = await old.fetchval(
            "SELECT state FROM pg_stat_replication WHERE application_name = $1", STANDBY
        )
        return bool(state == "streaming")

    await poll(streaming, within=30, what="the standby to stream (through the proxy)")
    dsn = (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
        "?target_session_attrs=read-write"
    )
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        backend = await stack.enter_async_context(PostgresBackend(dsn, schema=SCHEMA))
        await backend.migrate()
        ledger = await Ledger.create(dsn, SCHEMA)
        stack.push_async_callback(ledger.close)
        fleet = Fleet(dsn, SCHEMA, tmp_path, ledger)
        stack.push_async_callback(fleet.cleanup)
        fleet.defaults = {
            "max_attempts": 10,
            "effects_payload": True,  # executions of lost jobs are told apart (ledger.py)
            "runner": {
                "concurrency": 12,
                "batch_size": 10,
                "heartbeat_interval": 0.5,
                "prune_after": PRUNE_AFTER,
                "poll_interval": POLL_INTERVAL,
            },
        }
        a = await fleet.start("a")
        producer = Producer(backend)
        producing = asyncio.create_task(producer.run())

        async def finished(n: int) -> bool:
            return await ledger.count("state IN ('succeeded', 'failed')") >= n

        await poll(lambda: finished(BEFORE), within=60, what=f"{BEFORE} jobs done")

        # Long jobs, claimed (and the claims replicated) before the cut, settled inside it; and
        # jobs replicated queued, claimed inside the window, still running at the kill.
        long_ids = await backend.enqueue_many(
            "q", [{"ms": LONG_MS, "long": i} for i in range(LONG)], priority=10
        )
        straddle_ids = await backend.enqueue_many(
            "q",
            [{"ms": STRADDLE_MS, "straddle": i} for i in range(STRADDLE)],
            delay=1.0,
            priority=5,
        )

        async def on_standby() -> bool:
            count = await new.fetchval(
                f"SELECT count(*) FILTER (WHERE id = ANY($1) AND state = 'running') "
                f"+ count(*) FILTER (WHERE id = ANY($2) AND state = 'queued') "
                f'FROM "{SCHEMA}".jobs',
                long_ids,
                straddle_ids,
            )
            return bool(count == LONG + STRADDLE)

        await poll(on_standby, within=20, every=0.005, what="the long jobs' claims replicated")
        proxy.blackhole()
        cut_at = loop.time()
        acknowledged_at_cut = len(producer.acknowledged)

        # Worker b registers inside the window: its token never reaches the standby.
        b = await fleet.start("b")

        async def window_done() -> bool:
            long_final = await old.fetchval(
                f'SELECT count(*) FROM "{SCHEMA}".jobs WHERE id = ANY($1) AND state = ANY($2)',
                long_ids,
                list(FINAL),
            )
            by_b = await old.fetchval(
                f"SELECT count(*) FROM \"{SCHEMA}\".jobs WHERE worker_name = 'b' "
                "AND state = 'succeeded'"
            )
            straddling = await old.fetchval(
                f"SELECT count(*) FROM \"{SCHEMA}\".jobs WHERE id = ANY($1) AND state = 'running'",
                straddle_ids,
            )
            return long_final == LONG and by_b > 0 and straddling == STRADDLE

        await poll(
            window_done, within=30, what="the long jobs and one of b's to settle, 4 claims more"
        )
        await asyncio.sleep(max(0.0, LAG - (loop.time() - cut_at)))  # paces the fault

        # What the new primary will hold, read on the standby before the kill: with the stream
        # cut, it changes no more once it has replayed what it received. (Read after the
        # promotion, it would race the workers, which reach the new primary before pg_ctl
        # returns.)
        async def replayed() -> bool:
            return bool(
                await new.fetchval("SELECT pg_last_wal_replay_lsn() = pg_last_wal_receive_lsn()")
            )

        await poll(replayed, within=10, what="the standby to replay what it received")
        received = await new.fetchval("SELECT pg_last_wal_receive_lsn()::text")
        on_new = await _jobs(new)
        b_token = await old.fetchval(
            f'SELECT token FROM "{SCHEMA}".workers WHERE name = $1 AND pid = $2', "b", b.pid
        )
        assert b_token is not None, "b did not register on the old primary"
        b_kept = await new.fetchval(
            f'SELECT count(*) FROM "{SCHEMA}".workers WHERE token = $1', b_token
        )
        # The lag, as the primary sees it, just before the kill.
        on_old = await _jobs(old)
        primary_lsn = await old.fetchval("SELECT pg_current_wal_lsn()::text")
        replicated = await old.fetchrow(
            "SELECT sent_lsn::text AS sent, replay_lsn::text AS replay FROM pg_stat_replication "
            "WHERE application_name = $1",
            STANDBY,
        )
        lag_bytes = await old.fetchval(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)", primary_lsn, received
        )
        killed_at, killed_wall = loop.time(), time.time()
        await asyncio.to_thread(primary.kill)
        await asyncio.to_thread(standby.promote)
        promoted_at = loop.time()
        assert await new.fetchval("SELECT pg_last_wal_replay_lsn()::text") == received, (
            "the standby replayed more than it had received before the kill"
        )
        assert lag_bytes > 0, (
            f"no replication lag: primary at {primary_lsn}, standby received {received}"
        )
        # The ledger's pool still holds connections to the dead primary.
        await ledger.pool.expire_connections()
        for worker in (a, b):
            await ledger.fault(worker.pid, "failover", at=time.time())

        # What the window held, as the two servers tell it (the job rows on the old primary
        # just before the kill, and the prefix of them the new primary started from).
        settled_old = {i for i, row in on_old.items() if row["state"] in FINAL}
        lost_settle_running = sorted(
            i for i in settled_old if i in on_new and on_new[i]["state"] == "running"
        )
        lost_settle_queued = sorted(
            i for i in settled_old if i in on_new and on_new[i]["state"] == "queued"
        )
        lost_claims = sorted(
            i
            for i, row in on_old.items()
            if row["state"] == "running" and i in on_new and on_new[i]["state"] == "queued"
        )
        assert set(long_ids) <= set(lost_settle_running), (
            "the long jobs settled inside the window must be running on the new primary: "
            f"{[(i, on_new[i]['state'] if i in on_new else None) for i in long_ids]}"
        )
        assert set(straddle_ids) <= set(lost_claims), (
            "the jobs claimed inside the window must be queued on the new primary: "
            f"{[(i, on_new[i]['state'], on_old[i]['state']) for i in straddle_ids]}"
        )
        assert all(on_new[i]["attempts"] == 0 for i in straddle_ids), "a lost claim's attempt"
        assert b_kept == 0, "b's registration reached the standby: the window lost too little"

        await work_resumed(ledger, since=killed_wall, within=60)
        resumed_at = loop.time()
        await poll(
            lambda: any(at > promoted_at for at in producer.returned_at),
            within=60,
            what="an enqueue to return after the failover",
        )
        await asyncio.sleep(AFTER)  # the producer goes on against the new primary
        producer.stop.set()
        await producing

        # Which acknowledged enqueues the new primary has: matched by payload, as a lost job's
        # id can be drawn again for a job enqueued after the failover.
        present = await _jobs(new)
        kept = [i for i, seq, n in producer.acknowledged if _tag(present.get(i)) == (seq, n)]
        lost_enqueues = [
            (i, seq, n) for i, seq, n in producer.acknowledged if _tag(present.get(i)) != (seq, n)
        ]
        reused = [i for i, _, _ in lost_enqueues if i in present]
        # Acknowledged before the cut yet lost: committed in the milliseconds the stream is
        # always behind, even without a proxy.
        lost_set = set(lost_enqueues)
        lost_before_cut = sum(
            1 for job in producer.acknowledged[:acknowledged_at_cut] if job in lost_set
        )
        assert lost_enqueues, "no acknowledged enqueue was lost: the lag lost nothing"
        ledger.expect(kept)
        ledger.expect(long_ids)
        ledger.expect(straddle_ids)
        uncertain = set(producer.uncertain)
        maybe = [i for i, row in present.items() if _seq(row) in uncertain]
        ledger.expect(maybe)
        await poll(ledger.drained, within=60, every=0.1, what="every enqueued job to finish")

        async def nothing_pending() -> bool:
            count = await new.fetchval(
                f"SELECT count(*) FROM \"{SCHEMA}\".jobs WHERE state IN ('queued', 'running')"
            )
            return bool(count == 0)

        await poll(nothing_pending, within=30, what="every job on the new primary to end")
        assert a.alive and b.alive, "a worker exited during the failover"

        # Idle now, polling every 30 s: only a NOTIFY on the new primary wakes them quickly.
        await asyncio.sleep(0.5)
        late = await backend.enqueue_many("q", [{"ms": 1, "late": i} for i in range(5)])
        ledger.expect(late)
        woke = await poll(ledger.drained, within=POLL_INTERVAL / 2, what="a NOTIFY wake-up")

        # The jobs whose settle was lost ran again: recovered as lost by their lease, and
        # settled by a later attempt.
        final = await _jobs(new)
        not_again = [
            i
            for i in lost_settle_running
            if final[i]["state"] != "succeeded"
            or final[i]["attempts"] <= on_new[i]["attempts"]
            or not any(e["type"] == "WorkerLost" for e in json.loads(final[i]["errors"]))
        ]
        assert not_again == [], "jobs whose settle was lost did not run again: " + "; ".join(
            f"{i}: old {dict(on_old[i])}, prefix {dict(on_new[i])}, final {dict(final[i])}"
            for i in not_again[:3]
        )
        # b carried on as a new incarnation (its first one never existed here).
        b_rows = await new.fetch(
            f'SELECT state FROM "{SCHEMA}".workers WHERE name = $1 AND pid = $2', "b", b.pid
        )
        assert b_rows, "worker b did not register again on the new primary"
        assert [w.pid for w in fleet.current.values()] == [a.pid, b.pid]
        reregistered = sum("registered again as a new incarnation" in w.stderr() for w in (a, b))
        verdict = await settle_and_judge(ledger, fleet, within=30)
        record_figures(
            "failover to a lagging standby (asynchronous)",
            **verdict.figures(),
            lag_bytes=int(lag_bytes),
            walsender=f"sent {replicated['sent']}, replayed {replicated['replay']}, "
            f"wal at {primary_lsn}",
            lag_window=f"{killed_at - cut_at:.2f} s",
            acknowledged=len(producer.acknowledged),
            acknowledged_lost=len(lost_enqueues),
            acknowledged_lost_before_cut=lost_before_cut,
            lost_ids_reused=len(reused),
            uncertain_enqueues=len(producer.uncertain),
            settles_lost=len(lost_settle_running) + len(lost_settle_queued),
            settles_lost_running=len(lost_settle_running),
            claims_lost=len(lost_claims),
            lost_claims_attempts=sorted(final[i]["attempts"] for i in straddle_ids),
            reregistered=reregistered,
            promote=f"{promoted_at - killed_at:.2f} s",
            work_resumed_after_kill=f"{resumed_at - killed_at:.2f} s",
            notify_wakeup=f"{woke:.2f} s (poll_interval {POLL_INTERVAL:g} s)",
        )
        verdict.assert_ok()
