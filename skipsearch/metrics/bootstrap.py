"""Intervals for proxy FID: a bootstrap over samples, paired across schedules, and FID(∞).

Every schedule of a confirmation is scored on the same seeds, so resampling the same sample
indices for all of them (one shared set of index draws) gives a *paired* bootstrap: the gain
of a schedule over the baseline is computed resample by resample, and its interval is far
tighter than the difference of two independent intervals. Each worker needs only its own
features and the shared seed, and keeps B numbers, not the features.

Intervals are "basic" bootstrap intervals (2θ̂ − q_hi, 2θ̂ − q_lo): FID estimated from n samples
is biased upward, a resample of it doubly so, and the basic interval cancels that shift to first
order where the percentile interval would inherit it (tests/test_bootstrap.py measures coverage).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import MetricError
from ..intervals import basic_interval, paired_gain
from .fid import as_statistics

__all__ = ["bootstrap_counts", "FrechetToReference", "basic_interval", "paired_gain", "fid_infinity"]


def bootstrap_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """How often each of n samples is drawn in each resample: [resamples, n] (rows sum to n).

    The same (n, resamples, seed) gives the same draws on every machine, which is what pairs the
    schedules of a confirmation.
    """
    if n < 2 or resamples < 1:
        raise MetricError(f"a bootstrap needs at least 2 samples and 1 resample, got {n} and {resamples}")
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(resamples)])


class FrechetToReference:
    """Fréchet distance of many (μ, Σ) to one reference, with the reference's square root computed
    once: FID = |μ − μr|² + tr Σ + tr Σr − 2·Σ √λ(A Σ A), A = Σr^½ (symmetric, via eigh)."""

    def __init__(self, reference: object) -> None:
        ref = as_statistics(reference, "reference")
        self.mu = ref["mu"]
        self.trace = float(np.trace(ref["sigma"]))
        values, vectors = np.linalg.eigh((ref["sigma"] + ref["sigma"].T) / 2)
        self.root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T

    def __call__(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        inner = self.root @ sigma @ self.root
        eig = np.linalg.eigvalsh((inner + inner.T) / 2)
        diff = mu - self.mu
        return float(diff @ diff + np.trace(sigma) + self.trace - 2 * np.sqrt(np.clip(eig, 0, None)).sum())

    def of_features(self, features: np.ndarray, counts: np.ndarray | None = None) -> float:
        """FID of the features, each sample weighted by how often the resample drew it."""
        x = np.asarray(features, dtype=np.float64)
        n = len(x)
        w = np.ones(n) if counts is None else np.asarray(counts, dtype=np.float64)
        mu = w @ x / n
        centred = x - mu
        sigma = (centred.T * w) @ centred / (n - 1)
        return self(mu, sigma)

    def bootstrap(self, features: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """One FID per resample (row of `counts`)."""
        x = np.asarray(features, dtype=np.float64)
        if counts.shape[1] != len(x):
            raise MetricError(f"bootstrap draws are for {counts.shape[1]} samples, the features hold {len(x)}")
        return np.array([self.of_features(x, row) for row in counts])


def fid_infinity(counts: Sequence[int], fids: Sequence[float]) -> float | None:
    """FID extrapolated to infinitely many samples: the least-squares fit FID(n) = FID∞ + k/n.

    FID's bias shrinks like 1/n (Chong & Forsyth 2020, "Effectively unbiased FID"); None with
    fewer than two sample counts.
    """
    n = np.asarray(counts, dtype=np.float64)
    y = np.asarray(fids, dtype=np.float64)
    if len(np.unique(n)) < 2:
        return None
    design = np.stack([np.ones_like(n), 1.0 / n], axis=1)
    (intercept, _), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(intercept)
