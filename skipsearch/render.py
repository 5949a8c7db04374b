"""Sample grids of a network, with or without a skip schedule: what `skipsearch sample` draws."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import NonFiniteSamples
from .images import save_grid
from .recipe import SamplingRecipe
from .sampling import sample_batches, to_uint8
from .schedule import SkipSchedule

__all__ = ["render_grid"]


def render_grid(
    net: nn.Module,
    output: str | os.PathLike[str],
    seeds: range,
    recipe: SamplingRecipe,
    schedule: SkipSchedule | None = None,
    device: str | torch.device = "cpu",
) -> Path:
    """Sample `seeds` with `recipe` and write them as one PNG grid (scaled up to at least 128 px a
    tile); the recipe's `decode` turns latents into images (default: EDM's RGB conversion)."""
    x = torch.cat([batch for _, batch in sample_batches(net, seeds, recipe, schedule, device=device)])
    bad = int((~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)).sum())
    if bad:  # a black grid with exit 0 would hide a broken schedule
        raise NonFiniteSamples(f"non-finite samples: {bad}/{len(x)} are NaN or infinite at {recipe.describe()}; "
                               "the schedule breaks the network, no grid written")
    images = (recipe.decode or to_uint8)(x)
    return save_grid(images, output, scale=max(1, 128 // int(images.shape[-1])))
