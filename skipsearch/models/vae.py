"""Latent networks (EDM2's `img512-*`): their samples are Stable Diffusion VAE latents, decoded to
images before any feature extractor sees them.

EDM2 made its latents as raw·scale + bias per channel (raw: the VAE posterior sample, no 0.18215
factor), and fed the VAE images in [0, 1]; decoding inverts the affine map, runs the VAE decoder
(`stabilityai/sd-vae-ft-mse`, from a local folder: never downloaded at run time) and maps
clamp(0, 1)·255 to uint8 by truncation. The VAE decoder is a large share of a latent trial's cost;
benchmarks/trial_profile.py counts it as its own part.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import read_mapping
from .diffusers import build_from_folder
from .edm2 import ENCODER_ATTR

__all__ = ["LatentCodec", "LatentDecoder", "load_vae"]


@dataclass(frozen=True)
class LatentCodec:
    """How a network's samples map to images: `rgb` (x·127.5 + 128) or `vae` (affine + VAE)."""

    kind: str = "rgb"
    vae_name: str | None = None
    scale: tuple[float, ...] = ()
    bias: tuple[float, ...] = ()

    @classmethod
    def of(cls, net: nn.Module) -> LatentCodec:
        """The codec a loaded network carries (EDM2 snapshots record their encoder), else RGB."""
        info = getattr(net, ENCODER_ATTR, None)
        if info is None or getattr(info, "kind", "rgb") != "vae":
            return cls()
        return cls("vae", getattr(info, "vae_name", None), tuple(float(v) for v in info.scale),
                   tuple(float(v) for v in info.bias))


def load_vae(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """A diffusers AutoencoderKL from a local folder (`save_pretrained` layout), in eval mode."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a saved VAE (no config.json); give --vae the local folder of "
                              "stabilityai/sd-vae-ft-mse (save_pretrained layout)")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise CheckpointError("latent networks need diffusers to decode: pip install 'skipsearch[diffusers]'") from None
    vae = build_from_folder(AutoencoderKL, folder, read_mapping(folder / "config.json", "VAE config"))
    return vae.to(device).eval().requires_grad_(False)


class LatentDecoder:
    """Latents [N,C,H,W] (any float dtype) → uint8 images, in batches of `batch_size`."""

    def __init__(self, vae: Any, codec: LatentCodec, batch_size: int = 8) -> None:
        if codec.kind != "vae" or not codec.scale:
            raise CheckpointError("this network's samples are not VAE latents")
        self.vae = vae
        self.codec = codec
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.vae.parameters()).device
        scale = torch.tensor(self.codec.scale, device=device).view(1, -1, 1, 1)
        bias = torch.tensor(self.codec.bias, device=device).view(1, -1, 1, 1)
        out = []
        for start in range(0, len(x), self.batch_size):
            raw = (x[start : start + self.batch_size].to(device, torch.float32) - bias) / scale
            images = self.vae.decode(raw).sample
            out.append((images.clamp(0, 1) * 255).to(torch.uint8))
        return torch.cat(out)
