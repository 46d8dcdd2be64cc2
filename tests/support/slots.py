"""The slots of a flow-control scenario (#14): who held a lease on which job, when.

:func:`install` puts a trigger on the scenario's jobs table that writes one row of ``slots``
per claim (an attempt entering ``running``, stamped with the job's ``started_at``, the clock
the claim read under the queue's lock) and closes it when the attempt leaves ``running`` (its
settle, or the recovery that took the lease away: ``clock_timestamp()`` inside that
transaction, so before it committed). A slot is therefore exactly the span in which a worker
held a valid lease on the attempt. A worker may hand a slot over earlier, once the attempt's
handler has ended (#14): a worker run with ``audit_handovers`` records each such offer in
``handovers`` just before the claim that makes it, so ``Slot.freed`` is at most the moment the
claim took it over. That is lenient where the worker was killed between the record and the
claim (the database still counts the slot busy until the recovery, the audit free); recording
after the claim instead would count a slot handed over by a claim that a kill cut off before
its record as busy, and fail a run that kept the limit. The handlers' overlap, counted from
the effects, is exact either way. The checks count, over those spans, the jobs running at
once per queue and per concurrency key, and the starts within any rate window; and they clip
each handler execution of the ledger's ``effects`` to its lease, to count how many ran on
past it (a worker presumed dead that woke up).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

AUDIT = """
CREATE TABLE "{schema}".slots (
    job_id  bigint  NOT NULL,
    attempt integer NOT NULL,
    queue   text    NOT NULL,
    key     text,
    began   timestamptz NOT NULL,
    ended   timestamptz
);
CREATE FUNCTION "{schema}".audit_slots() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'running' AND (NEW.state <> 'running' OR NEW.attempts <> OLD.attempts) THEN
        UPDATE "{schema}".slots SET ended = clock_timestamp()
        WHERE job_id = OLD.id AND attempt = OLD.attempts AND ended IS NULL;
    END IF;
    IF NEW.state = 'running' AND (OLD.state <> 'running' OR NEW.attempts <> OLD.attempts) THEN
        INSERT INTO "{schema}".slots (job_id, attempt, queue, key, began)
        VALUES (NEW.id, NEW.attempts, NEW.queue, NEW.concurrency_key, NEW.started_at);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_slots AFTER UPDATE OF state, attempts ON "{schema}".jobs
    FOR EACH ROW EXECUTE FUNCTION "{schema}".audit_slots();
CREATE TABLE "{schema}".handovers (
    job_id     bigint      NOT NULL,
    claimed_at timestamptz,
    at         timestamptz NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Slot:
    job_id: int
    attempt: int
    queue: str
    key: str | None
    began: datetime
    #: when the attempt left running (its settle or recovery); None: it has not
    ended: datetime | None
    #: when its worker first offered the slot to a claim of its own, the attempt's handler
    #: having ended (a handover, #14); None: never
    handed: datetime | None = None

    @property
    def freed(self) -> datetime | None:
        """When the slot stopped counting against a limit: at the handover or at the end,
        whichever came first."""
        if self.handed is None or self.ended is None:
            return self.ended or self.handed
        return min(self.ended, self.handed)


async def install(pool: asyncpg.Pool, schema: str) -> None:
    await pool.execute(AUDIT.format(schema=schema))


async def read(pool: asyncpg.Pool, schema: str) -> list[Slot]:
    rows = await pool.fetch(
        f"""SELECT s.*, (SELECT min(h.at) FROM "{schema}".handovers AS h
                         WHERE h.job_id = s.job_id AND h.claimed_at = s.began) AS handed
            FROM "{schema}".slots AS s ORDER BY began"""
    )
    return [Slot(**dict(row)) for row in rows]


def most_at_once(
    spans: Iterable[tuple[Hashable, datetime, datetime | None]],
) -> dict[Hashable, int]:
    """The most spans open at one instant, by group; spans are half-open [began, ended), so
    one that ends when another begins does not overlap it (an open one never ends)."""
    events: dict[Hashable, list[tuple[datetime, int]]] = defaultdict(list)
    for group, began, ended in spans:
        events[group].append((began, 1))
        if ended is not None:
            events[group].append((ended, -1))
    most: dict[Hashable, int] = {}
    for group, points in events.items():
        now = peak = 0
        for _, step in sorted(points):  # at one instant, -1 sorts before +1
            now += step
            peak = max(peak, now)
        most[group] = peak
    return most


def most_in_window(starts: list[datetime], seconds: float) -> int:
    """The most starts within any half-open window [t, t + seconds)."""
    ordered = sorted(starts)
    stamps = [start.timestamp() for start in ordered]
    return max(
        (bisect.bisect_left(stamps, t + seconds) - i for i, t in enumerate(stamps)), default=0
    )


def clipped(
    slots: list[Slot], effects: list[asyncpg.Record]
) -> tuple[list[tuple[Hashable, datetime, datetime | None]], int]:
    """Each handler execution of ``effects`` clipped to its attempt's lease, as spans by
    queue, and how many executions ran on past their lease."""
    lease = {(slot.job_id, slot.attempt): slot for slot in slots}
    spans: list[tuple[Hashable, datetime, datetime | None]] = []
    past = 0
    for row in effects:
        slot = lease.get((row["job_id"], row["attempt"]))
        if slot is None:
            continue
        began = max(row["started_at"], slot.began)
        ended = row["done_at"] if slot.ended is None else min(row["done_at"], slot.ended)
        if slot.ended is not None and row["done_at"] > slot.ended:
            past += 1
        if began < ended:
            spans.append((slot.queue, began, ended))
    return spans, past
