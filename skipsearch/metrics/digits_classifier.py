"""A small CNN digit classifier whose penultimate layer is the proxy-FID feature space of the demo.

Inception features mean little on 16×16 one-channel digits, so the built-in demo scores samples
with features from a classifier trained on the very data the demo diffusion model learned. The
real digits go through EDM's uint8 conversion (`to_uint8`) before training, so the classifier sees
real and generated images quantized the same way; inputs are rescaled with u/127.5 − 1, the inverse
of that conversion.

The recipe is deterministic (fixed seeds, fixed split, one thread) and runs in about half a minute
on one CPU core:  `python -m skipsearch.metrics classifier --out skipsearch/data` (or
`python -m skipsearch.metrics.digits_classifier ...`, which works but makes runpy warn).

`FeatureExtractorDigits` wraps the shipped weights as a torch-fidelity feature extractor named
`skipsearch-digits` ("features": 128-dim post-ReLU penultimate layer, the FID default; "logits").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from .errors import MetricError

__all__ = [
    "EXTRACTOR_NAME",
    "FEATURE_DIM",
    "DigitsClassifier",
    "FeatureExtractorDigits",
    "ClassifierConfig",
    "default_weights_path",
    "weights_sha256",
    "load_classifier",
    "preprocess",
    "digits_dataset",
    "split_indices",
    "accuracy",
    "train",
    "register",
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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
            "(rebuild them with `python -m skipsearch.metrics.digits_classifier --out skipsearch/data`)"
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
# Data and training recipe


def digits_dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as uint8 [N,1,16,16] (through EDM's `to_uint8`) and their labels."""
    from sklearn.datasets import load_digits

    from ..models.digits import digits_images
    from ..sampling import to_uint8

    labels = torch.as_tensor(load_digits().target, dtype=torch.long)
    return to_uint8(digits_images(RESOLUTION)), labels


def split_indices(n: int, seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train/test split. numpy's legacy RandomState is stream-stable across versions."""
    perm = np.random.RandomState(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy on uint8 images."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits, _ = model(preprocess(images[start : start + batch_size]))
        correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / max(1, len(images))


@dataclass
class ClassifierConfig:
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 2  # pixels at 16×16, i.e. one pixel of the original 8×8 digits
    split_seed: int = 0
    test_fraction: float = 0.2
    seed: int = 0
    feature_dim: int = FEATURE_DIM


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ±max_shift pixels, filling with background (-1)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4, value=-1.0)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts.tolist())])


def train(cfg: ClassifierConfig) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train on the fixed split; returns the model (eval mode) and a summary with test accuracy."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    images, labels = digits_dataset()
    train_idx, test_idx = split_indices(len(images), cfg.split_seed, cfg.test_fraction)
    x_train, y_train = preprocess(images[train_idx]), labels[train_idx]

    model = DigitsClassifier(cfg.feature_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    start = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            logits, _ = model(_random_shift(x_train[idx], cfg.max_shift, generator))
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 5 == 0:
            acc = accuracy(model, images[test_idx], labels[test_idx])
            print(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  test acc {acc:.4f}", flush=True)
    model.eval().requires_grad_(False)
    info = dict(
        test_accuracy=accuracy(model, images[test_idx], labels[test_idx]),
        train_accuracy=accuracy(model, images[train_idx], labels[train_idx]),
        test_size=len(test_idx),
        train_size=len(train_idx),
        seconds=round(time.time() - start, 1),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        config=asdict(cfg),
    )
    return model, info


def save_weights(model: DigitsClassifier, path: str | os.PathLike[str]) -> Path:
    """Write safetensors atomically (temp file + os.replace)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; this file ships in the package
        meta = {"model": "skipsearch-digits-classifier", "feature_dim": str(model.head.in_features)}
        save_file(state, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------------------------
# torch-fidelity feature extractor


class FeatureExtractorDigits(FeatureExtractorBase):
    """torch-fidelity extractor `skipsearch-digits`: uint8 [N,C,H,W] → ("logits", "features")."""

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


def register() -> None:
    """Register `skipsearch-digits` with torch-fidelity once (its registry refuses duplicates)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    existing = FEATURE_EXTRACTORS_REGISTRY.get(EXTRACTOR_NAME)
    if existing is None:
        register_feature_extractor(EXTRACTOR_NAME, FeatureExtractorDigits)
    elif existing.__qualname__ != FeatureExtractorDigits.__qualname__:
        raise MetricError(f"torch-fidelity already has a different feature extractor named {EXTRACTOR_NAME!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(default_weights_path().parent), help="output folder")
    parser.add_argument("--epochs", type=int, default=ClassifierConfig.epochs)
    parser.add_argument("--seed", type=int, default=ClassifierConfig.seed)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (results are reproducible for a given count; "
        "one thread is also the fastest for a net this small)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, info = train(ClassifierConfig(epochs=args.epochs, seed=args.seed))
    out = Path(args.out)
    weights = save_weights(model, out / WEIGHTS_FILE)
    info = dict(info, sha256=weights_sha256(weights), feature_dim=model.head.in_features, extractor=EXTRACTOR_NAME)
    sidecar = out / SIDECAR_FILE
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, sidecar)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
