"""The Runner: claims batches, runs one handler call per job under a concurrency limit, and
settles every job on its own.

Shape of a run::

    fetch loop ──claim──▶ batch ──gather(return_exceptions=True)──▶ _process(job) * n
        ▲                                                              │ one Outcome each
        └──── room (a job finished) ◀───────────────────────────────────┤
    heartbeat loop: leases, lost and cancelled jobs, pruning           ▼
                                                           SettleBuffer ──settle──▶ backend

The runner knows nothing of SQL: it talks to its backend through :class:`Backend` only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

import anyio

from batchworks._attempt import Attempts, Held
from batchworks._checks import check_handlers, check_queues, duration, positive_int
from batchworks._json import MAX_PAYLOAD_BYTES
from batchworks._scheduler import Scheduler, check_schedules
from batchworks._settle import SettleBuffer
from batchworks.backends.base import Backend, ClaimedJob, WorkerToken
from batchworks.errors import ConfigurationError, LifecycleError
from batchworks.job import Job
from batchworks.outcome import Outcome, OutcomeKind
from batchworks.report import RunReport
from batchworks.retry import RetryPolicy
from batchworks.schedule import Schedule
from batchworks.tracing import Telemetry

__all__ = ["Handler", "Runner"]

logger = logging.getLogger(__name__)

CONCURRENCY = 10
BATCH_SIZE = 50
HEARTBEAT_INTERVAL = 5.0  # seconds
PRUNE_AFTER = 30.0  # seconds
SHUTDOWN_TIMEOUT = 30.0  # seconds
POLL_INTERVAL = 1.0  # seconds
FLUSH_INTERVAL = 0.05  # seconds an outcome may wait before it is written
CLAIM_RETRY_INITIAL = 0.1  # seconds before a failed claim is tried again
CLAIM_RETRY_MAX = 2.0  # seconds between claim retries at most
CANCEL_GRACE = 5.0  # seconds a cancelled handler gets to unwind at shutdown


class Handler(Protocol):
    """``async def handler(job: Job) -> object``: what it returns (JSON) is kept as the
    job's result; what it raises decides a retry or a failure."""

    def __call__(self, job: Job, /) -> Awaitable[Any]: ...


_names = itertools.count()


def _default_worker_name() -> str:
    # Stable across restarts of the same process slot (same host, same pid in a container),
    # so a restarted worker takes its earlier incarnation's jobs back at once.
    index = next(_names)
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if index == 0 else f"{base}:{index}"


