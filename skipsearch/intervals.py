"""Bootstrap intervals from replicates: plain arithmetic on numbers, so that `status` and `export`
(which read confirmed scores back from a study) need no feature extractor, torch-fidelity or
torchvision to say them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import MetricError

__all__ = ["basic_interval", "paired_gain"]


def basic_interval(point: float, replicates: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The basic (reverse-percentile) bootstrap interval: [2θ̂ − q(1−α/2), 2θ̂ − q(α/2)]."""
    reps = np.asarray(replicates, dtype=np.float64)
    if reps.size < 2:
        raise MetricError("an interval needs at least 2 bootstrap replicates")
    alpha = 1 - level
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(2 * point - hi), float(2 * point - lo)


def paired_gain(base: float, base_reps: Sequence[float], value: float, value_reps: Sequence[float],
                level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """The share of the baseline's FID a schedule removes, (base − value)/base, and its interval
    from the paired replicates (the same resampled indices for both)."""
    b, v = np.asarray(base_reps, dtype=np.float64), np.asarray(value_reps, dtype=np.float64)
    if b.shape != v.shape:
        raise MetricError(f"paired replicates differ in number: {b.size} and {v.size}")
    gain = (base - value) / base
    return gain, basic_interval(gain, (b - v) / b, level)
