"""The demo's data: scikit-learn's 1,797 8×8 digits (shipped inside scikit-learn: no download),
upsampled to 16×16 (bilinear), one channel."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..sampling import to_uint8

__all__ = ["digits_images", "digits_dataset", "split_indices"]


def digits_images(resolution: int = 16) -> torch.Tensor:
    """All 1,797 digits as float32 [N,1,R,R] in [-1, 1], the scale the EDM model trains on."""
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
    if resolution != raw.shape[-1]:
        raw = F.interpolate(raw, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return (raw.clamp(0, 1) * 2 - 1).contiguous()


def digits_dataset(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as uint8 [N,1,R,R] through EDM's `to_uint8` (quantised like samples), and labels."""
    from sklearn.datasets import load_digits

    labels = torch.as_tensor(load_digits().target, dtype=torch.long)
    return to_uint8(digits_images(resolution)), labels


def split_indices(n: int, seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train/test split. numpy's legacy RandomState is stream-stable across versions."""
    perm = np.random.RandomState(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])
