"""`load_network`: one entry point for every checkpoint form skipsearch reads.

- `builtin:NAME`: a model that ships with skipsearch (see `skipsearch.models.builtin`);
- `*.pkl`: an NVlabs EDM or EDM2 snapshot, read by the restricted unpickler (never executed);
- a folder: a diffusers `UNet2DModel` in `save_pretrained` layout with its scheduler config,
  wrapped as a denoiser on its σ table (see `skipsearch.models.diffusers`);
- `*.pt` / `*.pth` / `*.safetensors`: a state dict plus constructor arguments, either embedded
  (`{"constructor_kwargs": ..., "state_dict": ...}`) or in a JSON/TOML file beside it. The config's
  optional `class` names the network: `EDMPrecond` (the default) or `EDM2Precond`; an EDM2 config
  may also carry an `encoder` table (see `EncoderInfo.from_dict`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import file_sha256, read_mapping
from .builtin import BUILTIN_PREFIX, BUILTINS
from .diffusers import is_diffusers_folder, load_diffusers
from .edm import EDMPrecond
from .edm2 import ENCODER_ATTR, EDM2Precond, EncoderInfo
from .edm_pickle import load_edm_pickle, load_state_dict_checked

__all__ = [
    "load_network",
    "resolve_model_source",
    "model_name",
    "checkpoint_sha256",
    "model_choices",
    "FAMILY_DEFAULTS",
    "CheckpointError",
]

# Model families and the built-in network each uses when no --checkpoint is given (None: none).
FAMILY_DEFAULTS: dict[str, str | None] = {"edm": "edm-digits", "edm2": None, "diffusers": None}

# A config's "class" -> the network it builds; a config without one means EDMPrecond.
NETWORK_CLASSES: dict[str, type[nn.Module]] = {"EDMPrecond": EDMPrecond, "EDM2Precond": EDM2Precond}
# Top-level prefixes of an EDM2Precond state dict (EDMPrecond's are all "model.").
_EDM2_PREFIXES = ("unet.", "logvar_fourier.", "logvar_linear.")


def _config_candidates(path: Path) -> list[Path]:
    folder = path.parent
    return [path.with_suffix(".json"), path.with_suffix(".toml"), folder / "config.json", folder / "config.toml"]


def _constructor_kwargs(config: dict[str, Any], source: Path) -> dict[str, Any]:
    kwargs = config.get("constructor_kwargs", config)
    if not isinstance(kwargs, dict) or "img_resolution" not in kwargs:
        raise CheckpointError(
            f"{source}: network config needs constructor arguments (img_resolution, img_channels, ...), "
            "at top level or under 'constructor_kwargs'"
        )
    return {k: v for k, v in kwargs.items() if not (kwargs is config and k in ("class", "encoder"))}


def _network_class(config: dict[str, Any], tensors: dict[str, torch.Tensor], source: Path) -> type[nn.Module]:
    """The config's `class`; without one EDMPrecond, unless the tensors can only be EDM2's."""
    name = config.get("class")
    if name is None:
        if tensors and all(k.startswith(_EDM2_PREFIXES) for k in tensors):
            return EDM2Precond  # an EDMPrecond state dict never has these keys
        return EDMPrecond
    if name not in NETWORK_CLASSES:
        raise CheckpointError(f"{source}: unknown network class {name!r}; expected one of {', '.join(NETWORK_CLASSES)}")
    return NETWORK_CLASSES[name]


def _encoder_info(config: dict[str, Any], source: Path) -> EncoderInfo | None:
    encoder = config.get("encoder")
    if encoder is None:
        return None
    if not isinstance(encoder, dict):
        raise CheckpointError(f"{source}: 'encoder' must be a table (kind, vae_name, scale, bias)")
    try:
        return EncoderInfo.from_dict(encoder)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: bad 'encoder' entry: {e}") from None


def _load_state_dict_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensors, and the config the file embeds (constructor_kwargs, optional class/encoder), if any."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), None
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or unsafe files
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable state-dict file: {first_line}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        embedded = data.get("constructor_kwargs")
        if not isinstance(embedded, dict):
            return data["state_dict"], None
        config = {k: data[k] for k in ("class", "encoder") if k in data}
        return data["state_dict"], dict(config, constructor_kwargs=dict(embedded))
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, None
    raise CheckpointError(f"{path}: expected a state dict (name → tensor) or {{'state_dict': ..., 'constructor_kwargs': ...}}")


def _load_state_dict_network(path: Path, config: str | Path | dict[str, Any] | None) -> nn.Module:
    tensors, cfg = _load_state_dict_file(path)
    source = path
    if config is not None:
        cfg = config if isinstance(config, dict) else read_mapping(Path(config), "network config")
        source = path if isinstance(config, dict) else Path(config)
    elif cfg is None:
        found = next((c for c in _config_candidates(path) if c.is_file()), None)
        if found is None:
            raise CheckpointError(
                f"{path}: no network config found; put the constructor arguments in {path.with_suffix('.json').name} "
                "(or .toml, or config.json) beside it"
            )
        cfg, source = read_mapping(found, "network config"), found
    kwargs = _constructor_kwargs(cfg, source)
    cls = _network_class(cfg, tensors, source)
    encoder = _encoder_info(cfg, source)
    if encoder is not None and cls is not EDM2Precond:
        raise CheckpointError(f"{source}: 'encoder' applies to EDM2 networks only; add \"class\": \"EDM2Precond\"")
    try:
        net = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build {cls.__name__} from the config: {e}") from None
    if cls is EDMPrecond and not any(k.startswith("model.") for k in tensors):
        tensors = {f"model.{k}": v for k, v in tensors.items()}
    try:
        # An EDM2 state dict saved in float16 loads into float32 modules; the gains keep their dtype.
        load_state_dict_checked(net, tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if encoder is not None:
        setattr(net, ENCODER_ATTR, encoder)
    return net


def load_network(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    config: str | Path | dict[str, Any] | None = None,
) -> nn.Module:
    """Load an EDM (EDMPrecond), EDM2 (EDM2Precond) or diffusers UNet2DModel denoiser in eval mode on
    `device`, never executing code from the file."""
    text = str(path)
    net: nn.Module
    if text.startswith(BUILTIN_PREFIX):
        net = BUILTINS.lookup(text[len(BUILTIN_PREFIX):]).load()
    else:
        p = Path(path)
        if not p.exists():
            raise CheckpointError(f"{p}: no such file")
        if p.is_dir():
            if not is_diffusers_folder(p):
                raise CheckpointError(f"{p} is a folder but not a diffusers one (unet/config.json and "
                                      "scheduler/scheduler_config.json); give the checkpoint file or such a folder")
            net = load_diffusers(p)
        elif p.suffix == ".pkl":
            net = load_edm_pickle(p)
        elif p.suffix in (".pt", ".pth", ".safetensors"):
            net = _load_state_dict_network(p, config)
        else:
            raise CheckpointError(f"{p}: unknown checkpoint type {p.suffix!r}; expected .pkl, .pt, .pth or .safetensors")
    return net.eval().requires_grad_(False).to(device)


def model_choices() -> list[str]:
    return [*FAMILY_DEFAULTS, *(BUILTIN_PREFIX + name for name in BUILTINS)]


def resolve_model_source(model: str, checkpoint: str | Path | None = None) -> str:
    """Where to load from: the checkpoint if given, else the family's built-in model."""
    if model.startswith(BUILTIN_PREFIX):
        if checkpoint is not None:
            raise CheckpointError(f"--model {model} is a built-in network; drop --checkpoint or use --model edm")
        BUILTINS.lookup(model[len(BUILTIN_PREFIX):])
        return model
    if model not in FAMILY_DEFAULTS:
        raise CheckpointError(f"unknown model {model!r}; choose one of {', '.join(model_choices())}")
    if checkpoint is not None:
        return str(checkpoint)
    default = FAMILY_DEFAULTS[model]
    if default is None:
        raise CheckpointError(f"--model {model} has no built-in network: give --checkpoint FILE")
    return BUILTIN_PREFIX + default


