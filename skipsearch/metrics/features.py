"""Feature extractors for proxy FID: torch-fidelity's Inception (matching EDM's fid-refs) or our digits CNN.

Inception weights are never fetched silently mid-search: `make_extractor` uses an explicit file,
else torch's hub cache, else (if allowed) one bounded download into that cache. Failing all three
is one clear line telling the user what to do, not a hang or a traceback from deep in torch.hub.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from .digits_classifier import EXTRACTOR_NAME as DIGITS
from .digits_classifier import FEATURE_DIM as DIGITS_DIM
from .digits_classifier import NUM_CLASSES, FeatureExtractorDigits, register
from .errors import MetricError

__all__ = [
    "EXTRACTORS",
    "INCEPTION",
    "DIGITS",
    "make_extractor",
    "feature_dim",
    "extractor_feature_dim",
    "extract",
    "inception_weights_path",
]

INCEPTION = "inception-v3-compat"
EXTRACTORS: dict[str, int] = {DIGITS: DIGITS_DIM, INCEPTION: 2048}
_FID_LAYER = {DIGITS: "features", INCEPTION: "2048"}
_WEIGHTS_HINT = "pass --features-weights FILE or place it in $TORCH_HOME/hub/checkpoints/"


def feature_dim(name: str) -> int:
    """Feature dimension of a named extractor (without building it)."""
    try:
        return EXTRACTORS[name]
    except KeyError:
        raise MetricError(f"unknown feature extractor {name!r}; choose one of {', '.join(EXTRACTORS)}") from None


def extractor_feature_dim(extractor: FeatureExtractorBase) -> int | None:
    """Feature dimension of a built extractor, or None when it cannot be known before running it."""
    layer = list(extractor.get_requested_features_list())[_fid_index(extractor)]
    if isinstance(extractor, FeatureExtractorDigits):
        return extractor.feature_dim if layer == "features" else NUM_CLASSES
    name = extractor.get_name()
    if name in EXTRACTORS and layer == _FID_LAYER[name]:
        return EXTRACTORS[name]
    return None


def inception_weights_path() -> Path:
    """Where torch-fidelity's own loader caches the Inception weights ($TORCH_HOME/hub/checkpoints)."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(URL_INCEPTION_V3)


def _download_inception(target: Path, timeout: float) -> None:
    """One bounded download (socket timeout, hash-prefix check as torch.hub does), atomically placed."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(URL_INCEPTION_V3, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                f.write(block)
        match = re.search(r"-([a-f0-9]+)\.", target.name)
        if match and not digest.hexdigest().startswith(match.group(1)):
            raise MetricError(f"downloaded Inception weights fail their hash check; {_WEIGHTS_HINT}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _resolve_inception_weights(weights_path: str | os.PathLike[str] | None, download: bool, timeout: float) -> Path:
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MetricError(f"Inception weights file not found: {path}")
        return path
    path = inception_weights_path()
    if path.is_file():
        return path
    if not download:
        raise MetricError(f"Inception weights {path.name} are not in {path.parent}; {_WEIGHTS_HINT}")
    try:
        _download_inception(path, timeout)
    except MetricError:
        raise
    except (OSError, urllib.error.URLError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MetricError(f"cannot download Inception weights ({reason}); {_WEIGHTS_HINT}") from None
    return path


def make_extractor(
    name: str,
    *,
    device: str | torch.device = "cpu",
    weights_path: str | os.PathLike[str] | None = None,
    download: bool = True,
    download_timeout: float = 30.0,
) -> FeatureExtractorBase:
    """Build a feature extractor in eval mode on `device`, producing only its FID layer.

    `skipsearch-digits` uses the shipped classifier (or `weights_path`); `inception-v3-compat` is
    torch-fidelity's TF-compatible Inception (2048-dim pool features, as in EDM's fid-refs).
    """
    feature_dim(name)  # validates the name
    if name == DIGITS:
        register()
        extractor: FeatureExtractorBase = FeatureExtractorDigits(
            name, [_FID_LAYER[name]], feature_extractor_weights_path=None if weights_path is None else str(weights_path)
        )
    else:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = _resolve_inception_weights(weights_path, download, download_timeout)
        try:
            # torch-fidelity unpickles with weights_only=False; refuse anything but plain tensors first.
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise MetricError(f"{path} is not a plain state dict of Inception weights; {_WEIGHTS_HINT}") from None
        try:
            extractor = FeatureExtractorInceptionV3(name, [_FID_LAYER[name]], feature_extractor_weights_path=str(path))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise MetricError(f"cannot load Inception weights from {path}: {first}") from None
    return extractor.to(device).eval().requires_grad_(False)


def _fid_index(extractor: FeatureExtractorBase) -> int:
    requested = list(extractor.get_requested_features_list())
    if len(requested) == 1:
        return 0
    layer = extractor.get_default_feature_layer_for_metric("fid")
    if layer not in requested:
        raise MetricError(f"extractor {extractor.get_name()!r} does not produce its FID layer {layer!r}")
    return requested.index(layer)


def extract(
    extractor: FeatureExtractorBase,
    images_uint8: torch.Tensor | np.ndarray,
    *,
    batch_size: int | None = None,
) -> torch.Tensor:
    """FID-layer features of uint8 images [N,C,H,W] as float64 [N,D] on the CPU.

    One-channel images are repeated to three for every extractor but ours (torch-fidelity's
    extractors expect RGB); images stay uint8, which is what torch-fidelity's extractors take.
    """
    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise MetricError(f"expected uint8 images shaped [N, 1 or 3, H, W], got {images.dtype} {list(images.shape)}")
    if images.shape[1] == 1 and not isinstance(extractor, FeatureExtractorDigits):
        images = images.expand(-1, 3, -1, -1)
    param = next(extractor.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    index = _fid_index(extractor)
    step = batch_size or max(1, len(images))
    out = []
    with torch.no_grad():
        for start in range(0, len(images), step):
            batch = images[start : start + step].to(device).contiguous()
            out.append(extractor(batch)[index].to(torch.float64).cpu())
    if not out:
        return torch.zeros([0, extractor_feature_dim(extractor) or 0], dtype=torch.float64)
    return torch.cat(out).reshape(len(images), -1)
