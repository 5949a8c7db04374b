"""Networks stored as a state dict plus their constructor arguments (`.pt`, `.pth`, `.safetensors`).

The arguments are embedded (`{"constructor_kwargs": ..., "state_dict": ...}`) or in a JSON/TOML
file beside the weights. The config's optional `class` names the network: `EDMPrecond` (the
default) or `EDM2Precond`; an EDM2 config may also carry an `encoder` table (see
`EncoderInfo.from_dict`). `.pt` files are read with `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..fileio import read_mapping
from .edm import EDMPrecond
from .edm2 import ENCODER_ATTR, EDM2Precond, EncoderInfo
from .edm_pickle import load_state_dict_checked
from .limits import check_size

__all__ = ["STATE_DICT_SUFFIXES", "NETWORK_CLASSES", "load_state_dict_network"]

STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")

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
        with warnings.catch_warnings():  # torch's notes about pickle protocols are not the user's
            warnings.simplefilter("ignore")
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


def load_state_dict_network(path: Path, config: str | Path | dict[str, Any] | None) -> nn.Module:
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
    if cls is EDMPrecond and not any(k.startswith("model.") for k in tensors):
        tensors = {f"model.{k}": v for k, v in tensors.items()}
    try:
        check_size(cls, kwargs, tensors, cls.__name__)  # a 200-byte config cannot ask for gigabytes
        net = cls(**kwargs)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a config breaks a constructor in any way torch can
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot build {cls.__name__} from the config: {reason}") from None
    try:
        # An EDM2 state dict saved in float16 loads into float32 modules; the gains keep their dtype.
        load_state_dict_checked(net, tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if encoder is not None:
        setattr(net, ENCODER_ATTR, encoder)
    return net


