"""The one error type of the metrics package, so callers (the CLI) can print it as one line."""

from __future__ import annotations

__all__ = ["MetricError"]


class MetricError(ValueError):
    """A metric cannot be computed as asked: bad statistics, missing weights, unreadable data."""
