"""The demo's feature space: a small CNN digit classifier, as torch-fidelity extractor `skipsearch-digits`.

Inception features mean little on 16×16 one-channel digits, so the built-in demo scores samples
with the 128-dim penultimate layer of a classifier trained on the very data the demo diffusion
model learned (`skipsearch demo train-classifier` holds the recipe). Inputs are rescaled with
u/127.5 − 1, the inverse of EDM's uint8 conversion, so real and generated digits are quantised
alike. Importing `skipsearch.metrics` registers the extractor with torch-fidelity, so
`torch_fidelity.calculate_metrics(..., feature_extractor="skipsearch-digits")` works too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from ..errors import MetricError
from ..fileio import file_sha256

__all__ = [
    "EXTRACTOR_NAME",
    "FEATURE_DIM",
    "NUM_CLASSES",
    "RESOLUTION",
    "DigitsClassifier",
    "FeatureExtractorDigits",
    "default_weights_path",
    "weights_sha256",
    "load_classifier",
    "preprocess",
]

EXTRACTOR_NAME = "skipsearch-digits"
FEATURE_DIM = 128
NUM_CLASSES = 10
RESOLUTION = 16
WEIGHTS_FILE = "digits-classifier.safetensors"
SIDECAR_FILE = "digits-classifier.json"


def default_weights_path() -> Path:
    """The weights shipped inside the package (skipsearch/data)."""
    return Path(__file__).resolve().parent.parent / "data" / WEIGHTS_FILE


def weights_sha256(path: str | os.PathLike[str] | None = None) -> str:
    """Content hash of a weights file: the identity of the feature space (references key on it)."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise MetricError(f"digits classifier weights not found: {path}")
    return file_sha256(path)


class DigitsClassifier(nn.Module):
    """Three 3×3 convs with two 2× poolings (16→8→4) and a 128-unit hidden layer; returns (logits, features)."""

    def __init__(self, feature_dim: int = FEATURE_DIM, dropout: float = 0.3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (RESOLUTION // 4) ** 2, feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: float [N,1,16,16] in [-1,1]. Features are post-ReLU (what FID sees at eval time)."""
        features = self.body(x)
        return self.head(self.dropout(features)), features


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,C,H,W] (C 1 or 3) → float32 [N,1,16,16] in [-1,1], the scale of the real data.

    Channels are averaged (a grey RGB image equals its one-channel version); other sizes are
    resized with antialiased bilinear interpolation so e.g. 32×32 grids of digits still work.
    """
    if not torch.is_tensor(images) or images.dtype != torch.uint8:
        raise MetricError("the digits extractor expects a uint8 image tensor [N,C,H,W]")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise MetricError(f"the digits extractor expects images shaped [N, 1 or 3, H, W], got {list(images.shape)}")
    x = images.to(torch.float32).mean(dim=1, keepdim=True)
    if tuple(x.shape[-2:]) != (RESOLUTION, RESOLUTION):
        x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False, antialias=True)
    return x / 127.5 - 1


def load_classifier(path: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load classifier weights (safetensors only: no pickle) in eval mode, gradients off."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise MetricError(
            f"digits classifier weights not found: {path} "
            "(rebuild them with `skipsearch demo train-classifier`)"
        )
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise MetricError(f"cannot read digits classifier weights {path}: {exc}") from None
    feature_dim = int(state["head.weight"].shape[1]) if "head.weight" in state else FEATURE_DIM
    model = DigitsClassifier(feature_dim)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MetricError(f"{path} does not hold digits classifier weights: {first}") from None
    return model.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# torch-fidelity feature extractor


class FeatureExtractorDigits(FeatureExtractorBase):
    """torch-fidelity extractor `skipsearch-digits`: uint8 [N,C,H,W] → ("logits", "features")."""

    accepts_grayscale = True  # `extract` need not repeat one-channel images to RGB

    def __init__(
        self,
        name: str,
        features_list: list[str] | tuple[str, ...],
        feature_extractor_weights_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, list(features_list))
        self.weights_path = str(feature_extractor_weights_path or default_weights_path())
        self.net = load_classifier(self.weights_path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("logits", "features")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False  # too small to gain anything; compiling would only cost start-up time

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros([1, 1, RESOLUTION, RESOLUTION], dtype=torch.uint8)

    @property
    def feature_dim(self) -> int:
        """Dimension of the FID layer ("features"), known before any image is seen."""
        return int(self.net.head.in_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, features = self.net(preprocess(x))
        out = {"logits": logits.to(torch.float32), "features": features.to(torch.float32)}
        return tuple(out[name] for name in self.features_list)
