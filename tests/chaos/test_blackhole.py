"""Scenario 12: a black-holed network between a worker and PostgreSQL (sockets open, nothing
answered, through :mod:`tests.chaos.proxy`). A SIGTERM still ends the worker within
``shutdown_timeout`` plus a few seconds, a second one within a few seconds; a worker left
partitioned counts its leases as lost by its own clock, cancels its handlers and says so,
while another worker recovers its jobs; once the network heals it carries on."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from batchworks import PostgresBackend
from tests.chaos.proxy import Proxy
from tests.support.harness import (
    Fleet,
    WorkerProcess,
    poll,
    record_figures,
    recovery_time,
    settle_and_judge,
)
from tests.support.ledger import Ledger, Verdict

pytestmark = [pytest.mark.chaos, pytest.mark.postgres, pytest.mark.timeout(120)]

PRUNE_AFTER = 2.0  # seconds
HEARTBEAT = 0.25  # seconds
SLOTS = 4
#: the exit bound beyond shutdown_timeout: CLOSE_GRACE (5 s, 2 s after a hard stop) and the
#: backend's close (2 s), with a generous margin for a loaded machine; a hang would last
#: until the network heals
EXIT_MARGIN = 15.0  # seconds


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[Proxy]:
    async with Proxy(pg_dsn) as through:
        yield through


def _runner(**extra: Any) -> dict[str, Any]:
    # db_timeout stays at its default (30 s), longer than any bound the test waits for: the
    # exits below must come from the stop cutting calls short, not from a short timeout.
    return {
        "concurrency": SLOTS,
        "batch_size": SLOTS,
        "heartbeat_interval": HEARTBEAT,
        "prune_after": PRUNE_AFTER,
        "poll_interval": 0.5,
        **extra,
    }


async def _partitioned(fleet: Fleet, proxy: Proxy, ledger: Ledger, **config: Any) -> WorkerProcess:
    """A worker through the proxy, black-holed once it holds SLOTS jobs."""
    worker = await fleet.start("cut", backend_dsn=proxy.dsn, **config)

    async def holds() -> bool:
        return len(await ledger.held_by(worker.pid)) >= SLOTS

    await poll(holds, within=20, what=f"the worker to hold {SLOTS} jobs")
    proxy.blackhole()
    await ledger.fault(worker.pid, "partition")
    return worker


async def _heal_and_judge(
    proxy: Proxy, ledger: Ledger, fleet: Fleet, cut: WorkerProcess
) -> Verdict:
    """Heal the network (the partition counts as a fault until then), let a healthy worker
    finish the jobs, and judge."""
    proxy.heal()
    await ledger.fault(cut.pid, "partition-end")
    if not any(worker.alive for worker in fleet.current.values()):
        await fleet.start("rescuer", runner=_runner())
    return await settle_and_judge(ledger, fleet, within=60)


def _stuck(verdict: Verdict) -> int:
    return len(verdict.left_running) + len(verdict.left_queued)


async def test_sigterm_exits_within_shutdown_timeout_on_a_blackholed_network(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet, proxy: Proxy
) -> None:
    shutdown_timeout = 2.0
    ledger.expect(await pg_backend.enqueue_many("q", [{"ms": 300}] * 40))
    cut = await _partitioned(
        fleet, proxy, ledger, runner=_runner(shutdown_timeout=shutdown_timeout)
    )
    await asyncio.sleep(0.5)  # its heartbeats, settles and claims are pending now

    loop = asyncio.get_running_loop()
    sent = loop.time()
    cut.send(signal.SIGTERM)
    assert await cut.exit_code(within=shutdown_timeout + EXIT_MARGIN) == 0
    exited_after = loop.time() - sent
    assert proxy.blackholed, "the network must still be cut when the worker exits"

    verdict = await _heal_and_judge(proxy, ledger, fleet, cut)
    record_figures(
        "12a SIGTERM, black-holed network",
        **verdict.figures(),
        stuck=_stuck(verdict),
        exit_after_sigterm=f"{exited_after:.2f} s (shutdown_timeout {shutdown_timeout} s)",
    )
    verdict.assert_ok()


async def test_second_sigterm_exits_at_once_on_a_blackholed_network(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet, proxy: Proxy
) -> None:
    ledger.expect(await pg_backend.enqueue_many("q", [{"ms": 20}] * 12))
    # Jobs of 20 s (ms_scale) and a shutdown_timeout of 60 s: only the second SIGTERM ends it.
    cut = await _partitioned(
        fleet, proxy, ledger, runner=_runner(shutdown_timeout=60.0), ms_scale=1000
    )
    # What the harness reports of a worker that does not exit (where its tasks wait) works:
    assert "Runner._fetch_loop" in await cut.task_stacks()
    cut.send(signal.SIGTERM)
    await asyncio.sleep(1.0)
    assert cut.alive, "the first SIGTERM must wait for the running jobs"

    loop = asyncio.get_running_loop()
    sent = loop.time()
    cut.send(signal.SIGTERM)
    assert await cut.exit_code(within=EXIT_MARGIN) == 0
    exited_after = loop.time() - sent

    verdict = await _heal_and_judge(proxy, ledger, fleet, cut)
    record_figures(
        "12b double SIGTERM, black-holed network",
        **verdict.figures(),
        stuck=_stuck(verdict),
        exit_after_second_sigterm=f"{exited_after:.2f} s",
    )
    verdict.assert_ok()


async def test_partitioned_worker_drops_its_leases_and_another_takes_its_jobs(
    pg_backend: PostgresBackend, ledger: Ledger, fleet: Fleet, proxy: Proxy
) -> None:
    jobs = 2 * SLOTS  # what it runs and what it claimed ahead: all of them
    ledger.expect(await pg_backend.enqueue_many("q", [{"ms": 20}] * jobs))
    # Its jobs take 20 s there (ms_scale), 20 ms on the healthy worker: if the partitioned
    # worker did not cancel them, they would finish, be recorded, and count as duplicates.
    cut = await _partitioned(
        fleet, proxy, ledger, runner=_runner(shutdown_timeout=60.0), ms_scale=1000
    )
    loop = asyncio.get_running_loop()
    since = loop.time()
    held = await ledger.held_by(cut.pid)
    await fleet.start("healthy", runner=_runner())
    recovered = await recovery_time(ledger, held, since=since, within=PRUNE_AFTER + 15)
    await poll(
        lambda: "counts its leases as lost" in cut.stderr(),
        within=15,
        what="the partitioned worker to say it counts its leases as lost",
    )
    said_after = loop.time() - since
    await poll(ledger.drained, within=30, what="the healthy worker to finish every job")

    proxy.heal()
    await ledger.fault(cut.pid, "partition-end")
    healed = loop.time()
    await poll(
        lambda: "registered again" in cut.stderr(),
        within=20,
        what="the partitioned worker to register again once healed",
    )
    back_after = loop.time() - healed
    assert cut.alive, "a partitioned worker must carry on once the network heals"
    verdict = await settle_and_judge(ledger, fleet, within=30)
    record_figures(
        "12c partitioned worker, another takes over",
        **verdict.figures(),
        stuck=_stuck(verdict),
        recovery=f"{recovered:.2f} s (prune_after {PRUNE_AFTER} s)",
        lease_loss_logged_after=f"{said_after:.2f} s",
        registered_again_after_heal=f"{back_after:.2f} s",
    )
    # No handler of the partitioned worker ran to its end: it cancelled them all when its
    # leases ran out by its own clock, so nothing ran twice and nothing it wrote was kept.
    verdict.assert_ok(duplicates_allowed=False)
    assert cut.report is not None and cut.report["succeeded"] == 0, cut.report


async def test_backend_close_cuts_connections_that_do_not_answer(
    pg_backend: PostgresBackend, proxy: Proxy
) -> None:
    """``aclose()`` over a black-holed network: a graceful close would wait for TCP to give
    up (minutes); it cuts the connections after its time limit instead."""
    backend = PostgresBackend(proxy.dsn, schema=pg_backend.schema)
    await backend.open()
    token = await backend.register_worker("closer", ["q"])  # starts the LISTEN connection too
    await poll(lambda: backend._listener._conn is not None, within=10, what="LISTEN connected")
    proxy.blackhole()
    try:
        async with asyncio.timeout(EXIT_MARGIN):
            await backend.aclose()
    except TimeoutError:
        pytest.fail(f"aclose() hung for {EXIT_MARGIN}s on a black-holed network")
    assert repr(backend).endswith("closed>")
    proxy.heal()
    assert [w.name for w in await pg_backend.workers()] == ["closer"]  # nothing was written
    await pg_backend.unregister_worker(token)
