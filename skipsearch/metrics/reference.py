"""Reference statistics (μ, Σ): EDM's fid-refs npz files, our own, or computed from images.

A reference is fingerprinted by the sha256 of its statistics (float64, little-endian, μ then Σ
in C order), so a study can record exactly which reference its scores were measured against —
the same numbers give the same fingerprint whatever dtype the file stored them in.

Built-in references ship as package data (`builtin:NAME`). The demo's (`edm-digits`) is the
statistics of all 1,797 digits under the shipped classifier and records that classifier's sha256:
a reference that does not match the classifier in use is refused, never silently trusted
(`skipsearch demo reference` rebuilds it).
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MetricError
from ..fileio import atomic_write
from ..safe_pickle import NUMPY_DATA, safe_load
from ..registry import BUILTIN_PREFIX, Registry
from .digits import EXTRACTOR_NAME as DIGITS
from .digits import weights_sha256
from .features import extract, make_extractor
from .fid import FeatureMoments

__all__ = [
    "ReferenceStats",
    "statistics_sha256",
    "load_reference",
    "load_references",
    "EDM2_BLOCKS",
    "save_reference",
    "compute_reference",
    "builtin_reference",
    "builtin_reference_path",
    "iter_image_batches",
    "IMAGE_SUFFIXES",
    "BUILTIN_REFERENCES",
    "BUILTIN_PREFIX",
    "resolve_reference",
]

BUILTIN_REFERENCES: Registry[str] = Registry("built-in reference", MetricError)  # name -> package data file
BUILTIN_REFERENCES.register("edm-digits", "edm-digits-ref.npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_IMAGE_KEYS = ("arr_0", "images", "x")


def statistics_sha256(mu: np.ndarray, sigma: np.ndarray) -> str:
    """Fingerprint of (μ, Σ): sha256 over their float64 little-endian bytes, μ then Σ (C order)."""
    digest = hashlib.sha256()
    for array in (mu, sigma):
        digest.update(np.ascontiguousarray(array, dtype="<f8").tobytes())
    return digest.hexdigest()


@dataclass(eq=False)
class ReferenceStats:
    """Reference (μ, Σ) with what produced them. `meta` holds extra string fields (e.g. classifier_sha256)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: str | None
    count: int | None
    sha256: str
    meta: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_arrays(
        cls,
        mu: np.ndarray,
        sigma: np.ndarray,
        *,
        features: str | None = None,
        count: int | None = None,
        meta: Mapping[str, str] | None = None,
    ) -> ReferenceStats:
        mu, sigma = np.asarray(mu), np.asarray(sigma)
        _check_shapes(mu, sigma, "statistics")
        return cls(mu, sigma, features, count, statistics_sha256(mu, sigma), dict(meta or {}))

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def _check_shapes(mu: np.ndarray, sigma: np.ndarray, where: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricError(f"{where}: mu must be [D] and sigma [D, D], got {list(mu.shape)} and {list(sigma.shape)}")
    if mu.dtype.kind != "f" or sigma.dtype.kind != "f":
        raise MetricError(f"{where}: mu and sigma must be floating point, got {mu.dtype} and {sigma.dtype}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise MetricError(f"{where}: statistics contain NaN or infinity")


def _open_npz(path: Path, what: str) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise MetricError(f"{what} not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError, UnpicklingError, BadZipFile...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MetricError(f"cannot read {what} {path}: {reason}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise MetricError(f"{path} is a single .npy array, not an .npz archive")
    return data


def _read_member(data: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        return data[key]
    except Exception as exc:
        raise MetricError(f"cannot read '{key}' from {path}: {exc}") from None


# EDM2's dataset-ref .pkl: blocks of statistics named by metric; the extractor each was made with.
EDM2_BLOCKS = {"fid": "inception-v3-compat", "fd_dinov2": "dinov2-vit-l-14-edm2"}


def load_references(path: str | os.PathLike[str]) -> dict[str | None, ReferenceStats]:
    """Every set of statistics in a reference file, by the feature extractor it was made with.

    EDM2's dataset-ref `.pkl` (`{num_images, fid: {mu, sigma}, fd_dinov2: {mu, sigma}}`, read as
    plain data only) gives one entry per metric; an `.npz` gives one, keyed by its recorded
    extractor (None for EDM's fid-refs, which do not say).
    """
    path = Path(path).expanduser()
    if path.suffix.lower() != ".pkl":
        ref = load_reference(path)
        return {ref.features: ref}
    if not path.is_file():
        raise MetricError(f"reference statistics not found: {path}")
    data = safe_load(path, NUMPY_DATA, error=MetricError, what="reference pickle",
                     refused="a statistics file never needs; refusing to load it")
    if not isinstance(data, dict):
        raise MetricError(f"{path}: expected a dict of statistics (EDM2's dataset-ref format)")
    count = data.get("num_images")
    out: dict[str | None, ReferenceStats] = {}
    for block, extractor in EDM2_BLOCKS.items():
        stats = data.get(block)
        if isinstance(stats, dict) and "mu" in stats and "sigma" in stats:
            mu, sigma = np.asarray(stats["mu"]), np.asarray(stats["sigma"])
            _check_shapes(mu, sigma, f"{path} [{block}]")
            out[extractor] = ReferenceStats(mu, sigma, extractor, int(count) if count is not None else None,
                                            statistics_sha256(mu, sigma), {"source": f"{path.name}:{block}"})
    if not out:
        raise MetricError(f"{path}: no statistics found (expected keys {', '.join(EDM2_BLOCKS)} with mu and sigma)")
    return out


def load_reference(path: str | os.PathLike[str], features: str | None = None) -> ReferenceStats:
    """Load EDM's fid-refs npz (mu, sigma) or ours (plus features, count, meta_*), arrays as stored;
    from a file of several statistics (EDM2's .pkl), the ones made with `features`."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".pkl":
        refs = load_references(path)
        if features is None and len(refs) == 1:
            return next(iter(refs.values()))
        if features not in refs:
            raise MetricError(f"{path} holds statistics for {', '.join(str(k) for k in refs)}, not for features "
                              f"{features!r}; choose --features accordingly")
        return refs[features]
    with _open_npz(path, "reference statistics") as data:
        keys = set(data.files)
        missing = [k for k in ("mu", "sigma") if k not in keys]
        if missing:
            hint = ""
            if keys & set(NPZ_IMAGE_KEYS):
                hint = " (it looks like an image archive: compute statistics from it with compute_reference)"
            raise MetricError(
                f"{path}: missing key(s) {', '.join(map(repr, missing))}; found {sorted(keys) or 'nothing'}{hint}"
            )
        mu, sigma = _read_member(data, "mu", path), _read_member(data, "sigma", path)
        _check_shapes(mu, sigma, str(path))
        features = str(_read_member(data, "features", path)[()]) if "features" in keys else None
        count = int(_read_member(data, "count", path)[()]) if "count" in keys else None
        meta = {k[5:]: str(_read_member(data, k, path)[()]) for k in sorted(keys) if k.startswith("meta_")}
    return ReferenceStats(mu, sigma, features, count, statistics_sha256(mu, sigma), meta)


def save_reference(stats: ReferenceStats, path: str | os.PathLike[str]) -> Path:
    """Write an npz readable by `load_reference` (and by EDM's fid.py), atomically."""
    path = Path(path).expanduser()
    arrays: dict[str, np.ndarray] = {"mu": np.asarray(stats.mu), "sigma": np.asarray(stats.sigma)}
    if stats.features is not None:
        arrays["features"] = np.array(stats.features)
    if stats.count is not None:
        arrays["count"] = np.array(stats.count, dtype=np.int64)
    for key, value in stats.meta.items():
        arrays[f"meta_{key}"] = np.array(str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        np.savez(f, **arrays)
    return path


# ----------------------------------------------------------------------------------------------
# Images → uint8 [N,C,H,W] batches


def _to_nchw(array: np.ndarray | torch.Tensor, where: str) -> torch.Tensor:
    """uint8 [N,H,W], [N,H,W,C] or [N,C,H,W] (C 1 or 3; a trailing 1/3 axis means NHWC) → [N,C,H,W]."""
    x = torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array)
    if x.dtype != torch.uint8:
        raise MetricError(f"{where}: images must be uint8, got {x.dtype}")
    if x.dim() == 3:
        x = x[:, None]
    elif x.dim() != 4:
        raise MetricError(f"{where}: expected images [N,H,W,C] or [N,C,H,W], got shape {list(x.shape)}")
    elif x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3):
        raise MetricError(f"{where}: images must have 1 or 3 channels, got shape {list(x.shape)}")
    return x.contiguous()


def _decode(blob: bytes | Path, name: str) -> np.ndarray:
    """One image file → uint8 [C,H,W]; greyscale stays one channel, everything else becomes RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob) if isinstance(blob, bytes) else blob) as img:
            img = img.convert("L") if img.mode in ("1", "L", "LA", "I", "I;16", "F") else img.convert("RGB")
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise MetricError(f"cannot decode image {name}: {exc}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _stack(images: list[np.ndarray]) -> torch.Tensor:
    if any(im.shape[0] == 3 for im in images):  # mixed grey/RGB: grey → RGB (same features either way)
        images = [np.repeat(im, 3, axis=0) if im.shape[0] == 1 else im for im in images]
    return torch.from_numpy(np.stack(images))


def _iter_files(items: Iterator[tuple[str, Any]], batch_size: int, where: str) -> Iterator[torch.Tensor]:
    batch: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    for name, blob in items:
        image = _decode(blob, name)
        if size is None:
            size = image.shape[1:]
        elif image.shape[1:] != size:
            got, want = f"{image.shape[2]}×{image.shape[1]}", f"{size[1]}×{size[0]}"
            raise MetricError(f"{where}: {name} is {got}, earlier images are {want}")
        batch.append(image)
        if len(batch) == batch_size:
            yield _stack(batch)
            batch = []
    if batch:
        yield _stack(batch)


def iter_image_batches(
    data: str | os.PathLike[str] | np.ndarray | torch.Tensor, batch_size: int = 250
) -> Iterator[torch.Tensor]:
    """uint8 [B,C,H,W] batches from a folder (recursive, sorted), a zip, an .npz, or an array."""
    if batch_size < 1:
        raise MetricError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(data, (np.ndarray, torch.Tensor)):
        images = _to_nchw(data, "images")
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]
        return
    path = Path(data).expanduser()
    if not path.exists():
        raise MetricError(f"image data not found: {path}")
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        if not files:
            raise MetricError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {path}")
        yield from _iter_files(((str(p), p) for p in files), batch_size, str(path))
    elif path.suffix.lower() == ".npz":
        with _open_npz(path, "image archive") as archive:
            key = next((k for k in NPZ_IMAGE_KEYS if k in archive.files), None)
            if key is None:
                hint = " (it holds statistics: load it with load_reference)" if "mu" in archive.files else ""
                looked = ", ".join(NPZ_IMAGE_KEYS)
                raise MetricError(f"{path}: no image array (looked for {looked}; found {sorted(archive.files)}){hint}")
            images = _to_nchw(_read_member(archive, key, path), f"{path}[{key}]")
        if len(images) == 0:
            raise MetricError(f"{path}: the image array '{key}' is empty")
        yield from iter_image_batches(images, batch_size)
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = sorted(
                n for n in archive.namelist()
                if not n.endswith("/") and not n.startswith("__MACOSX/") and Path(n).suffix.lower() in IMAGE_SUFFIXES
            )
            if not names:
                raise MetricError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in zip {path}")
            yield from _iter_files(((f"{path}:{n}", archive.read(n)) for n in names), batch_size, str(path))
    else:
        raise MetricError(f"unknown image data format: {path} (expected a folder or .zip of images, or an .npz)")


def compute_reference(
    data: str | os.PathLike[str] | np.ndarray | torch.Tensor,
    *,
    features: str,
    device: str | torch.device = "cpu",
    batch_size: int = 250,
    weights_path: str | os.PathLike[str] | None = None,
    meta: Mapping[str, str] | None = None,
) -> ReferenceStats:
    """Statistics of a data set under a named extractor, streamed batch by batch (float64 sums)."""
    extractor = make_extractor(features, device=device, weights_path=weights_path)
    moments = FeatureMoments()
    for batch in iter_image_batches(data, batch_size):
        moments.update(extract(extractor, batch))
    if moments.count < 2:
        raise MetricError(f"need at least 2 images for reference statistics, found {moments.count}")
    stats = moments.statistics()
    return ReferenceStats.from_arrays(stats["mu"], stats["sigma"], features=features, count=moments.count, meta=meta)


# ----------------------------------------------------------------------------------------------
# Built-in references


def builtin_reference_path(name: str = "edm-digits") -> Path:
    return Path(str(resources.files("skipsearch") / "data" / BUILTIN_REFERENCES.lookup(name)))


def builtin_reference(name: str = "edm-digits") -> ReferenceStats:
    """A shipped reference, checked against the digits classifier in use when it was made with one."""
    path = builtin_reference_path(name)
    ref = load_reference(path)
    made_with = ref.meta.get("classifier_sha256")
    if ref.features == DIGITS and made_with is not None and made_with != weights_sha256():
        raise MetricError(
            f"the built-in reference {name} was computed with another digits classifier than the one installed; "
            "rebuild it with `skipsearch demo reference`"
        )
    return ref


def resolve_reference(reference: str | os.PathLike[str] | ReferenceStats, features: str | None = None) -> ReferenceStats:
    """A ReferenceStats, `builtin:NAME`, or a path to an .npz or EDM2 .pkl (then the statistics
    made with `features`)."""
    if isinstance(reference, ReferenceStats):
        return reference
    text = str(reference)
    if text.startswith(BUILTIN_PREFIX):
        return builtin_reference(text[len(BUILTIN_PREFIX):])
    return load_reference(text, features)
