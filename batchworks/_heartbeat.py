"""A worker's own clock on its leases, kept from its heartbeats.

The database counts a lease from when a heartbeat landed; the worker can only count from
when it sent the last one that got through. So the worker gives its leases up a margin
before the database may take them (the margin covers the two clocks' rates), and while it
counts them as lost it claims nothing. Both the margin and the stall limit come from the
room ``prune_after`` leaves beyond one heartbeat interval.

This module keeps that arithmetic; the Runner sends the heartbeats and acts on what it says.
Times are event-loop seconds.
"""

from __future__ import annotations

import asyncio


class LeaseClock:
    """What this worker's heartbeats say about its leases, by its own clock."""

    def __init__(self, *, heartbeat_interval: float, prune_after: float) -> None:
        self._interval = heartbeat_interval
        self._prune_after = prune_after
        #: a beat later or slower than this means this worker was stuck
        self._stall_limit = (prune_after - heartbeat_interval) / 2
        #: how long before the database may take them this worker gives its leases up
        self.margin = min(heartbeat_interval, self._stall_limit)
        #: set while this worker holds its leases by its own clock; clear while it counts
        #: them as lost
        self.link = asyncio.Event()
        self.link.set()
        self._ok_at = 0.0  # loop time the last heartbeat that got through was sent
        self._done_at = 0.0  # loop time it came back
        self._regular = 0  # heartbeats in a row that came on time and fast

    def restart(self, now: float) -> None:
        """A (new) registration at ``now``: the leases start over, held."""
        self._ok_at = self._done_at = now
        self._regular = 0
        self.link.set()

    def holds(self, now: float) -> bool:
        """Whether this worker holds its leases at ``now`` by its own clock: the link is set
        and the last heartbeat that got through was sent recently enough. The second part can
        turn false before any heartbeat fails: in a process resumed after a SIGSTOP, a loop
        blocked past the lease, or after a heartbeat that got through only once a stall
        ended (it counts from when it was sent). Then nothing may start or be claimed until
        a heartbeat sent from now on gets through: the database may have given the jobs to
        another worker meanwhile."""
        return self.link.is_set() and now - self._ok_at < self._prune_after - self.margin

    def beat_timeout(self, sent: float, limit: float) -> float:
        """How long a heartbeat sent at ``sent`` may take: ``limit``, and while the leases
        last, no longer than they do (but a margin, to hear the answer)."""
        if not self.link.is_set():
            return limit
        lease_left = self._ok_at + self._prune_after - self.margin - sent
        return min(limit, max(lease_left, self.margin))

    def failed(self, now: float) -> tuple[float, bool]:
        """A heartbeat failed at ``now``. Returns the seconds since the last one got through,
        and whether the leases ran out by this worker's clock just now (the link is then
        cleared: claim nothing until :meth:`got_through`)."""
        self._regular = 0
        silent = now - self._ok_at
        expired = self.link.is_set() and silent >= self._prune_after - self.margin
        if expired:
            self.link.clear()
        return silent, expired

    def got_through(self, sent: float, done: float) -> float | None:
        """A heartbeat sent at ``sent`` came back alive at ``done``. Returns the seconds
        the leases had counted as lost when it regained them (None: they had not)."""
        regained = None
        if not self.link.is_set():
            regained = done - self._ok_at
            self.link.set()
        # A worker that has just come out of a stall (its own heartbeat late or slow: a
        # locked table, a stalled server, a blocked loop) sees every other worker as silent
        # for as long as it was stuck, and their heartbeats, queued behind the same stall,
        # may not have landed yet: judging them now would prune live workers. So it recovers
        # nothing until its own heartbeats have come on time twice in a row; by then every
        # live worker has had a heartbeat interval to land one.
        on_time = sent - self._done_at <= self._interval + self._stall_limit
        regular = on_time and done - sent <= self._stall_limit
        self._regular = self._regular + 1 if regular else 0
        self._ok_at, self._done_at = sent, done
        return regained

    @property
    def may_recover(self) -> bool:
        """Whether this worker's heartbeats are regular enough to judge other workers'."""
        return self._regular >= 2
