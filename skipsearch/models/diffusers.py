"""diffusers UNets as search targets: a discrete-time ε- or v-prediction UNet2DModel wrapped as a
denoiser D(x; σ) on its own σ table, as k-diffusion does for DDPM-style models, so every solver
and the whole search run on it unchanged.

The model's training schedule gives σ_t = √((1 − ᾱ_t)/ᾱ_t) for its discrete timesteps; a σ
between two of them maps to a fractional timestep by interpolating log σ (the UNet embeds time
continuously). With c_in = 1/√(σ² + 1) the network sees x·c_in (the variance-preserving input) and
  ε-prediction: D = x − σ·ε,   v-prediction: D = x/(σ² + 1) − σ/√(σ² + 1)·v.
Skip sites are the inputs of the up blocks' resnets (each concatenates one skip), found by
structure in `skipsearch.skiptune`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import read_mapping

__all__ = ["DiffusersDenoiser", "is_diffusers_folder", "load_diffusers", "sigma_table", "sigma_to_t"]


def sigma_table(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) for each discrete timestep t, ascending with t."""
    a = alphas_cumprod.to(torch.float64)
    return ((1 - a) / a).sqrt()


def sigma_to_t(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional timestep of σ by linear interpolation of log σ over the table (clamped to it)."""
    log_sigmas = sigmas.log()
    log_sigma = sigma.to(log_sigmas.dtype).log().clamp(log_sigmas[0], log_sigmas[-1])
    high = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
    low = high - 1
    w = (log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
    return low.to(log_sigmas.dtype) + w


class DiffusersDenoiser(nn.Module):
    """D(x; σ) of a diffusers UNet2DModel (attributes as our EDM denoisers: img_resolution,
    img_channels, label_dim, sigma_min, sigma_max)."""

    native_root = "unet"  # what a user of the folder holds: exported site paths start there

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise CheckpointError(f"scheduler prediction_type {prediction_type!r}: skipsearch wraps epsilon and "
                                  "v_prediction UNets")
        self.unet = unet
        self.prediction_type = prediction_type
        self.register_buffer("sigmas", sigma_table(alphas_cumprod), persistent=False)
        config = unet.config
        size = config.sample_size
        self.img_resolution = int(size if isinstance(size, int) else size[0])
        self.img_channels = int(config.in_channels)
        self.label_dim = int(config.num_class_embeds or 0)
        self.sigma_min = float(self.sigmas[0])
        self.sigma_max = float(self.sigmas[-1])

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor, class_labels: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        t = sigma_to_t(sigma, self.sigmas.to(x.device))
        s = sigma.to(torch.float32).view(-1, 1, 1, 1)
        c_in = 1 / (s**2 + 1).sqrt()
        labels = class_labels.argmax(dim=1) if class_labels is not None and self.label_dim else None
        out = self.unet((x * c_in).to(torch.float32), t.to(torch.float32), class_labels=labels).sample.to(torch.float32)
        if self.prediction_type == "epsilon":
            return x - s * out
        return x / (s**2 + 1) - s * c_in * out


def is_diffusers_folder(path: Path) -> bool:
    """A `save_pretrained` folder: a pipeline (unet/ + scheduler/) or a UNet with a scheduler beside it."""
    return (path / "unet" / "config.json").is_file() or (path / "config.json").is_file() and (
        (path / "scheduler_config.json").is_file() or (path / "scheduler" / "scheduler_config.json").is_file())


def _scheduler_config(path: Path) -> dict[str, Any]:
    for candidate in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
        if candidate.is_file():
            return read_mapping(candidate, "scheduler config")
    raise CheckpointError(f"{path}: no scheduler config (scheduler/scheduler_config.json): the σ table comes from it")


def load_diffusers(path: str | Path) -> DiffusersDenoiser:
    """A local diffusers UNet2DModel folder (never downloaded), with its scheduler's training σ table."""
    folder = Path(path)
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise CheckpointError("diffusers UNets need diffusers: pip install 'skipsearch[diffusers]'") from None
    subfolder = "unet" if (folder / "unet" / "config.json").is_file() else None
    config_path = ((folder / subfolder) if subfolder else folder) / "config.json"
    unet_config = read_mapping(config_path, "UNet config")
    if unet_config.get("_class_name") != "UNet2DModel":
        raise CheckpointError(f"{folder}: a {unet_config.get('_class_name')!r}; skipsearch searches UNet2DModel folders "
                              "(UNet2DConditionModel is supported by skipsearch.integrations.diffusers)")
    scheduler = _scheduler_config(folder)
    if not ({"beta_schedule", "trained_betas"} & set(scheduler)) or scheduler.get("timestep_type") == "continuous":
        raise CheckpointError(f"{folder}: a {scheduler.get('_class_name')!r} scheduler without a discrete β schedule; "
                              "skipsearch wraps DDPM-style UNets (DDPM, DDIM, PNDM, Euler, DPM-Solver schedulers)")
    try:
        unet = UNet2DModel.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True,
                                           low_cpu_mem_usage=False)  # no accelerate nag; the UNet is small
        # The σ table: the scheduler's own betas (DDPMScheduler builds ᾱ from the config alone).
        table = DDPMScheduler.from_config(scheduler).alphas_cumprod
    except Exception as e:  # diffusers raises many types for a damaged folder
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot load the diffusers UNet from {folder}: {first}") from None
    return DiffusersDenoiser(unet, table, scheduler.get("prediction_type", "epsilon"))
