"""Sample grids of a network, with or without a skip schedule: what `skipsearch sample` draws."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .images import save_grid
from .sampling import sample, to_uint8
from .schedule import SkipSchedule

__all__ = ["render_grid"]


def render_grid(
    net: nn.Module,
    output: str | os.PathLike[str],
    seeds: range,
    *,
    solver: str,
    nfe: int,
    schedule: SkipSchedule | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    guide: nn.Module | None = None,
    guidance: float = 1.0,
) -> Path:
    """Sample `seeds` and write them as one PNG grid (scaled up to at least 128 px a tile);
    `decode` turns latents into images (default: EDM's RGB conversion)."""
    x = sample(net, seeds, solver=solver, nfe=nfe, schedule=schedule, batch_size=batch_size, device=device,
               guide=guide, guidance=guidance)
    images = (decode or to_uint8)(x)
    return save_grid(images, output, scale=max(1, 128 // int(images.shape[-1])))
