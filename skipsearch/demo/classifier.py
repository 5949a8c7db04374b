"""Training recipe of the demo's feature space, the `skipsearch-digits` classifier.

Deterministic (fixed seeds, fixed split, one thread) and about half a minute on one CPU core:
`skipsearch demo train-classifier`. It writes the safetensors weights and a JSON sidecar with the
test accuracy and the weights' sha256 (which the shipped reference records).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from ..fileio import write_bytes_atomic, write_text_atomic
from ..metrics.digits import (
    EXTRACTOR_NAME,
    FEATURE_DIM,
    SIDECAR_FILE,
    WEIGHTS_FILE,
    DigitsClassifier,
    default_weights_path,
    preprocess,
    weights_sha256,
)
from .data import digits_dataset, split_indices

__all__ = ["ClassifierConfig", "accuracy", "train", "save_weights", "build"]


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


def train(cfg: ClassifierConfig, log: Any = print) -> tuple[DigitsClassifier, dict[str, Any]]:
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
            log(f"epoch {epoch + 1:3d}  loss {loss.item():.4f}  test acc {accuracy(model, images[test_idx], labels[test_idx]):.4f}")
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
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"model": "skipsearch-digits-classifier", "feature_dim": str(model.head.in_features)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, save(state, metadata=meta))


def build(out: str | os.PathLike[str] | None = None, cfg: ClassifierConfig | None = None, log: Any = print) -> dict[str, Any]:
    """Train and write weights + sidecar into `out` (default: the package data folder)."""
    folder = Path(out) if out is not None else default_weights_path().parent
    model, info = train(cfg or ClassifierConfig(), log=log)
    weights = save_weights(model, folder / WEIGHTS_FILE)
    info = dict(info, sha256=weights_sha256(weights), feature_dim=model.head.in_features, extractor=EXTRACTOR_NAME)
    write_text_atomic(folder / SIDECAR_FILE, json.dumps(info, indent=2) + "\n")
    return info