def model_name(source: str) -> str:
    """The name schedules are filed under: the built-in's name, a folder's name or the checkpoint's
    file stem."""
    if source.startswith(BUILTIN_PREFIX):
        return source[len(BUILTIN_PREFIX):]
    path = Path(source)
    return path.name if path.is_dir() else path.stem


def _folder_files(folder: Path) -> list[Path]:
    """The files a diffusers folder's network is read from: the UNet's and the scheduler's."""
    parts = [folder / "unet", folder / "scheduler"] if (folder / "unet").is_dir() else [folder]
    files = [f for part in parts if part.is_dir() for f in (part.iterdir() if part is folder else part.rglob("*"))]
    return sorted(f for f in files if f.is_file() and not f.name.startswith("."))


def checkpoint_sha256(source: str) -> str:
    """Content hash of a checkpoint (for a built-in: of its shipped weights)."""
    if source.startswith(BUILTIN_PREFIX):
        return file_sha256(BUILTINS.lookup(source[len(BUILTIN_PREFIX):]).weights_path)
    try:
        path = Path(source)
        if not path.is_dir():
            return file_sha256(path)
        digest = hashlib.sha256()  # of (relative path, content hash) per file: renames count too
        for f in _folder_files(path):
            digest.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
        return digest.hexdigest()
    except OSError as e:
        raise CheckpointError(f"{source}: cannot read checkpoint: {e.strerror or e}") from None
