"""FD_DINOv2 as EDM2 computes it: DINOv2 ViT-L/14 features of images resized to 224×224 with
antialiased bicubic interpolation and ImageNet normalisation (1024 dimensions).

torch-fidelity's own `dinov2-vit-l-14` resizes bilinearly, TensorFlow-style; its features differ
from those behind EDM2's dataset-ref `fd_dinov2` statistics, so a distance between the two would be
biased. This extractor, `dinov2-vit-l-14-edm2`, uses the same network (through torch.hub, as
torch-fidelity does) with EDM2's preprocessing; EDM2's reference files map their `fd_dinov2` block
to it. The network comes from torch's hub cache only: it is never fetched mid-search.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from ..errors import MetricError

__all__ = ["EXTRACTOR_NAME", "FeatureExtractorDinoV2EDM2", "preprocess", "hub_repo_dir"]

EXTRACTOR_NAME = "dinov2-vit-l-14-edm2"
INPUT_SIZE = 224
WEIGHTS_FILE = "dinov2_vitl14_pretrain.pth"  # what torch.hub caches for dinov2_vitl14
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] → float32 [N,3,224,224]: bicubic antialiased resize, then ImageNet normalisation."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise MetricError(f"the DINOv2 extractor expects uint8 images [N, 3, H, W], got {images.dtype} {list(images.shape)}")
    x = images.to(torch.float32) / 255
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def hub_repo_dir() -> Path:
    return Path(torch.hub.get_dir()) / "facebookresearch_dinov2_main"


def _load(weights_path: str | os.PathLike[str] | None) -> torch.nn.Module:
    repo = hub_repo_dir()
    if not (repo / "hubconf.py").is_file():
        raise MetricError(
            f"DINOv2 loads through torch.hub and its code is not in {repo}; fetch it once where there is internet "
            "(torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')) and copy $TORCH_HOME/hub here"
        )
    cached = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE
    if weights_path is None and not cached.is_file():  # torch.hub would download it now: never mid-search
        raise MetricError(f"DINOv2 weights are not in {cached}; fetch them once where there is internet, or give "
                          "--features-weights FILE")
    model = torch.hub.load(str(repo), "dinov2_vitl14", source="local", pretrained=weights_path is None)
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model


class FeatureExtractorDinoV2EDM2(FeatureExtractorBase):
    """torch-fidelity extractor `dinov2-vit-l-14-edm2`: uint8 RGB → ("dinov2",), the class token."""

    def __init__(self, name: str, features_list: list[str] | tuple[str, ...],
                 feature_extractor_weights_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(name, list(features_list))
        self.model = _load(feature_extractor_weights_path)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("dinov2",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "dinov2"

    @staticmethod
    def can_be_compiled() -> bool:
        return True

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros([1, 3, 4, 4], dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.model(preprocess(x)).to(torch.float32),)
