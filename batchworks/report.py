"""What a run did, counted as its outcomes were written."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunReport"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """Counts of the outcomes a Runner wrote during one run.

    ``succeeded`` and ``failed`` count jobs that reached those states; ``retried`` counts the
    times a job was put back for a retry. Outcomes a worker could no longer write, because
    the job had moved on (its lease was lost), count in ``lost`` only.
    """

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    #: put back by Snooze, attempt given back
    snoozed: int = 0
    #: put back by a shutdown, attempt given back
    released: int = 0
    #: cancelled by an operator while running
    cancelled: int = 0
    #: outcomes fenced out because the worker no longer held the job
    lost: int = 0
    #: wall-clock seconds the run took
    duration: float = 0.0

    @property
    def settled(self) -> int:
        """Every outcome written: succeeded, failed, retried, snoozed, released, cancelled."""
        return (
            self.succeeded
            + self.failed
            + self.retried
            + self.snoozed
            + self.released
            + self.cancelled
        )
