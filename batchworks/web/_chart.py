"""The overview's throughput chart and a batch's progress bar, laid out on the server as SVG
rectangles: no JavaScript, no inline style (the page's Content-Security-Policy allows none)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Bar", "Chart", "Segment", "chart", "progress"]

WIDTH, HEIGHT = 600, 80  # the SVG's viewBox, in its own units


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    #: "succeeded" or "failed" (the CSS class), and the count and the minute it stands for
    kind: str
    count: int
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    bars: tuple[Bar, ...]
    succeeded: int
    failed: int
    peak: int
    width: int = WIDTH
    height: int = HEIGHT


def chart(succeeded: list[int], failed: list[int], *, bucket: float) -> Chart:
    """Stacked bars, oldest bucket first: failed at the bottom, succeeded on top."""
    count = len(succeeded)
    peak = max((s + f for s, f in zip(succeeded, failed, strict=True)), default=0)
    step = WIDTH / max(count, 1)
    bars = []
    for index, (ok, bad) in enumerate(zip(succeeded, failed, strict=True)):
        ago = (count - index) * bucket
        label = f"{_minutes(ago)} ago"
        base = float(HEIGHT)
        for kind, value in (("failed", bad), ("succeeded", ok)):
            if not value:
                continue
            height = HEIGHT * value / peak
            base -= height
            bars.append(Bar(index * step, base, step * 0.9, height, kind, value, label))
    return Chart(tuple(bars), sum(succeeded), sum(failed), peak)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


@dataclass(frozen=True, slots=True)
class Segment:
    x: float
    width: float
    #: the members' state (the CSS class) and how many are in it
    kind: str
    count: int


#: a batch's members in the order its progress bar draws them, finished ones first
PROGRESS_KINDS = ("succeeded", "failed", "cancelled", "running")
PROGRESS_WIDTH = 200  # the progress bar's viewBox width


def progress(counts: dict[str, int], total: int) -> tuple[Segment, ...]:
    """A batch's progress bar: one segment per state with members, left to right, each as
    wide as its share of ``total`` (what is left over is the queued members)."""
    segments = []
    x = 0.0
    for kind in PROGRESS_KINDS:
        count = counts.get(kind, 0)
        if not count or not total:
            continue
        width = PROGRESS_WIDTH * count / total
        segments.append(Segment(x, width, kind, count))
        x += width
    return tuple(segments)
