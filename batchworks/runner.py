"""The Runner: claims batches, runs one handler call per job under a concurrency limit, and
settles every job on its own.

Shape of a run::

    fetch loop ──claim──▶ batch ──gather(return_exceptions=True)──▶ _process(job) * n
        ▲                                                              │ one Outcome each
        └──── room (a job finished) ◀───────────────────────────────────┤
    heartbeat loop: leases, lost and cancelled jobs, pruning           ▼
                                                           SettleBuffer ──settle──▶ backend

Every backend call runs under a time bound (:mod:`batchworks._calls`): whatever the network
does, a stop ends in ``shutdown_timeout`` plus a few seconds, and a worker whose heartbeats
do not get through counts its leases as lost by its own clock (:mod:`batchworks._heartbeat`).
One attempt of one job, and the :class:`Held` record of a job from claim to outcome, live in
:mod:`batchworks._attempt`; log records take their ``extra`` from :mod:`batchworks._logs`.

The runner knows nothing of SQL: it talks to its backend through :class:`Backend` only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import functools
import inspect
import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypedDict, Unpack, overload

from batchworks._attempt import Attempts, CancelReason, Held, released
from batchworks._calls import Calls, first_set
from batchworks._checks import (
    check_handlers,
    check_queue_concurrency,
    check_queues,
    duration,
    positive_int,
)
from batchworks._flow_metrics import QueueMetrics
from batchworks._heartbeat import LeaseClock
from batchworks._logs import log_extra
from batchworks._pool import Pool
from batchworks._queue_caps import QueueCaps
from batchworks._retention import RETENTION, Retention, check_retention
from batchworks._scheduler import Scheduler, check_schedules
from batchworks._settle import TRANSIENT, SettleBuffer
from batchworks.backends.base import Backend, ClaimedJob, Heartbeat, WorkerToken
from batchworks.errors import ConfigurationError, LifecycleError, RunnerFailed
from batchworks.job import Job, PayloadT
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
#: seconds a claim that a limit held back keeps the next ones from claiming ahead (#14)
BOUND_FOR = 1.0
CANCEL_GRACE = 5.0  # seconds a cancelled handler gets to unwind at shutdown
DB_TIMEOUT = 30.0  # seconds one backend call may take before it counts as failed
CLOSE_GRACE = 5.0  # seconds for the last writes once the jobs are done (or cancelled)
HARD_STOP_GRACE = 2.0  # seconds for everything left after a hard stop (a second signal)
SLOW_CALL = 5.0  # seconds a backend call may take before a warning says so
ABANDONED_GRACE = 1.0  # seconds a claim cut off by a stop gets to return its jobs to put back
#: A job whose earlier attempts lost their worker this many times runs alone: it may be what
#: killed them (a segfault, the OOM killer), and alone it costs no other job an attempt.
SUSPECT_AFTER = 2


class Handler(Protocol[PayloadT]):
    """``async def handler(job: Job) -> object``: what it returns (JSON) is kept as the
    job's result; what it raises decides a retry or a failure. ``Handler[OrderPayload]`` takes
    a ``Job[OrderPayload]``.

    A type checker refuses a plain ``def`` here (it returns no awaitable): pass
    ``sync_in_thread=True`` to Runner to run those in threads.
    """

    def __call__(self, job: Job[PayloadT], /) -> Awaitable[Any]: ...


#: a plain function handler, allowed with ``Runner(..., sync_in_thread=True)``
SyncHandler = Callable[[Job[Any]], Any]


class RunnerOptions(TypedDict, total=False):
    """The keyword options of :class:`Runner` besides ``sync_in_thread`` (for its overloads,
    which differ only in the handlers that ``sync_in_thread`` allows)."""

    concurrency: int
    batch_size: int
    retry: RetryPolicy | None
    job_timeout: float | None
    worker_name: str | None
    heartbeat_interval: float
    prune_after: float
    shutdown_timeout: float
    poll_interval: float
    queues: Iterable[str] | None
    flush_interval: float
    queue_concurrency: Mapping[str, int] | None
    retention: float | timedelta | None


class RunnerState(enum.StrEnum):
    """Where a Runner is in its one run (shown in its repr)."""

    #: built, not run yet
    CREATED = "created"
    #: registered (or registering) and claiming jobs
    RUNNING = "running"
    #: shutting down: finishing or cancelling its jobs, writing the last outcomes
    STOPPING = "stopping"
    #: the run ended; a Runner runs once
    STOPPED = "stopped"


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
    :param db_timeout: seconds one backend call (claim, settle, heartbeat, recovery,
        checkpoint, unregister) may take before it is cut off and counts as failed: a
        black-holed network then costs a retry, not a hung worker. Heartbeats are also cut
        off when this worker's lease runs out by its own clock, and every call by a hard stop.
    :param schedules: :class:`Schedule` objects this runner stores at start and enqueues the
        ticks of, together with every other runner that carries schedules (each tick once).
    :param queue_concurrency: ``{queue: n}``: this runner holds at most n jobs of that queue
        at once, within ``concurrency`` (fleet-wide limits: ``backend.configure_queue``).
    :param retention: how long a finished job is kept (a timedelta or seconds; default 7 days):
        the runner deletes older ones in small batches, one runner of a schema at a time.
        None keeps them all (``batchworks purge`` then deletes them by hand).
    """

    # A type checker takes plain functions as handlers only with sync_in_thread=True; at run
    # time check_handlers says the same, for code that is not type checked.
    @overload
    def __init__(
        self,
        backend: Backend,
        handlers: Mapping[str, Handler[Any]],
        *,
        sync_in_thread: Literal[False] = False,
        **options: Unpack[RunnerOptions],
    ) -> None: ...

    @overload
    def __init__(
        self,
        backend: Backend,
        handlers: Mapping[str, Handler[Any] | SyncHandler],
        *,
        sync_in_thread: Literal[True],
        **options: Unpack[RunnerOptions],
    ) -> None: ...

    @overload
    def __init__(  # sync_in_thread known only at run time: async handlers only
        self,
        backend: Backend,
        handlers: Mapping[str, Handler[Any]],
        *,
        sync_in_thread: bool,
        **options: Unpack[RunnerOptions],
    ) -> None: ...

    def __init__(
        self,
        backend: Backend,
        handlers: Mapping[str, Handler[Any] | SyncHandler],
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
        db_timeout: float = DB_TIMEOUT,
        schedules: Iterable[Schedule] | None = None,
        queue_concurrency: Mapping[str, int] | None = None,
        retention: float | timedelta | None = RETENTION,
    ) -> None:
        if not isinstance(backend, Backend):
            raise ConfigurationError(
                f"backend must be a batchworks backend (MemoryBackend, PostgresBackend), "
                f"got {backend!r}"
            )
        self._backend = backend
        # A backend whose claim does not name the keyword (one written before it existed,
        # or a wrapper passing **kwargs on to one) gets no handover: its limited queues'
        # slots free with the settle, as they did.
        self._hands_over = "ended" in inspect.signature(backend.claim).parameters
        self._handlers = check_handlers(handlers, sync_in_thread)
        self._sync_in_thread = sync_in_thread
        self._queues = check_queues(queues, self._handlers)
        self._concurrency = positive_int(concurrency, "concurrency")
        self._batch_size = positive_int(batch_size, "batch_size")
        self._caps = QueueCaps(
            check_queue_concurrency(queue_concurrency, self._queues, self._concurrency)
        )
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
        self._lease = LeaseClock(
            heartbeat_interval=self._heartbeat_interval, prune_after=self._prune_after
        )
        if worker_name is not None and (not isinstance(worker_name, str) or not worker_name):
            raise ConfigurationError(f"worker_name must be a non-empty str, got {worker_name!r}")
        self._worker_name = worker_name or _default_worker_name()
        self._telemetry = Telemetry(self._worker_name)
        self._queue_metrics = QueueMetrics(backend, self._queues, self._telemetry)
        self._attempts = Attempts(
            self._handlers,
            self._policy,
            self._telemetry,
            result_limit=backend.max_payload_bytes,
            threads=self._concurrency if sync_in_thread else None,
        )
        carried = check_schedules(schedules, self._handlers)

        self._state = RunnerState.CREATED
        self._token: WorkerToken | None = None
        self._settle: SettleBuffer | None = None
        self._held: dict[int, Held] = {}
        self._pool = Pool(self._concurrency, self._process)  # runs the held jobs
        self._stop_requested = False
        self._stop_event = asyncio.Event()
        self._beat_soon = asyncio.Event()  # a heartbeat is wanted before the interval is up
        self._beaten = asyncio.Event()  # set each time a heartbeat has come back
        self._hard_stop = asyncio.Event()
        self._calls = Calls(
            timeout=duration(db_timeout, "db_timeout"),
            slow_after=min(SLOW_CALL, max(1.0, self._heartbeat_interval)),
            hard_stop=self._hard_stop,
        )
        self._scheduler = (
            Scheduler(backend, carried, self._telemetry, calls=self._calls) if carried else None
        )
        kept = check_retention(retention)
        self._retention = (
            None
            if kept is None
            else Retention(backend, kept, calls=self._calls, worker=self._worker_name)
        )
        self._close_by: float | None = None  # loop time the last writes must end by
        self._failure: BaseException | None = None
        self._failure_what = ""
        self._room = asyncio.Event()  # set when a held job finishes
        # Ends the fetch loop's wait for work: a stop, or room in a capped queue.
        self._woken = asyncio.Event()
        self._registered = asyncio.Event()
        self._ended = asyncio.Event()
        self._counts = dict.fromkeys(OutcomeKind, 0)
        self._lost = 0
        self._writes = 0  # settle writes done: a claim that came back short looks at it
        #: until when (loop time) claims are bound by a queue's limit (see _fetch_loop)
        self._bound_until = 0.0
        self._started_at = 0.0
        self._finished_at: float | None = None
        self._task: asyncio.Task[None] | None = None

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
    def healthy(self) -> bool:
        """For a liveness probe: True while the runner runs and holds its leases. False
        before it started, once it is stopping or stopped (a pruned or replaced worker
        stops), and while no heartbeat has got through for ``prune_after`` (less a margin):
        the runner then counts its leases as lost and claims nothing until one does, and the
        other workers take its jobs over, so restarting it loses nothing.

        A read of the runner's state, cheap enough for every probe. An event loop blocked by
        sync code answers no probe at all, which a probe's own timeout catches.
        """
        running = self._state is RunnerState.RUNNING and not self._stop_requested
        return running and self._registered.is_set() and self._lease.link.is_set()

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
        await first_set(self._registered, self._ended)
        if not self._registered.is_set():
            raise LifecycleError("the Runner stopped before it was ready")

    def stop(self, *, now: bool = False) -> None:
        """Stop fetching and shut down gracefully (``now=True``: cancel running jobs at once).

        Jobs not yet started are put back at once; running ones get ``shutdown_timeout``
        seconds, then are cancelled and put back, without using an attempt. A claim in flight
        is cut short at once (its jobs are put back if it returns any); ``now=True`` also cuts
        every other backend call in flight. The last writes then get ``CLOSE_GRACE`` seconds
        (``HARD_STOP_GRACE`` after ``now=True``), whatever the network does.
        """
        self._stop_requested = True
        self._stop_event.set()
        self._calls.cut(self._stop_event)
        self._room.set()
        self._woken.set()
        self._calls.cut(self._woken)
        if now:
            self._hard_stop.set()
            self._calls.cut(self._hard_stop)

    async def __aenter__(self) -> Self:
        """Start running in the background (for services); the exit stops gracefully."""
        if self._task is not None or self._state is not RunnerState.CREATED:
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
        if self._state is not RunnerState.CREATED:
            raise LifecycleError(f"Runner was {self._state}; create a new Runner for another run")
        self._state = RunnerState.RUNNING
        self._started_at = time.monotonic()
        # The leases count from when the registration was sent: it may have landed (and its
        # clock started) any time until its answer came back.
        sent = asyncio.get_running_loop().time()
        try:
            token = await self._register()
        except BaseException:
            self._state = RunnerState.STOPPED
            self._ended.set()
            raise
        self._token = token
        self._lease.restart(sent)
        self._settle = SettleBuffer(
            self._write,
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
            extra=log_extra("worker_ready", worker=self._worker_name),
        )
        self._registered.set()
        settler = self._watch(self._settle.run(), "settle")
        heart = self._watch(self._heartbeat_loop(), "heartbeat")
        side = [heart]  # the schedules' task too: it ends with the heartbeats
        if self._scheduler is not None:
            side.append(self._watch(self._scheduler.run(self._stop_event), "scheduler"))
        if self._retention is not None:
            side.append(self._watch(self._retention.run(self._stop_event), "retention"))
        try:
            if not self._stop_requested:
                await self._fetch_loop(drain=drain, max_delay=max_delay)
        finally:
            self._state = RunnerState.STOPPING
            try:
                await self._shutdown()
            finally:
                for task in side:
                    task.cancel()
                self._settle.stop()
                # Half the time left at most: the final flush needs the rest.
                _, pending = await asyncio.wait({settler}, timeout=self._time_left() / 2)
                for task in pending:  # stuck retrying a write: the final flush takes over
                    task.cancel()
                await asyncio.gather(*side, settler, return_exceptions=True)  # seen by _watch
                await self._close()
        if self._failure is not None:
            raise RunnerFailed(
                f"worker {self._worker_name!r} stopped because {self._failure_what} failed "
                f"({type(self._failure).__name__}: {self._failure}); the traceback is in the "
                "log. Its unwritten jobs are recovered as for a lost worker"
            ) from self._failure

    def _watch(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """Run a background task whose failure stops the runner loudly: a worker that cannot
        settle or heartbeat must not go on claiming jobs it cannot finish or keep."""
        task = asyncio.create_task(work, name=f"batchworks:{what}")
        task.add_done_callback(functools.partial(self._on_background_done, what))
        return task

    def _on_background_done(self, what: str, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        self._fail(f"its {what} task", error)

    def _fail(self, what: str, error: BaseException | None) -> None:
        if self._failure is None and error is not None:
            self._failure, self._failure_what = error, what
        logger.error(
            "worker %r: %s failed; it stops now, and run() will raise RunnerFailed",
            self._worker_name,
            what,
            exc_info=error,
            extra=log_extra("runner_failed", worker=self._worker_name),
        )
        self.stop(now=True)

    def _time_left(self) -> float:
        """Seconds left for the last writes of a stop."""
        if self._close_by is None:
            return CLOSE_GRACE
        return max(0.0, self._close_by - asyncio.get_running_loop().time())

    async def _fetch_loop(self, *, drain: bool, max_delay: float) -> None:
        capacity = self._concurrency + self._batch_size  # claimed ahead: one batch at most
        claim_min = max(1, self._batch_size // 2)
        while not self._stop_requested:
            self._room.clear()
            self._woken.clear()
            if not await self._may_claim():
                continue
            if self._suspect is not None:
                await self._run_suspect()
                continue
            planned = self._plan_claim(capacity, claim_min)
            if planned is None:
                await self._room.wait()  # every slot busy and no room for a real batch
                continue
            asked, caps, bound = planned
            writes = self._writes
            jobs = await self._claim(asked, caps, hand_over=bound)
            if jobs:
                self._start_batch(jobs)
            if len(jobs) == asked:
                continue
            if await self._claim_again(writes):
                continue
            if drain:
                if self._held:
                    await self._room.wait()
                elif await self._drained(max_delay):
                    return
            else:
                await self._wait_for_work()

    async def _claim_again(self, writes: int) -> bool:
        """After a claim that came back short (the queue ran dry for now, or a limit of it
        held jobs back): whether the next may go at once, given the settle writes done
        before it."""
        # Claims stay bound for a while: a claim ahead is tried again after that, so that a
        # limit raised or a queue refilled is found.
        if self._hands_over:
            self._bound_until = self._loop_time() + BOUND_FOR
        if self._writes != writes or self._stop_requested:
            # Outcomes written during the claim held slots (a slot is a running job): the next
            # claim may take their places. On a stop, the final flush writes what is pending,
            # within its bound.
            return True
        if self._settle is None or not self._settle.job_ids():  # pending, or being written
            return False
        return await self._settle.flush(deadline=self._loop_time() + self._calls.timeout)

    def _plan_claim(
        self, capacity: int, claim_min: int
    ) -> tuple[int, dict[str, int] | None, bool] | None:
        """How many jobs to claim now, the room of each capped queue, and whether a limit
        binds the claims (then they hand over the slots of ended jobs); None: no room for a
        real batch."""
        # Outcomes not written yet count against the room (#18): claims, which commit
        # asynchronously, must not outrun the settles, or the outcomes pile up unbounded.
        unsettled = len(self._settle) if self._settle is not None else 0
        room = capacity - len(self._held) - unsettled
        bound = self._loop_time() < self._bound_until
        if bound:
            # A limit held a claim back lately: a claim ahead would come back empty, so claim
            # only for handlers that can start, in the slots of the jobs that ended.
            room = min(room, self._concurrency - len(self._held))
            claim_min = min(claim_min, max(1, self._concurrency // 2))
        caps = self._caps.room(held.job.queue for held in self._held.values())
        if (room < claim_min and (len(self._held) >= self._concurrency or unsettled)) or (
            self._caps.full(caps, self._queues)
        ):
            return None
        return min(self._batch_size, room), caps, bound

    async def _may_claim(self) -> bool:
        """Whether this worker holds its leases by its own clock, so that it may claim now;
        if not, waits for what may change that, and returns False."""
        if not self._lease.link.is_set():
            await self._until(self._lease.link)  # its leases count as lost: claim nothing
            return False
        if not self._lease.holds(self._loop_time()):
            # The last heartbeat that got through was sent too long ago (this process was
            # stopped, its loop blocked, or that heartbeat waited out a stall): one sent from
            # now on must get through before anything is claimed, or the claims would go back
            # unstarted (_process) as fast as they came.
            await self._fresh_heartbeat()
            return False
        return True

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
        await self._settle.flush(deadline=self._loop_time() + self._calls.timeout)
        self._pool.put([self._held[suspect.id]])
        while suspect.id in self._held and not self._stop_requested:
            self._room.clear()
            await self._room.wait()
        self._suspect = None

    async def _drained(self, max_delay: float) -> bool:
        """With nothing held: True when no job is due within ``max_delay``, else wait for it."""
        assert self._settle is not None
        # Retries must be visible before the queue counts as empty.
        if not await self._settle.flush(deadline=self._loop_time() + self._calls.timeout):
            return False
        try:
            due = await self._calls.run("next_due", self._backend.next_due(self._queues))
            if due is None or due > max_delay:
                return True
            # Due now but not claimed: taken by another worker meanwhile (the wait returns at
            # once), or held back by a limit of the queue (it returns when one may have room).
            await self._wait(due if due > 0 else self._poll_interval)
        except TRANSIENT as exc:
            self._wait_failed("looking for due jobs", "next_due_failed", exc)
        return False

    async def _wait_for_work(self) -> None:
        try:
            await self._wait(self._poll_interval)
        except TRANSIENT as exc:
            self._wait_failed("waiting for work", "wait_for_work_failed", exc)

    def _wait_failed(self, what: str, action: str, exc: BaseException) -> None:
        # Nothing more to do: the fetch loop goes round and claims again.
        logger.warning(
            "%s failed (%s: %s)",
            what,
            type(exc).__name__,
            exc,
            extra=log_extra(action, worker=self._worker_name),
        )

    async def _wait(self, seconds: float) -> None:
        """Wait for work up to ``seconds``, or until a stop."""
        with contextlib.suppress(TimeoutError):  # the wait ended: claim again
            await self._calls.run(
                "wait_for_work",
                self._backend.wait_for_work(self._queues, max_wait=seconds),
                within=seconds + self._calls.timeout,
                cut=self._woken,
                slow=False,
            )

    async def _until(self, event: asyncio.Event) -> None:
        """Wait for ``event``, or until a stop."""
        await first_set(event, self._stop_event)

    @staticmethod
    def _loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def _claim(
        self, limit: int, caps: dict[str, int] | None, *, hand_over: bool
    ) -> list[ClaimedJob]:
        assert self._token is not None
        telemetry = self._telemetry
        telemetry.refresh()  # an SDK installed meanwhile is picked up from the next batch on
        # While a limit binds, the outcomes on their way to the backend go with the claim:
        # their handlers ended, so their slots pass to the jobs it takes, and the runner does
        # not wait for their settle to claim the next batch (#14). Otherwise they would only
        # cost the claim's encoding (a microsecond a job).
        extra: dict[str, Any] = {}
        if hand_over and self._settle is not None:
            # Not a job held again (claimed anew while an earlier attempt still runs), nor
            # one whose plain handler a timeout or cancel left running in its thread.
            extra["ended"] = [
                outcome
                for outcome in self._settle.outcomes()
                if outcome.job_id not in self._held and not self._attempts.in_thread(outcome.job_id)
            ]
        try:
            started = telemetry.claim_started()
            # A stop cuts a claim short (a black-holed one would hold the stop up to
            # db_timeout); jobs it returns after that are put back.
            claimed = await self._calls.run(
                "claim",
                self._backend.claim(
                    self._token,
                    self._queues,
                    limit,
                    lease=self._prune_after,
                    max_attempts=self._policy.max_attempts,
                    caps=caps,
                    **extra,
                ),
                cut=self._stop_event,
                on_abandon=self._put_back_late_claim,
            )
            telemetry.claimed(self._queues, started, len(claimed))
            self._claim_retry = CLAIM_RETRY_INITIAL
            return claimed
        except Exception as exc:
            if self._stop_requested:
                return []
            if not isinstance(exc, TRANSIENT):
                # A bug (a TypeError, an AttributeError): claiming again would fail the same
                # way forever, quietly, while the jobs wait. Stop loudly instead.
                self._fail("its claim", exc)
                return []
            delay = self._claim_retry
            self._claim_retry = min(delay * 2, CLAIM_RETRY_MAX, self._poll_interval)
            logger.warning(
                "claim failed (%s: %s); retrying in %.1fs",
                type(exc).__name__,
                exc,
                delay,
                extra=log_extra("claim_failed", worker=self._worker_name),
            )
            await first_set(self._stop_event, within=delay)
            return []

    def _put_back_late_claim(self, claim: asyncio.Future[list[ClaimedJob]]) -> None:
        if claim.cancelled() or claim.exception() is not None or self._settle is None:
            return
        for job in claim.result():  # never started: back to the queue, no attempt used
            self._settle.add(released(job))

    def _start_batch(self, claimed: Sequence[ClaimedJob]) -> None:
        # A job whose worker was lost last time may be what killed it: it runs alone, so that
        # if it kills this worker too, no other job loses an attempt with it. One at a time;
        # other suspects go back at once (they did not start: no attempt used).
        # A job still held here from an earlier attempt (its lease ran out while it ran, and
        # this worker claimed it again before it learned so) goes back too: one Held per job
        # id, and the earlier attempt's outcome is fenced out by its attempt number.
        normal = []
        for claim in claimed:
            suspect = claim.lost >= SUSPECT_AFTER
            if claim.id in self._held or (suspect and self._suspect is not None):
                if self._settle is not None:
                    self._settle.add(released(claim))
            elif suspect:
                self._suspect = self._hold(claim).job
            else:
                normal.append(claim)
        if normal:
            self._pool.put([self._hold(claim) for claim in normal])

    def _hold(self, claim: ClaimedJob) -> Held:
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
            batch_id=claim.batch_id,
            _saver=self._save_checkpoint,
            _claimed_at=claim.claimed_at,
        )
        held = self._held[job.id] = Held(job, claim)
        return held

    async def _save_checkpoint(self, job_id: int, value: Any) -> Any:
        assert self._token is not None
        return await self._calls.run(
            "save_checkpoint",
            self._backend.save_checkpoint(self._token, job_id, value, lease=self._prune_after),
        )

    async def _process(self, held: Held, task: asyncio.Task[None]) -> None:
        """Run one held job in a task of the pool (allSettled: each job its own outcome)."""
        job = held.job
        if self._held.get(job.id) is not held:
            return  # put back while it waited (a suspect at shutdown)
        outcome: Outcome | None = None
        try:
            if held.cancel_reason is not None:  # cancelled before a task took it
                outcome = self._attempts.cancelled_outcome(job, held.cancel_reason)
            elif self._stop_requested or not self._lease.holds(task.get_loop().time()):
                # A stop, or leases this worker no longer holds by its own clock (it was
                # stopped or cut off while the job waited for a task; the database may have
                # given the job to another worker): back unstarted, fenced, no attempt used.
                outcome = released(job)
            else:
                held.start(task)
                try:
                    outcome = await self._attempts.run(held)
                finally:
                    held.finish()
        except asyncio.CancelledError:
            if held.cancel_reason is None:
                raise  # not ours: the loop itself is going down
            outcome = self._attempts.cancelled_outcome(job, held.cancel_reason)
        except Exception:
            logger.exception(
                "internal error while running job %s; its lease will expire and it will be "
                "recovered",
                job.id,
                extra=log_extra("job_internal_error", job_id=job.id, worker=self._worker_name),
            )
        finally:
            self._forget(job)
        if outcome is not None and self._settle is not None:
            self._settle.add(outcome)

    def _forget(self, job: Job) -> None:
        """The runner no longer holds ``job``: its place is free."""
        del self._held[job.id]
        self._room.set()
        if self._caps.capped(job.queue):
            self._woken.set()  # the fetch loop may claim this queue again
            self._calls.cut(self._woken)

    def _cancel(self, job_id: int, reason: CancelReason) -> None:
        held = self._held.get(job_id)
        if held is None:
            return
        held.cancel(reason)
        if not held.started and self._pool.remove(held):  # it waited for a task: end it now
            self._forget(held.job)
            outcome = self._attempts.cancelled_outcome(held.job, reason)
            if outcome is not None and self._settle is not None:
                self._settle.add(outcome)

    def _on_settled(self, outcomes: Sequence[Outcome], lost: frozenset[int]) -> None:
        self._writes += 1
        self._room.set()  # the unsettled outcomes, which count against the room, are fewer
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
                extra=log_extra("lease_lost", job_ids=sorted(lost), worker=self._worker_name),
            )

    # -- heartbeats -----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await first_set(self._beat_soon, within=self._heartbeat_interval)
            self._beat_soon.clear()
            sent = loop.time()
            try:
                try:
                    beat = await self._calls.run(
                        "heartbeat", self._send_heartbeat(), within=self._beat_timeout(sent)
                    )
                    await self._after_beat(beat, sent, loop.time())
                finally:
                    self._beaten.set()  # what waits for a fresh beat need not wait for the rest
                if beat.alive:
                    await self._recover_others()
            except TRANSIENT as exc:
                self._beat_failed(exc, loop.time())
            else:
                await self._queue_metrics.maybe_read(self._calls, loop.time())

    async def _fresh_heartbeat(self) -> None:
        """Have a heartbeat sent now, and wait until it has come back (through or not)."""
        self._beaten.clear()
        self._beat_soon.set()
        await first_set(self._beaten, self._stop_event)

    async def _send_heartbeat(self) -> Heartbeat:
        assert self._token is not None and self._settle is not None
        # The jobs whose outcome waits to be written are still this worker's: their leases
        # must last until it is (a settle held up by a stall must not lose its jobs).
        held = [*self._held, *self._settle.job_ids()]
        return await self._backend.heartbeat(self._token, held, lease=self._prune_after)

    def _beat_timeout(self, sent: float) -> float:
        """How long a heartbeat may take: db_timeout, and no longer than the leases last."""
        return self._lease.beat_timeout(sent, self._calls.timeout)

    def _beat_failed(self, exc: BaseException, now: float) -> None:
        silent, expired = self._lease.failed(now)
        if expired:
            self._lease_expired(silent)
            return
        logger.warning(
            "heartbeat failed (%s: %s); none got through for %.1fs; trying again in %.1fs",
            type(exc).__name__,
            exc,
            silent,
            self._heartbeat_interval,
            extra=log_extra("heartbeat_failed", worker=self._worker_name),
        )

    def _lease_expired(self, silent: float) -> None:
        """No heartbeat got through for the lease's length (less a margin): by its own clock
        this worker may have been pruned already, its jobs taken by another. It cannot know,
        so it acts as if: it cancels its handlers (anything they wrote would be fenced out),
        and claims nothing until a heartbeat gets through again (the lease clock cleared
        its link)."""
        logger.error(
            "worker %r: no heartbeat reached the database for %.1fs (prune_after %.1fs): it "
            "counts its leases as lost, cancels its %d jobs (put back, fenced, once the "
            "database answers) and claims nothing until a heartbeat gets through",
            self._worker_name,
            silent,
            self._prune_after,
            len(self._held),
            extra=log_extra("lease_expired", worker=self._worker_name),
        )
        for job_id in list(self._held):
            self._cancel(job_id, CancelReason.EXPIRED)

    async def _after_beat(self, beat: Heartbeat, sent: float, done: float) -> None:
        if not beat.alive:
            await self._not_alive(beat)
            return
        regained = self._lease.got_through(sent, done)
        if regained is not None:
            logger.warning(
                "worker %r: a heartbeat got through again after %.1fs; claiming again",
                self._worker_name,
                regained,
                extra=log_extra("lease_regained", worker=self._worker_name),
            )
        for job_id in beat.lost:
            self._cancel(job_id, CancelReason.LOST)
        for job_id in beat.cancel:
            self._cancel(job_id, CancelReason.OPERATOR)

    async def _recover_others(self) -> None:
        """After a heartbeat that got through: recover the jobs of workers gone silent, once
        this worker's own heartbeats are regular enough to judge them."""
        if self._lease.may_recover:
            # Bounded like a heartbeat: a recovery stuck behind a lock must not keep the next
            # heartbeats (and the lease check they make) from happening.
            recovered = await self._calls.run(
                "recover",
                self._backend.recover(prune_after=self._prune_after),
                within=self._beat_timeout(self._loop_time()),
            )
            self._telemetry.recovered(recovered)
            if self._telemetry.wants_open_batches:  # a count over a partial index, when metered
                self._telemetry.open_batches(
                    await self._calls.run(
                        "open_batches",
                        self._backend.open_batches(),
                        within=self._beat_timeout(self._loop_time()),
                    )
                )

    async def _not_alive(self, beat: Heartbeat) -> None:
        """The backend no longer counts this incarnation alive: its jobs have moved on."""
        for job_id in list(self._held):
            self._cancel(job_id, CancelReason.LOST)
        if beat.replaced:
            # Another live process took this name: registering again would replace it in
            # turn, and the two would take each other's jobs away forever. The newer wins.
            logger.error(
                "worker %r was replaced: another process registered under the same name; "
                "this one stops (two live processes must not share a worker_name: give each "
                "its own)",
                self._worker_name,
                extra=log_extra("worker_lost", worker=self._worker_name),
            )
            self.stop()
            return
        if self._stop_requested:
            return  # stopping anyway: nothing left to carry on with
        # Pruned while alive (a partition, a pause, a stall longer than prune_after): its jobs
        # went back to the queue, but the process is healthy; exiting would leave fewer
        # workers than the operator runs. It carries on as a new incarnation.
        logger.error(
            "worker %r was pruned while alive (no heartbeat of it reached the database for "
            "prune_after=%.1fs): its jobs moved on; it registers again and carries on",
            self._worker_name,
            self._prune_after,
            extra=log_extra("worker_pruned", worker=self._worker_name),
        )
        assert self._settle is not None
        loop = asyncio.get_running_loop()
        # What the old incarnation buffered is written first, fenced: rows a pruner skipped
        # (locked at that moment) are still its own.
        await self._settle.flush(deadline=loop.time() + self._calls.timeout)
        sent = loop.time()  # the leases count from the send, as at the first registration
        token = await self._register()
        self._token = token
        self._settle.rebind(token)
        self._lease.restart(sent)
        logger.warning(
            "worker %r registered again as a new incarnation",
            self._worker_name,
            extra=log_extra("worker_reregistered", worker=self._worker_name),
        )

    async def _register(self) -> WorkerToken:
        return await self._calls.run(
            "register_worker",
            self._backend.register_worker(
                self._worker_name, self._queues, max_attempts=self._policy.max_attempts
            ),
        )

    async def _write(
        self, worker: WorkerToken, outcomes: Sequence[Outcome], deadline: float | None
    ) -> list[int]:
        """The settle buffer's write: one settle, under db_timeout and the deadline."""
        timeout = self._calls.timeout
        if deadline is not None:
            timeout = min(timeout, deadline - asyncio.get_running_loop().time())
        return await self._calls.run(
            "settle", self._backend.settle(worker, outcomes), within=timeout
        )

    # -- shutdown -------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Put back what has not started; give running jobs ``shutdown_timeout``; cancel."""
        self._stop_requested = True
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        suspect, self._suspect = self._suspect, None
        if suspect is not None and not self._held[suspect.id].started:
            self._pool.remove(self._held[suspect.id])
            del self._held[suspect.id]  # never started: back to the queue, no attempt used
            if self._settle is not None:
                self._settle.add(released(suspect))
        for held in list(self._held.values()):
            if not held.started:
                self._cancel(held.job.id, CancelReason.SHUTDOWN)
        if self._held and not self._hard_stop.is_set():
            logger.info(
                "stopping: waiting up to %.1fs for %d running jobs",
                self._shutdown_timeout,
                len(self._held),
                extra=log_extra("worker_stopping", worker=self._worker_name),
            )
            await self._wait_idle(self._shutdown_timeout, until_hard_stop=True)
        # From here on, whatever the network does, everything left (handlers unwinding, the
        # last writes) ends by _close_by: what is left of shutdown_timeout, plus CLOSE_GRACE;
        # HARD_STOP_GRACE alone after a hard stop.
        now = loop.time()
        if self._hard_stop.is_set():
            self._close_by = now + HARD_STOP_GRACE
        else:
            self._close_by = max(now, stopped_at + self._shutdown_timeout) + CLOSE_GRACE
        for job_id in list(self._held):
            self._cancel(job_id, CancelReason.SHUTDOWN)
        if self._held:
            await self._wait_idle(min(CANCEL_GRACE, self._time_left()), until_hard_stop=False)
        if self._held:
            logger.error(
                "%d jobs ignored cancellation; they will be recovered when this worker's "
                "leases expire",
                len(self._held),
                extra=log_extra(
                    "jobs_abandoned", job_ids=list(self._held), worker=self._worker_name
                ),
            )
        self._pool.close()
        if self._pool.tasks:
            await asyncio.wait(self._pool.tasks, timeout=self._time_left())

    async def _wait_idle(self, seconds: float, *, until_hard_stop: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self._held and loop.time() < deadline:
            if until_hard_stop and self._hard_stop.is_set():
                return
            self._room.clear()
            events = (self._room, self._hard_stop) if until_hard_stop else (self._room,)
            await first_set(*events, within=deadline - loop.time())

    async def _close(self) -> None:
        assert self._settle is not None and self._token is not None
        await self._calls.settle_abandoned(min(ABANDONED_GRACE, self._time_left() / 2))
        deadline = self._loop_time() + self._time_left()
        try:
            flushed = await self._settle.flush(deadline=deadline)
        except Exception as exc:  # a bug in writing outcomes, not the database
            self._fail("writing the last outcomes", exc)
            flushed = False
        if not flushed:
            logger.error(
                "%d outcomes could not be written before shutdown; their jobs will be "
                "recovered when this worker is pruned",
                len(self._settle),
                extra=log_extra(
                    "outcomes_unwritten", count=len(self._settle), worker=self._worker_name
                ),
            )
        else:
            try:
                await self._calls.run(
                    "unregister_worker",
                    self._backend.unregister_worker(self._token),
                    within=self._time_left(),
                )
            except Exception as exc:
                logger.warning(
                    "could not mark worker %r stopped (%s: %s); it will be pruned",
                    self._worker_name,
                    type(exc).__name__,
                    exc,
                    extra=log_extra("unregister_failed", worker=self._worker_name),
                )
        if self._calls.abandoned:
            logger.warning(
                "%d backend calls were cut off and never answered (a network that stopped "
                "answering?); closing the backend drops them",
                self._calls.abandoned,
                extra=log_extra(
                    "calls_abandoned", count=self._calls.abandoned, worker=self._worker_name
                ),
            )
        self._state = RunnerState.STOPPED
        self._finished_at = time.monotonic()
        self._ended.set()
        logger.info(
            "worker %r stopped: %s",
            self._worker_name,
            self.report,
            extra=log_extra("worker_stopped", worker=self._worker_name),
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
            extra=log_extra("signal", signal=sig.name, worker=self._worker_name),
        )
        self.stop(now=now)