class Runner:
    """Runs the jobs of its handlers' queues from a backend.

    :param backend: where the jobs live (:class:`MemoryBackend`, :class:`PostgresBackend`).
    :param handlers: ``{queue: handler}``; each handler is ``async def handler(job)``.
    :param concurrency: handler calls in flight at most.
    :param batch_size: jobs claimed in one call; outcomes are also written this many at once.
    :param retry: the :class:`RetryPolicy` (default: 5 attempts, exponential backoff).
    :param job_timeout: seconds a handler call may take before it fails with TimeoutError.
    :param worker_name: this worker's identity; a restart under the same name recovers the
        jobs of its earlier incarnation at once. Default: ``host:pid``.
    :param heartbeat_interval: seconds between heartbeats.
    :param prune_after: seconds of silence after which a worker is presumed dead; also the
        length of a job's lease.
    :param shutdown_timeout: seconds running jobs get to finish after a stop before they are
        cancelled and put back in the queue.
    :param poll_interval: seconds between polls when the backend has no wake-up to offer.
    :param queues: the queues to take jobs from (default: every queue in ``handlers``).
    :param sync_in_thread: allow plain (non-async) handlers, run in worker threads.
    :param flush_interval: seconds a finished job's outcome may wait to be written.
    :param schedules: :class:`Schedule` objects this runner stores at start and enqueues the
        ticks of, together with every other runner that carries schedules (each tick once).
    """

    def __init__(
        self,
        backend: Backend,
        handlers: Mapping[str, Handler | Callable[[Job], Any]],
        *,
        concurrency: int = CONCURRENCY,
        batch_size: int = BATCH_SIZE,
        retry: RetryPolicy | None = None,
        job_timeout: float | None = None,
        worker_name: str | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        prune_after: float = PRUNE_AFTER,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        queues: Iterable[str] | None = None,
        sync_in_thread: bool = False,
        flush_interval: float = FLUSH_INTERVAL,
        schedules: Iterable[Schedule] | None = None,
    ) -> None:
        if not isinstance(backend, Backend):
            raise ConfigurationError(
                f"backend must be a batchworks backend (MemoryBackend, PostgresBackend), "
                f"got {backend!r}"
            )
        self._backend = backend
        self._handlers = check_handlers(handlers, sync_in_thread)
        self._sync_in_thread = sync_in_thread
        self._queues = check_queues(queues, self._handlers)
        self._concurrency = positive_int(concurrency, "concurrency")
        self._batch_size = positive_int(batch_size, "batch_size")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {retry!r}")
        self._policy = retry or RetryPolicy()
        self._job_timeout = None if job_timeout is None else duration(job_timeout, "job_timeout")
        self._heartbeat_interval = duration(heartbeat_interval, "heartbeat_interval")
        self._prune_after = duration(prune_after, "prune_after")
        if self._prune_after <= self._heartbeat_interval:
            raise ConfigurationError(
                f"prune_after ({prune_after}s) must be longer than heartbeat_interval "
                f"({heartbeat_interval}s), or live workers get pruned; 3-6x is typical"
            )
        self._shutdown_timeout = duration(shutdown_timeout, "shutdown_timeout", zero=True)
        self._poll_interval = duration(poll_interval, "poll_interval")
        self._claim_retry = CLAIM_RETRY_INITIAL
        self._suspect: Job | None = None
        self._flush_interval = duration(flush_interval, "flush_interval", zero=True)
        if worker_name is not None and (not isinstance(worker_name, str) or not worker_name):
            raise ConfigurationError(f"worker_name must be a non-empty str, got {worker_name!r}")
        self._worker_name = worker_name or _default_worker_name()
        self._telemetry = Telemetry(self._worker_name)
        self._attempts = Attempts(self._handlers, self._policy, self._telemetry)
        self._attempts.result_limit = getattr(backend, "max_payload_bytes", MAX_PAYLOAD_BYTES)
        carried = check_schedules(schedules, self._handlers)
        self._scheduler = Scheduler(backend, carried, self._telemetry) if carried else None

        self._state = "created"  # created, running, stopping, stopped
        self._token: WorkerToken | None = None
        self._settle: SettleBuffer | None = None
        self._held: dict[int, Held] = {}
        self._slots = asyncio.Semaphore(self._concurrency)
        self._stop_requested = False
        self._stop_event = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self._room = asyncio.Event()  # set when a held job finishes
        self._registered = asyncio.Event()
        self._ended = asyncio.Event()
        self._counts = dict.fromkeys(OutcomeKind, 0)
        self._lost = 0
        self._started_at = 0.0
        self._finished_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    # -- public API -----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<Runner worker={self._worker_name!r} state={self._state} "
            f"running={sum(held.started for held in self._held.values())} "
            f"succeeded={self._counts[OutcomeKind.SUCCEEDED]} "
            f"failed={self._counts[OutcomeKind.FAILED]}>"
        )

    @property
    def worker_name(self) -> str:
        """This worker's identity."""
        return self._worker_name

    @property
    def backend(self) -> Backend:
        """The backend this runner takes its jobs from."""
        return self._backend

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this runner takes jobs from."""
        return tuple(self._queues)

    @property
    def report(self) -> RunReport:
        """The outcomes written so far in this run."""
        counts = self._counts
        end = self._finished_at or (time.monotonic() if self._started_at else 0.0)
        return RunReport(
            succeeded=counts[OutcomeKind.SUCCEEDED],
            failed=counts[OutcomeKind.FAILED],
            retried=counts[OutcomeKind.RETRIED],
            snoozed=counts[OutcomeKind.SNOOZED],
            released=counts[OutcomeKind.RELEASED],
            cancelled=counts[OutcomeKind.CANCELLED],
            lost=self._lost,
            duration=max(0.0, end - self._started_at),
        )

    async def run_until_empty(self, *, max_delay: float = 0.0) -> RunReport:
        """Run until no job of this runner's queues is due and none is in flight (cron mode).

        :param max_delay: also wait for queued jobs (retries, snoozes, delayed jobs) that fall
            due within this many seconds of the queue running dry.
        :returns: the :class:`RunReport` of the run.
        """
        await self._run(drain=True, max_delay=duration(max_delay, "max_delay", zero=True))
        return self.report

    async def run(self) -> None:
        """Run until :meth:`stop`, SIGTERM or SIGINT; returns normally after a graceful stop.

        A second SIGTERM/SIGINT stops at once: running jobs are cancelled and put back.
        """
        with self._signal_handlers():
            await self._run(drain=False, max_delay=0.0)

    async def wait_ready(self) -> None:
        """Return once the worker is registered with its backend and claiming jobs.

        :raises LifecycleError: the run ended before it got ready.
        """
        waiters = {
            asyncio.ensure_future(self._registered.wait()),
            asyncio.ensure_future(self._ended.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not self._registered.is_set():
            raise LifecycleError("the Runner stopped before it was ready")

    def stop(self, *, now: bool = False) -> None:
        """Stop fetching and shut down gracefully (``now=True``: cancel running jobs at once).

        Jobs not yet started are put back at once; running ones get ``shutdown_timeout``
        seconds, then are cancelled and put back, without using an attempt.
        """
        self._stop_requested = True
        self._stop_event.set()
        self._room.set()
        if now:
            self._hard_stop.set()

    async def __aenter__(self) -> Self:
        """Start running in the background (for services); the exit stops gracefully."""
        if self._task is not None or self._state != "created":
            raise LifecycleError("Runner already ran; create a new Runner")
        self._task = asyncio.create_task(
            self._run(drain=False, max_delay=0.0), name=f"batchworks:{self._worker_name}"
        )
        try:
            await self.wait_ready()
        except LifecycleError:
            await self._task  # raises what stopped it
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    # -- the run --------------------------------------------------------------------------------

    async def _run(self, *, drain: bool, max_delay: float) -> None:
        if self._state != "created":
            raise LifecycleError(f"Runner was {self._state}; create a new Runner for another run")
        self._state = "running"
        self._started_at = time.monotonic()
        if self._sync_in_thread:
            self._attempts.thread_limiter = anyio.CapacityLimiter(self._concurrency)
        try:
            token = await self._backend.register_worker(
                self._worker_name, self._queues, max_attempts=self._policy.max_attempts
            )
        except BaseException:
            self._state = "stopped"
            self._ended.set()
            raise
        self._token = token
        self._settle = SettleBuffer(
            self._backend,
            token,
            max_size=self._batch_size,
            interval=self._flush_interval,
            on_settled=self._on_settled,
        )
        logger.info(
            "worker %r ready: queues %s, concurrency %d",
            self._worker_name,
            ",".join(self._queues),
            self._concurrency,
            extra={"action": "worker_ready", "worker": self._worker_name},
        )
        self._registered.set()
        settler = asyncio.create_task(self._settle.run(), name="batchworks:settle")
        heart = asyncio.create_task(self._heartbeat_loop(), name="batchworks:heartbeat")
        side = [heart]  # the schedules' task too: it ends with the heartbeats
        if self._scheduler is not None:
            ticker = self._scheduler.run(self._stop_event)
            side.append(asyncio.create_task(ticker, name="batchworks:scheduler"))
        try:
            if not self._stop_requested:
                await self._fetch_loop(drain=drain, max_delay=max_delay)
        finally:
            self._state = "stopping"
            try:
                await self._shutdown()
            finally:
                for task in side:
                    task.cancel()
                self._settle.stop()
                _, pending = await asyncio.wait({settler}, timeout=CANCEL_GRACE)
                for task in pending:  # stuck retrying a write: the final flush takes over
                    task.cancel()
                await asyncio.gather(*side, settler, return_exceptions=True)
                await self._close()

    async def _fetch_loop(self, *, drain: bool, max_delay: float) -> None:
        capacity = self._concurrency + self._batch_size  # claimed ahead: one batch at most
        claim_min = max(1, self._batch_size // 2)
        while not self._stop_requested:
            self._room.clear()
            if self._suspect is not None:
                await self._run_suspect()
                continue
            room = capacity - len(self._held)
            if room < claim_min and len(self._held) >= self._concurrency:
                await self._room.wait()  # every slot busy and no room for a real batch
                continue
            asked = min(self._batch_size, room)
            jobs = await self._claim(asked)
            if jobs:
                self._start_batch(jobs)
            if len(jobs) == asked:
                continue
            # The queue ran dry for now.
            if drain:
                if self._held:
                    await self._room.wait()
                elif await self._drained(max_delay):
                    return
            else:
                await self._wait_for_work()

    async def _run_suspect(self) -> None:
        """Wait for every other held job to finish, then run the suspect alone."""
        suspect = self._suspect
        assert suspect is not None
        while len(self._held) > 1 and not self._stop_requested:
            self._room.clear()
            await self._room.wait()
        if self._stop_requested:
            return
        # Write what is buffered first (the other jobs' outcomes, the suspects put back): if
        # the suspect kills this worker, none of it may be lost with it.
        assert self._settle is not None
        await self._settle.flush()
        task = asyncio.create_task(self._run_batch([suspect]))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)
        while suspect.id in self._held and not self._stop_requested:
            self._room.clear()
            await self._room.wait()
        self._suspect = None

    async def _drained(self, max_delay: float) -> bool:
        """With nothing held: True when no job is due within ``max_delay``, else wait for it."""
        assert self._settle is not None
        await self._settle.flush()  # retries must be visible before the queue counts as empty
        due = await self._backend.next_due(self._queues)
        if due is None or due > max_delay:
            return True
        if due > 0:
            await self._backend.wait_for_work(self._queues, max_wait=due)
        return False

    async def _wait_for_work(self) -> None:
        waiter = asyncio.ensure_future(
            self._backend.wait_for_work(self._queues, max_wait=self._poll_interval)
        )
        stopper = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            logger.warning("waiting for work failed: %s", waiter.exception())

    async def _claim(self, limit: int) -> list[ClaimedJob]:
        assert self._token is not None
        telemetry = self._telemetry
        telemetry.refresh()  # an SDK installed meanwhile is picked up from the next batch on
        try:
            with telemetry.receive_span(self._queues) as span:
                claimed = await self._backend.claim(
                    self._token,
                    self._queues,
                    limit,
                    lease=self._prune_after,
                    max_attempts=self._policy.max_attempts,
                )
                telemetry.claimed(span, len(claimed))
                self._claim_retry = CLAIM_RETRY_INITIAL
                return claimed
        except Exception as exc:
            delay = self._claim_retry
            self._claim_retry = min(delay * 2, CLAIM_RETRY_MAX, self._poll_interval)
            logger.warning(
                "claim failed (%s: %s); retrying in %.1fs",
                type(exc).__name__,
                exc,
                delay,
                extra={"action": "claim_failed"},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_event.wait()
            return []

    def _start_batch(self, claimed: Sequence[ClaimedJob]) -> None:
        # A job whose worker was lost last time may be what killed it: it runs alone, so that
        # if it kills this worker too, no other job loses an attempt with it. One at a time;
        # other suspects go back at once (they did not start: no attempt used).
        normal = []
        for claim in claimed:
            if not claim.suspect:
                normal.append(claim)
            elif self._suspect is None:
                self._suspect = self._hold(claim)
            elif self._settle is not None:
                self._settle.add(Outcome(claim.id, OutcomeKind.RELEASED, queue=claim.queue))
        if not normal:
            return
        jobs = [self._hold(claim) for claim in normal]
        task = asyncio.create_task(self._run_batch(jobs))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _hold(self, claim: ClaimedJob) -> Job:
        job = Job(
            id=claim.id,
            queue=claim.queue,
            payload=claim.payload,
            attempt=claim.attempt,
            max_attempts=claim.max_attempts,
            checkpoint=claim.checkpoint,
            timeout=claim.timeout if claim.timeout is not None else self._job_timeout,
            schedule=claim.schedule,
            scheduled_for=claim.scheduled_for,
            _saver=self._saver(claim.id),
        )
        self._held[job.id] = Held(job, claim)
        return job

    def _saver(self, job_id: int) -> Callable[[Any], Awaitable[Any]]:
        async def save(value: Any) -> Any:
            assert self._token is not None
            return await self._backend.save_checkpoint(
                self._token, job_id, value, lease=self._prune_after
            )

        return save

    async def _run_batch(self, jobs: list[Job]) -> None:
        """Run a claimed batch with allSettled semantics: each job gets its own outcome."""
        tasks = []
        for job in jobs:
            task = asyncio.create_task(self._process(job))
            self._held[job.id].task = task
            tasks.append(task)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for job, result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                logger.error(
                    "internal error while running job %s; its lease will expire and it will "
                    "be recovered",
                    job.id,
                    exc_info=result,
                    extra={"action": "job_internal_error", "job_id": job.id},
                )

    async def _process(self, job: Job) -> None:
        held = self._held[job.id]
        outcome: Outcome | None
        try:
            if self._stop_requested:
                outcome = Outcome(job.id, OutcomeKind.RELEASED, queue=job.queue)
            else:
                async with self._slots:
                    held.started = True
                    outcome = await self._attempts.run(held)
        except asyncio.CancelledError:
            if held.cancel_reason is None:
                raise  # not ours: the loop itself is going down
            outcome = self._attempts.cancelled_outcome(job, held.cancel_reason)
        finally:
            del self._held[job.id]
            self._room.set()
        if outcome is not None and self._settle is not None:
            self._settle.add(outcome)

    def _cancel(self, job_id: int, reason: str) -> None:
        held = self._held.get(job_id)
        if held is not None and held.task is not None and held.cancel_reason is None:
            held.cancel_reason = reason
            held.task.cancel()

    def _on_settled(self, outcomes: Sequence[Outcome], lost: frozenset[int]) -> None:
        written = collections.Counter(
            (outcome.queue, outcome.kind) for outcome in outcomes if outcome.job_id not in lost
        )
        telemetry = self._telemetry
        for (queue, kind), count in written.items():
            self._counts[kind] += count
            telemetry.settled(queue, kind.value, count)
        if lost:
            self._lost += len(lost)
            telemetry.leases_lost(len(lost))
            logger.warning(
                "lost the lease of %d jobs before their outcome was written (%s); another "
                "worker owns them now and nothing was overwritten",
                len(lost),
                ", ".join(map(str, sorted(lost)[:10])),
                extra={"action": "lease_lost", "job_ids": sorted(lost)},
            )

    # -- heartbeats -----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            try:
                await self._beat()
            except Exception as exc:
                logger.warning(
                    "heartbeat failed (%s: %s); trying again in %.1fs",
                    type(exc).__name__,
                    exc,
                    self._heartbeat_interval,
                    extra={"action": "heartbeat_failed"},
                )

    async def _beat(self) -> None:
        assert self._token is not None
        beat = await self._backend.heartbeat(self._token, list(self._held), lease=self._prune_after)
        if not beat.alive:
            logger.error(
                "worker %r was pruned or replaced by another incarnation: it stops claiming; "
                "its jobs have moved on",
                self._worker_name,
                extra={"action": "worker_lost", "worker": self._worker_name},
            )
            for job_id in list(self._held):
                self._cancel(job_id, "lost")
            self.stop()
            return
        for job_id in beat.lost:
            self._cancel(job_id, "lost")
        for job_id in beat.cancel:
            self._cancel(job_id, "operator")
        self._telemetry.recovered(await self._backend.recover(prune_after=self._prune_after))

    # -- shutdown -------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Put back what has not started; give running jobs ``shutdown_timeout``; cancel."""
        self._stop_requested = True
        suspect, self._suspect = self._suspect, None
        if suspect is not None and self._held[suspect.id].task is None:
            del self._held[suspect.id]  # never started: back to the queue, no attempt used
            if self._settle is not None:
                self._settle.add(Outcome(suspect.id, OutcomeKind.RELEASED, queue=suspect.queue))
        for held in list(self._held.values()):
            if not held.started:
                self._cancel(held.job.id, "shutdown")
        if self._held and not self._hard_stop.is_set():
            logger.info(
                "stopping: waiting up to %.1fs for %d running jobs",
                self._shutdown_timeout,
                len(self._held),
                extra={"action": "worker_stopping", "worker": self._worker_name},
            )
            await self._wait_idle(self._shutdown_timeout, until_hard_stop=True)
        for job_id in list(self._held):
            self._cancel(job_id, "shutdown")
        if self._held:
            await self._wait_idle(CANCEL_GRACE, until_hard_stop=False)
        if self._held:
            logger.error(
                "%d jobs ignored cancellation; they will be recovered when this worker's "
                "leases expire",
                len(self._held),
                extra={"action": "jobs_abandoned", "job_ids": list(self._held)},
            )
        if self._batches:
            await asyncio.wait(self._batches, timeout=CANCEL_GRACE)

    async def _wait_idle(self, seconds: float, *, until_hard_stop: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self._held and loop.time() < deadline:
            if until_hard_stop and self._hard_stop.is_set():
                return
            self._room.clear()
            waiters = {asyncio.ensure_future(self._room.wait())}
            if until_hard_stop:
                waiters.add(asyncio.ensure_future(self._hard_stop.wait()))
            try:
                await asyncio.wait(
                    waiters, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _close(self) -> None:
        assert self._settle is not None and self._token is not None
        loop = asyncio.get_running_loop()
        flushed = await self._settle.flush(deadline=loop.time() + max(self._shutdown_timeout, 1))
        if not flushed:
            logger.error(
                "%d outcomes could not be written before shutdown; their jobs will be "
                "recovered when this worker is pruned",
                len(self._settle),
                extra={"action": "outcomes_unwritten"},
            )
        else:
            try:
                await self._backend.unregister_worker(self._token)
            except Exception as exc:
                logger.warning("could not mark worker %r stopped: %s", self._worker_name, exc)
        self._state = "stopped"
        self._finished_at = time.monotonic()
        self._ended.set()
        logger.info(
            "worker %r stopped: %s",
            self._worker_name,
            self.report,
            extra={"action": "worker_stopped", "worker": self._worker_name},
        )

    @contextlib.contextmanager
    def _signal_handlers(self) -> Any:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                except (NotImplementedError, RuntimeError):  # not on this platform or loop
                    continue
                installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        now = self._stop_requested
        logger.info(
            "received %s: %s",
            sig.name,
            "stopping now" if now else "stopping gracefully (again to stop now)",
            extra={"action": "signal", "signal": sig.name},
        )
        self.stop(now=now)
