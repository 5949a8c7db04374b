"""Streaming Fréchet distance: features go batch by batch into float64 sums; no image is kept.

The distance itself is torch-fidelity's `fid_statistics_to_metric`, so our numbers are the ones
torch-fidelity (and, with Inception features and EDM's fid-refs, EDM's fid.py) would report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

from ..errors import MetricError
from .features import extract, feature_dim

__all__ = ["FeatureMoments", "StreamingFID", "fid_from_statistics", "as_statistics"]


def _as_array(features: torch.Tensor | np.ndarray) -> np.ndarray:
    if torch.is_tensor(features):
        features = features.detach().cpu().numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise MetricError(f"features must be a 2-D array [N, D], got shape {list(array.shape)}")
    return array


class FeatureMoments:
    """Count, Σx and Σxxᵀ of a feature stream in float64, enough to give (μ, Σ) at any point.

    The sums are taken about a shift s (the first batch's mean): Σ(x−s) and Σ(x−s)(x−s)ᵀ. Raw
    sums would give Σ = (Σxxᵀ − n·μμᵀ)/(n−1), which cancels catastrophically when |μ| ≫ spread
    (post-ReLU features sit far from 0); about s ≈ μ the subtracted term is tiny, so float64
    matches np.cov to ~1e-12 however many samples stream through.
    """

    def __init__(self) -> None:
        self.count = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None  # Σ (x - shift)            [D]
        self._outer: np.ndarray | None = None  # Σ (x - shift)(x - shift)ᵀ [D, D]

    @property
    def dim(self) -> int | None:
        return None if self._shift is None else int(self._shift.shape[0])

    def update(self, features: torch.Tensor | np.ndarray) -> None:
        """Add a batch of features [N, D] (any float dtype; accumulated in float64)."""
        x = _as_array(features)
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = x.mean(axis=0)
            self._sum = np.zeros_like(self._shift)
            self._outer = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
        elif x.shape[1] != self._shift.shape[0]:
            raise MetricError(f"feature batch has dimension {x.shape[1]}, earlier batches had {self._shift.shape[0]}")
        d = x - self._shift
        self._sum += d.sum(axis=0)
        self._outer += d.T @ d
        self.count += x.shape[0]

    def merge(self, other: FeatureMoments) -> FeatureMoments:
        """Add another stream's moments into this one (re-centred onto this shift); returns self."""
        if other.count == 0:
            return self
        assert other._shift is not None and other._sum is not None and other._outer is not None
        if self._shift is None:
            self._shift, self._sum, self._outer = other._shift.copy(), other._sum.copy(), other._outer.copy()
            self.count = other.count
            return self
        if other._shift.shape != self._shift.shape:
            raise MetricError(f"cannot merge {other.dim}-dim moments into {self.dim}-dim moments")
        # x − s_self = (x − s_other) + δ with δ = s_other − s_self.
        delta = other._shift - self._shift
        cross = np.outer(other._sum, delta)
        self._sum += other._sum + other.count * delta
        self._outer += other._outer + cross + cross.T + other.count * np.outer(delta, delta)
        self.count += other.count
        return self

    def statistics(self) -> dict[str, np.ndarray]:
        """{"mu": [D], "sigma": [D, D]} in float64; σ is unbiased (n−1), as np.cov and torch-fidelity."""
        if self.count < 2:
            raise MetricError(f"need at least 2 samples for a covariance, have {self.count}")
        assert self._shift is not None and self._sum is not None and self._outer is not None
        n = self.count
        mean_d = self._sum / n
        sigma = (self._outer - n * np.outer(mean_d, mean_d)) / (n - 1)
        sigma = (sigma + sigma.T) / 2  # exact symmetry; BLAS's dᵀd need not be bit-symmetric
        return {"mu": self._shift + mean_d, "sigma": sigma}


def as_statistics(stats: Any, what: str = "statistics") -> dict[str, np.ndarray]:
    """(μ, Σ) from a mapping or an object with .mu/.sigma (e.g. ReferenceStats), as float64, checked."""
    if isinstance(stats, Mapping):
        mu, sigma = stats.get("mu"), stats.get("sigma")
    else:
        mu, sigma = getattr(stats, "mu", None), getattr(stats, "sigma", None)
    if mu is None or sigma is None:
        raise MetricError(f"{what} must provide 'mu' and 'sigma'")
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricError(f"{what}: mu must be [D] and sigma [D, D], got {list(mu.shape)} and {list(sigma.shape)}")
    return {"mu": mu, "sigma": sigma}


def fid_from_statistics(a: Any, b: Any) -> float:
    """Fréchet distance between two (μ, Σ), via torch-fidelity (both cast to float64 first)."""
    sa, sb = as_statistics(a, "first statistics"), as_statistics(b, "second statistics")
    if sa["mu"].shape != sb["mu"].shape:
        raise MetricError(f"statistics differ in dimension: {sa['mu'].shape[0]} vs {sb['mu'].shape[0]}")
    return float(fid_statistics_to_metric(sa, sb, verbose=False)[KEY_METRIC_FID])


def _check_steps(steps: Iterable[int]) -> tuple[int, ...]:
    out = tuple(int(s) for s in steps)
    if any(s < 2 for s in out):
        raise MetricError(f"fidelity steps must be at least 2 samples, got {list(out)}")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise MetricError(f"fidelity steps must increase strictly, got {list(out)}")
    return out


class StreamingFID:
    """FID against a reference at increasing sample counts (fidelity steps), images in, floats out.

    `add` streams a batch through the extractor; when the running count crosses a step n, the
    batch's features are split there so FID-at-n uses exactly the first n samples, whatever the
    batch size. Samples past the last step still accumulate (see `fid()`), but yield no result.
    """

    def __init__(
        self,
        extractor: FeatureExtractorBase,
        reference: Any,
        steps: Sequence[int],
        *,
        batch_size: int | None = None,
        keep_features: bool = False,
    ) -> None:
        self.extractor = extractor
        self.reference = as_statistics(reference, "reference")
        self.steps = _check_steps(steps)
        self.batch_size = batch_size
        self.moments = FeatureMoments()
        self._results: list[tuple[int, float]] = []
        self._kept: list[np.ndarray] | None = [] if keep_features else None
        self._check_dim(feature_dim(extractor))

    def _check_dim(self, dim: int) -> None:
        ref_dim = self.reference["mu"].shape[0]
        if dim != ref_dim:
            raise MetricError(
                f"reference has {ref_dim}-dim statistics but extractor '{self.extractor.get_name()}' gives {dim}"
            )

    @property
    def count(self) -> int:
        return self.moments.count

    @property
    def results(self) -> list[tuple[int, float]]:
        """(n, FID over the first n samples) for each step reached so far."""
        return list(self._results)

    @property
    def next_step(self) -> int | None:
        pending = [s for s in self.steps if s > self.count]
        return pending[0] if pending else None

    @property
    def done(self) -> bool:
        """True once the last step has been scored (more samples would not change any result)."""
        return self.next_step is None

    def add(self, images_uint8: torch.Tensor | np.ndarray) -> list[tuple[int, float]]:
        """Stream uint8 images [N,C,H,W]; returns the (n, fid) of the steps this batch completed."""
        return self.add_features(extract(self.extractor, images_uint8, batch_size=self.batch_size))

    def add_features(self, features: torch.Tensor | np.ndarray) -> list[tuple[int, float]]:
        """As `add`, for features already extracted (e.g. on another worker)."""
        x = _as_array(features)
        self._check_dim(x.shape[1])
        if self._kept is not None:
            self._kept.append(x.astype(np.float32))
        new: list[tuple[int, float]] = []
        start = 0
        while start < x.shape[0]:
            step = self.next_step
            take = x.shape[0] - start if step is None else min(x.shape[0] - start, step - self.count)
            self.moments.update(x[start : start + take])
            start += take
            if step is not None and self.count == step:
                new.append((step, self.fid()))
        self._results.extend(new)
        return new

    def features(self) -> np.ndarray:
        """Every feature seen so far, [N, D] float32 (only with `keep_features=True`): what a
        bootstrap over samples resamples."""
        if self._kept is None:
            raise MetricError("features were not kept: create the StreamingFID with keep_features=True")
        return np.concatenate(self._kept) if self._kept else np.zeros((0, 0), dtype=np.float32)

    def fid(self) -> float:
        """FID over every sample seen so far."""
        return fid_from_statistics(self.moments.statistics(), self.reference)
