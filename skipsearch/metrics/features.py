"""Feature extractors for proxy FID, by name: any extractor registered with torch-fidelity.

`FEATURE_EXTRACTORS` is torch-fidelity's own registry seen through skipsearch's `Registry`, so
`inception-v3-compat` (EDM's fid-refs), `dinov2-vit-l-14`, `clip-vit-b-32` and our demo's
`skipsearch-digits` (registered on import of `skipsearch.metrics`) are all chosen the same way,
and an extractor a user registers with torch-fidelity works without code changes here.

Weights are never fetched silently mid-search: extractors with a known download (Inception) use an
explicit file, else torch's hub cache, else (if allowed) one bounded, hash-checked download into
that cache. Failing all three is one clear line telling the user what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ..errors import MetricError
from ..registry import Registry

__all__ = [
    "FEATURE_EXTRACTORS",
    "INCEPTION",
    "WEIGHT_RESOLVERS",
    "make_extractor",
    "feature_dim",
    "extract",
    "inception_weights_path",
]

INCEPTION = "inception-v3-compat"
FEATURE_EXTRACTORS: Registry[type[FeatureExtractorBase]] = Registry(
    "feature extractor", MetricError, store=FEATURE_EXTRACTORS_REGISTRY
)
_WEIGHTS_HINT = "pass --features-weights FILE or place it in $TORCH_HOME/hub/checkpoints/"
_DIM_ATTR = "_skipsearch_feature_dim"

# name -> (explicit path or None, may download, timeout) -> local weights file
WeightResolver = Callable[[str | os.PathLike[str] | None, bool, float], Path]
WEIGHT_RESOLVERS: Registry[WeightResolver] = Registry("weights resolver", MetricError)


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


@WEIGHT_RESOLVERS.register(INCEPTION)
def _inception_weights(weights_path: str | os.PathLike[str] | None, download: bool, timeout: float) -> Path:
    if weights_path is None:
        path = inception_weights_path()
        if not path.is_file():
            if not download:
                raise MetricError(f"Inception weights {path.name} are not in {path.parent}; {_WEIGHTS_HINT}")
            try:
                _download_inception(path, timeout)
            except (OSError, urllib.error.URLError, TimeoutError) as exc:
                reason = getattr(exc, "reason", exc)
                raise MetricError(f"cannot download Inception weights ({reason}); {_WEIGHTS_HINT}") from None
    else:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MetricError(f"Inception weights file not found: {path}")
    try:  # torch-fidelity unpickles with weights_only=False; refuse anything but plain tensors first
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise MetricError(f"{path} is not a plain state dict of Inception weights; {_WEIGHTS_HINT}") from None
    return path


def make_extractor(
    name: str,
    *,
    device: str | torch.device = "cpu",
    weights_path: str | os.PathLike[str] | None = None,
    download: bool = True,
    download_timeout: float = 30.0,
) -> FeatureExtractorBase:
    """Build a registered feature extractor in eval mode on `device`, producing only its FID layer."""
    cls = FEATURE_EXTRACTORS.lookup(name)
    layer = cls.get_default_feature_layer_for_metric("fid")
    if name in WEIGHT_RESOLVERS:
        weights_path = WEIGHT_RESOLVERS[name](weights_path, download, download_timeout)
    elif weights_path is not None and not Path(weights_path).expanduser().is_file():
        raise MetricError(f"weights file for {name} not found: {weights_path}")
    try:
        extractor = cls(name, [layer], feature_extractor_weights_path=None if weights_path is None else str(weights_path))
    except MetricError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MetricError(f"cannot build feature extractor {name}: {first}") from None
    return extractor.to(device).eval().requires_grad_(False)


def _fid_index(extractor: FeatureExtractorBase) -> int:
    requested = list(extractor.get_requested_features_list())
    if len(requested) == 1:
        return 0
    layer = extractor.get_default_feature_layer_for_metric("fid")
    if layer not in requested:
        raise MetricError(f"extractor {extractor.get_name()!r} does not produce its FID layer {layer!r}")
    return requested.index(layer)


def feature_dim(extractor: FeatureExtractorBase) -> int:
    """Dimension of the extractor's FID features, measured once on its own dummy input and cached."""
    dim = getattr(extractor, _DIM_ATTR, None)
    if dim is None:
        dummy = extractor.get_dummy_input_for_compile()
        dim = int(extract(extractor, dummy.to(torch.uint8)).shape[1])
        extractor.__dict__[_DIM_ATTR] = dim
    return dim


def extract(
    extractor: FeatureExtractorBase,
    images_uint8: torch.Tensor | np.ndarray,
    *,
    batch_size: int | None = None,
) -> torch.Tensor:
    """FID-layer features of uint8 images [N,C,H,W] as float64 [N,D] on the CPU.

    One-channel images are repeated to three unless the extractor declares `accepts_grayscale`
    (torch-fidelity's own extractors expect RGB); images stay uint8, which is what they take.
    """
    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise MetricError(f"expected uint8 images shaped [N, 1 or 3, H, W], got {images.dtype} {list(images.shape)}")
    if images.shape[1] == 1 and not getattr(extractor, "accepts_grayscale", False):
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
        return torch.zeros([0, feature_dim(extractor)], dtype=torch.float64)
    return torch.cat(out).reshape(len(images), -1)
