"""How durations read for people, in the CLI and the dashboard alike."""

from __future__ import annotations

__all__ = ["age"]


def age(seconds: float) -> str:
    """``4.2s``, ``3.5m``, ``2.0h``, ``1.5d``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
