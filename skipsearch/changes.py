"""How a change in FID is written everywhere (status, export notes, score, the dashboard)."""

from __future__ import annotations

__all__ = ["format_change"]


def format_change(change: float | None) -> str:
    """A relative FID change: "−44.8%" is 44.8% lower (better); "—" when there is none."""
    if change is None:
        return "—"
    return f"{change * 100:+.1f}%".replace("-", "−")
