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

import hashlib
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import file_sha256, read_mapping

__all__ = ["DiffusersDenoiser", "is_diffusers_folder", "load_diffusers", "sigma_table", "sigma_to_t", "folder_sha256",
           "read_weights", "build_from_folder"]


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
        out = self._unet_output(x * c_in, t, class_labels)
        if self.prediction_type == "epsilon":
            return x - s * out
        return x / (s**2 + 1) - s * c_in * out


    def _unet_output(self, x_in: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The UNet's ε or v for the variance-preserving input `x_in` at fractional timesteps `t`."""
        labels = class_labels.argmax(dim=1) if class_labels is not None and self.label_dim else None
        return self.unet(x_in.to(torch.float32), t.to(torch.float32), class_labels=labels).sample.to(torch.float32)


def _scored_part(name: str) -> bool:
    """A pipeline part a score depends on: the network, its noise schedule, and a text-to-image
    pipeline's decoder, text encoders and tokenizers (not, say, its safety checker)."""
    return name in ("unet", "scheduler", "vae") or name.startswith(("text_encoder", "tokenizer"))


def _folder_files(folder: Path) -> list[Path]:
    """The files a diffusers folder's scores are read from: every scored part of a pipeline folder
    (an unconditional one has only its UNet and scheduler), else the folder's own files."""
    if (folder / "unet").is_dir():
        files = [f for part in folder.iterdir() if part.is_dir() and _scored_part(part.name) for f in part.rglob("*")]
    else:
        files = list(folder.iterdir())
    return sorted(f for f in files if f.is_file() and not f.name.startswith("."))


def folder_sha256(source: str | Path) -> str:
    """A diffusers folder's fingerprint: sha256 of (relative path, content hash) per file of its
    scored parts, so renames count too. What a study and an export record for the folder: a worker
    whose VAE or text encoder differs would score other images, and is refused like another UNet."""
    folder = Path(source)
    digest = hashlib.sha256()
    for f in _folder_files(folder):
        digest.update(f"{f.relative_to(folder).as_posix()}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def is_diffusers_folder(path: Path) -> bool:
    """A `save_pretrained` folder: a pipeline (unet/ + scheduler/) or a UNet with a scheduler beside it."""
    return (path / "unet" / "config.json").is_file() or (path / "config.json").is_file() and (
        (path / "scheduler_config.json").is_file() or (path / "scheduler" / "scheduler_config.json").is_file())


def _scheduler_config(path: Path) -> dict[str, Any]:
    for candidate in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json"):
        if candidate.is_file():
            return read_mapping(candidate, "scheduler config")
    raise CheckpointError(f"{path}: no scheduler config (scheduler/scheduler_config.json): the σ table comes from it")


def unet_folder_config(folder: Path) -> dict[str, Any]:
    """The UNet config of a folder without model_index.json: a UNet2DModel's, else one line saying
    what the folder is instead (a conditional UNet needs its whole pipeline)."""
    subfolder = folder / "unet" if (folder / "unet" / "config.json").is_file() else folder
    config = read_mapping(subfolder / "config.json", "UNet config")
    if config.get("_class_name") == "UNet2DConditionModel":
        raise CheckpointError(f"{folder}: a UNet2DConditionModel without its pipeline (no model_index.json); give the "
                              "pipeline folder (save_pretrained of StableDiffusionPipeline), whose text encoder, "
                              "tokenizer and VAE a trial needs")
    if config.get("_class_name") != "UNet2DModel":
        raise CheckpointError(f"{folder}: a {config.get('_class_name')!r}; skipsearch searches UNet2DModel folders "
                              "and text-to-image pipeline folders")
    return config


def load_diffusers(path: str | Path) -> DiffusersDenoiser:
    """A local diffusers UNet2DModel folder (never downloaded), with its scheduler's training σ table."""
    folder = Path(path)
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise CheckpointError("diffusers UNets need diffusers: pip install 'skipsearch[diffusers]'") from None
    subfolder = "unet" if (folder / "unet" / "config.json").is_file() else None
    unet_config = unet_folder_config(folder)
    scheduler = _scheduler_config(folder)
    if not ({"beta_schedule", "trained_betas"} & set(scheduler)) or scheduler.get("timestep_type") == "continuous":
        raise CheckpointError(f"{folder}: a {scheduler.get('_class_name')!r} scheduler without a discrete β schedule; "
                              "skipsearch wraps DDPM-style UNets (DDPM, DDIM, PNDM, Euler, DPM-Solver schedulers)")
    unet = build_from_folder(UNet2DModel, (folder / subfolder) if subfolder else folder, unet_config)
    try:  # the σ table: the scheduler's own betas (DDPMScheduler builds ᾱ from the config alone)
        table = DDPMScheduler.from_config(scheduler).alphas_cumprod
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for a damaged config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read the scheduler of {folder}: {first}") from None
    return DiffusersDenoiser(unet, table, scheduler.get("prediction_type", "epsilon"))


WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin")


def _reason(error: Exception) -> str:
    """The line of a loader's error that says why: torch's weights-only refusal names the global."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    named = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), None)
    return f"refused by torch's weights-only loader ({named})" if named else lines[0]


def read_weights(part: Path) -> dict[str, torch.Tensor]:
    """A model folder's tensors: safetensors, or a `.bin` read with `torch.load(weights_only=True)`
    only (sharded ones through their index). No file's code ever runs; nothing else is read."""
    for name in WEIGHT_FILES:
        index = part / f"{name}.index.json"
        weight_map = read_mapping(index, "weight index").get("weight_map", {}) if index.is_file() else {}
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map is not a mapping of tensor names to file names")
        shards = sorted(set(weight_map.values()))
        if any(Path(shard).name != shard for shard in shards):
            raise CheckpointError(f"{index}: a shard outside its folder; only plain file names are read")
        files = [part / shard for shard in shards] if index.is_file() else [part / name] if (part / name).is_file() else []
        if not files:
            continue
        tensors: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                if file.suffix == ".safetensors":
                    from safetensors.torch import load_file

                    tensors.update(load_file(str(file), device="cpu"))
                else:
                    with warnings.catch_warnings():  # torch's notes about pickle protocols are not the user's
                        warnings.simplefilter("ignore")
                        loaded = torch.load(file, map_location="cpu", weights_only=True)
                    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
                        raise ValueError("not a state dict of tensors")
                    tensors.update(loaded)
            except Exception as e:  # noqa: BLE001 - a damaged or unsafe weight file fails in many ways
                raise CheckpointError(f"{file} is not a readable weight file (safetensors, or a .bin of plain "
                                      f"tensors): {_reason(e)}") from None
        return tensors
    found = sorted(p.name for p in part.iterdir() if p.is_file()) if part.is_dir() else []
    raise CheckpointError(f"{part}: no weights (expected {WEIGHT_FILES[0]} or {WEIGHT_FILES[2]}; found "
                          f"{', '.join(found) or 'nothing'})")


def build_from_folder(cls: Any, part: Path, config: dict[str, Any]) -> nn.Module:
    """A diffusers model built from its config and loaded with `read_weights`: the library's own
    loader is not used, so no file picks how it is read and no library warning reaches the user."""
    import logging

    quiet = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for a damaged config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot build the {cls.__name__} of {part}: {first}") from None
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    tensors = read_weights(part)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        key = (missing or wrong)[0]
        raise CheckpointError(f"{part}: the weights do not fit the config ({len(missing)} missing, {len(wrong)} with "
                              f"the wrong shape, e.g. {key})")
    model.load_state_dict({k: tensors[k] for k in expected}, strict=True)
    return model.eval()
