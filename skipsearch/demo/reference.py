"""The demo's reference statistics and its noise floor."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..metrics import (
    DIGITS_EXTRACTOR,
    FeatureMoments,
    ReferenceStats,
    builtin_reference_path,
    compute_reference,
    extract,
    fid_from_statistics,
    make_extractor,
    save_reference,
    weights_sha256,
)
from .data import digits_dataset

__all__ = ["compute_builtin_reference", "write_builtin_reference", "real_data_floor"]


def compute_builtin_reference(weights_path: str | os.PathLike[str] | None = None) -> ReferenceStats:
    """All 1,797 digits (through EDM's to_uint8) under the digits classifier, recording its sha256."""
    images, _ = digits_dataset()
    meta = {"classifier_sha256": weights_sha256(weights_path), "source": "sklearn-digits-1797-16x16-to_uint8"}
    return compute_reference(images, features=DIGITS_EXTRACTOR, weights_path=weights_path, meta=meta)


def write_builtin_reference(out: str | os.PathLike[str] | None = None) -> tuple[Path, ReferenceStats]:
    ref = compute_builtin_reference()
    return save_reference(ref, out or builtin_reference_path("edm-digits")), ref


def real_data_floor(*, seed: int = 0, weights_path: str | os.PathLike[str] | None = None) -> float:
    """FID between two disjoint random halves (898/899) of the 1,797 digits.

    The noise floor of proxy FID on the demo: a perfect generator scored with ~900 samples
    against half the data cannot go below about this value.
    """
    images, _ = digits_dataset()
    perm = np.random.RandomState(seed).permutation(len(images))
    half = len(images) // 2
    extractor = make_extractor(DIGITS_EXTRACTOR, weights_path=weights_path)
    stats = []
    for idx in (perm[:half], perm[half:]):
        moments = FeatureMoments()
        moments.update(extract(extractor, images[np.sort(idx)]))
        stats.append(moments.statistics())
    return fid_from_statistics(stats[0], stats[1])
