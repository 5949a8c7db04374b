"""`load_network`: one entry point for every checkpoint form skipsearch reads.

- `builtin:NAME`: a model that ships with skipsearch (see `skipsearch.models.builtin`);
- `*.pkl`: an NVlabs EDM snapshot, read by the restricted unpickler (never executed);
- `*.pt` / `*.pth` / `*.safetensors`: a state dict plus EDMPrecond constructor arguments, either
  embedded (`{"constructor_kwargs": ..., "state_dict": ...}`) or in a JSON/TOML file beside it.
"""

from __future__ import annotations

import json
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..fileio import file_sha256
from .builtin import BUILTIN_PREFIX, BUILTINS
from .edm import EDMPrecond
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

# Model families and the built-in network each uses when no --checkpoint is given.
FAMILY_DEFAULTS: dict[str, str] = {"edm": "edm-digits"}


def _read_config(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read network config: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: network config must be a JSON/TOML object")
    return data


def _config_candidates(path: Path) -> list[Path]:
    folder = path.parent
    return [path.with_suffix(".json"), path.with_suffix(".toml"), folder / "config.json", folder / "config.toml"]


def _constructor_kwargs(config: dict[str, Any], source: Path) -> dict[str, Any]:
    kwargs = config.get("constructor_kwargs", config)
    if not isinstance(kwargs, dict) or "img_resolution" not in kwargs:
        raise CheckpointError(
            f"{source}: network config needs EDMPrecond arguments (img_resolution, img_channels, model_type, ...), "
            "at top level or under 'constructor_kwargs'"
        )
    return dict(kwargs)


def _load_state_dict_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
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
        return data["state_dict"], dict(embedded) if isinstance(embedded, dict) else None
    if isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, None
    raise CheckpointError(f"{path}: expected a state dict (name → tensor) or {{'state_dict': ..., 'constructor_kwargs': ...}}")


def _load_state_dict_network(path: Path, config: str | Path | dict[str, Any] | None) -> EDMPrecond:
    tensors, kwargs = _load_state_dict_file(path)
    if config is not None:
        cfg = config if isinstance(config, dict) else _read_config(Path(config))
        kwargs = _constructor_kwargs(cfg, path)
    elif kwargs is None:
        found = next((c for c in _config_candidates(path) if c.is_file()), None)
        if found is None:
            raise CheckpointError(
                f"{path}: no network config found; put EDMPrecond arguments in {path.with_suffix('.json').name} "
                "(or .toml, or config.json) beside it"
            )
        kwargs = _constructor_kwargs(_read_config(found), found)
    try:
        net = EDMPrecond(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build EDMPrecond from the config: {e}") from None
    if not any(k.startswith("model.") for k in tensors):
        tensors = {f"model.{k}": v for k, v in tensors.items()}
    try:
        load_state_dict_checked(net, tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return net


def load_network(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    config: str | Path | dict[str, Any] | None = None,
) -> EDMPrecond:
    """Load an EDM denoiser in eval mode on `device`, never executing code from the file."""
    text = str(path)
    if text.startswith(BUILTIN_PREFIX):
        net = BUILTINS.lookup(text[len(BUILTIN_PREFIX):]).load()
    else:
        p = Path(path)
        if not p.exists():
            raise CheckpointError(f"{p}: no such file")
        if p.is_dir():
            raise CheckpointError(f"{p} is a folder; give the checkpoint file")
        if p.suffix == ".pkl":
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
    return BUILTIN_PREFIX + FAMILY_DEFAULTS[model]


def model_name(source: str) -> str:
    """The name schedules are filed under: the built-in's name or the checkpoint's file stem."""
    if source.startswith(BUILTIN_PREFIX):
        return source[len(BUILTIN_PREFIX):]
    return Path(source).stem


def checkpoint_sha256(source: str) -> str:
    """Content hash of a checkpoint (for a built-in: of its shipped weights)."""
    if source.startswith(BUILTIN_PREFIX):
        return file_sha256(BUILTINS.lookup(source[len(BUILTIN_PREFIX):]).weights_path)
    try:
        return file_sha256(source)
    except OSError as e:
        raise CheckpointError(f"{source}: cannot read checkpoint: {e.strerror or e}") from None
