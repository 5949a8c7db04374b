"""Training recipe of the built-in demo model: an EDM network on scikit-learn's digits.

Training follows EDM: ln σ ~ N(P_mean, P_std²), loss weight (σ²+σ_d²)/(σ·σ_d)², Adam with warm-up,
and an EMA of the weights that is what ships. Deterministic for a given seed and thread count.

Run: `skipsearch demo train-model --steps 7000` (about 28 minutes on two idle cores).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..fileio import write_bytes_atomic, write_text_atomic
from ..models.edm import EDMPrecond
from .data import digits_images

__all__ = ["DIGITS_NETWORK", "TrainConfig", "train", "edm_loss", "save"]

# EDMPrecond arguments of the built-in model (DDPM++ configuration, 3 resolution levels).
DIGITS_NETWORK: dict[str, Any] = dict(
    img_resolution=16,
    img_channels=1,
    label_dim=0,
    model_type="SongUNet",
    embedding_type="positional",
    encoder_type="standard",
    decoder_type="standard",
    channel_mult_noise=1,
    resample_filter=[1, 1],
    model_channels=16,
    channel_mult=[1, 2, 2],
    num_blocks=1,
    attn_resolutions=[4],
    dropout=0.10,
)


@dataclass
class TrainConfig:
    steps: int = 7000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 0.5
    seed: int = 0
    network: dict[str, Any] = field(default_factory=lambda: dict(DIGITS_NETWORK))


def edm_loss(net: EDMPrecond, images: torch.Tensor, generator: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    n = images.shape[0]
    sigma = (torch.randn([n, 1, 1, 1], generator=generator) * cfg.p_std + cfg.p_mean).exp()
    weight = (sigma**2 + cfg.sigma_data**2) / (sigma * cfg.sigma_data) ** 2
    noise = torch.randn(images.shape, generator=generator) * sigma
    denoised = net(images + noise, sigma.flatten())
    return (weight * (denoised - images) ** 2).mean()


def train(cfg: TrainConfig, log_every: int = 500, log: Any = print) -> tuple[EDMPrecond, list[dict[str, float]]]:
    """Train from scratch; returns the EMA network (eval mode) and the loss log."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    data = digits_images(cfg.network["img_resolution"])
    net = EDMPrecond(sigma_data=cfg.sigma_data, **cfg.network).train()
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8)
    history: list[dict[str, float]] = []
    running, t0 = 0.0, time.time()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(data), [cfg.batch_size], generator=generator)
        loss = edm_loss(net, data[idx], generator, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(step / cfg.warmup_steps, 1.0) * _cosine_tail(step, cfg.steps)
        opt.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p, 1 - cfg.ema_decay)
        running += loss.item()
        if step % log_every == 0 or step == cfg.steps:
            count = log_every if step % log_every == 0 else step % log_every
            history.append(dict(step=step, loss=running / count, seconds=time.time() - t0))
            log(f"step {step:6d}  loss {running / count:.4f}  {time.time() - t0:7.1f}s")
            running = 0.0
    return ema, history


def _cosine_tail(step: int, total: int, tail: float = 0.3) -> float:
    """Full rate for the first 70% of training, then a cosine decay to 10% of it."""
    start = int(total * (1 - tail))
    if step <= start:
        return 1.0
    frac = (step - start) / max(total - start, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


def save(net: EDMPrecond, cfg: TrainConfig, history: list[dict[str, float]], out: Path, name: str) -> Path:
    from safetensors.torch import save as to_bytes

    out.mkdir(parents=True, exist_ok=True)
    weights = write_bytes_atomic(out / f"{name}.safetensors", to_bytes({k: v.contiguous() for k, v in net.state_dict().items()}))
    meta = dict(constructor_kwargs=dict(cfg.network, sigma_data=cfg.sigma_data), training=asdict(cfg), history=history)
    write_text_atomic(out / f"{name}.json", json.dumps(meta, indent=2) + "\n")
    return weights
