"""Intervals of proxy FID: coverage of the true value at the nominal rate, in a simulation with
known moments; the paired gain likewise; FID(∞) on an exact 1/n curve."""

from __future__ import annotations

import numpy as np
import pytest

from skipsearch.metrics import (
    FrechetToReference,
    basic_interval,
    bootstrap_counts,
    fid_from_statistics,
    fid_infinity,
    paired_gain,
)


def _gaussian(rng: np.random.Generator, d: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(d, d))
    return rng.normal(size=d) * scale, a @ a.T / d + np.eye(d) * 0.4


def test_fid_against_a_fixed_reference_matches_torch_fidelity() -> None:
    rng = np.random.default_rng(1)
    mu_r, sig_r = _gaussian(rng, 12, 1.0)
    x = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12)) + 0.5
    frechet = FrechetToReference({"mu": mu_r, "sigma": sig_r})
    stats = {"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)}
    assert frechet.of_features(x) == pytest.approx(fid_from_statistics(stats, {"mu": mu_r, "sigma": sig_r}), rel=1e-7)
    counts = bootstrap_counts(500, 3, seed=7)
    assert counts.shape == (3, 500) and (counts.sum(1) == 500).all()
    assert (bootstrap_counts(500, 3, seed=7) == counts).all() and not (bootstrap_counts(500, 3, seed=8) == counts).all()
    resampled = np.repeat(x, counts[0], axis=0)  # weights = an explicit resample
    assert frechet.of_features(x, counts[0]) == pytest.approx(frechet.of_features(resampled), rel=1e-9)


@pytest.mark.slow
def test_intervals_cover_the_true_fid_and_gain_at_the_nominal_rate() -> None:
    """Features ~ N(μ, Σ) with known moments, so the true FID and the true gain are known."""
    rng = np.random.default_rng(0)
    d, n, resamples, runs = 8, 800, 150, 240
    mu_r, sig_r = _gaussian(rng, d, 1.0)
    frechet = FrechetToReference({"mu": mu_r, "sigma": sig_r})
    mu_b, sig_b = mu_r + 0.3 * rng.normal(size=d), _gaussian(rng, d, 1.0)[1]
    mu_s, sig_s = mu_r + 0.1 * rng.normal(size=d), 0.8 * sig_b + 0.2 * sig_r
    true_b, true_s = frechet(mu_b, sig_b), frechet(mu_s, sig_s)
    true_gain = (true_b - true_s) / true_b
    chol_b, chol_s = np.linalg.cholesky(sig_b), np.linalg.cholesky(sig_s)
    covered = covered_gain = 0
    for run in range(runs):
        z = rng.normal(size=(n, d))  # the shared seeds: the schedule's samples follow the baseline's
        base = mu_b + z @ chol_b.T
        tuned = mu_s + (0.8 * z + 0.6 * rng.normal(size=(n, d))) @ chol_s.T
        counts = bootstrap_counts(n, resamples, seed=run)
        fb, fs = frechet.of_features(base), frechet.of_features(tuned)
        reps_b, reps_s = frechet.bootstrap(base, counts), frechet.bootstrap(tuned, counts)
        lo, hi = basic_interval(fb, reps_b)
        covered += lo <= true_b <= hi
        _, (glo, ghi) = paired_gain(fb, reps_b, fs, reps_s)
        covered_gain += glo <= true_gain <= ghi
    assert abs(covered / runs - 0.95) <= 0.05, covered / runs
    assert abs(covered_gain / runs - 0.95) <= 0.05, covered_gain / runs


def test_paired_gain_interval_is_tighter_than_unpaired() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(10, 1, size=300)
    tuned = base * 0.8 + rng.normal(0, 0.05, size=300)  # the same resamples, strongly correlated
    gain, (lo, hi) = paired_gain(10.0, base, 8.0, tuned)
    assert gain == pytest.approx(0.2) and hi - lo < 0.05
    shuffled = rng.permutation(tuned)  # the pairing broken
    _, (slo, shi) = paired_gain(10.0, base, 8.0, shuffled)
    assert shi - slo > 3 * (hi - lo)


def test_fid_infinity_extrapolates_the_1_over_n_bias() -> None:
    counts = [125, 250, 500, 1000]
    assert fid_infinity(counts, [12.0 + 500 / n for n in counts]) == pytest.approx(12.0)
    assert fid_infinity([1000], [3.0]) is None
