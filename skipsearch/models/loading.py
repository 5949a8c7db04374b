"""`load_network`: one entry point for every checkpoint form skipsearch reads (see `formats`),
and the model families `--model` names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..registry import BUILTIN_PREFIX, Registry
from .builtin import BUILTINS
from ..skiptune import IDENTITY_ATTR
from .formats import format_of

__all__ = [
    "load_network",
    "resolve_model_source",
    "model_name",
    "checkpoint_sha256",
    "model_choices",
    "MODEL_FAMILIES",
    "ModelFamily",
    "CheckpointError",
]


@dataclass(frozen=True)
class ModelFamily:
    """A `--model` choice and the built-in network it uses without `--checkpoint` (None: none)."""

    name: str
    default: str | None = None


MODEL_FAMILIES: Registry[ModelFamily] = Registry("model", CheckpointError)
for _family in (ModelFamily("edm", "edm-digits"), ModelFamily("edm2"), ModelFamily("diffusers")):
    MODEL_FAMILIES.register(_family.name, _family)


@dataclass
class NetworkIdentity:
    """The checkpoint a network was loaded from: what a schedule exported for it names. The sha256
    is computed when first asked (hashing a large checkpoint is not free)."""

    name: str
    source: str
    _sha256: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = checkpoint_sha256(self.source)
        return self._sha256


def load_network(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    config: str | Path | dict[str, Any] | None = None,
) -> nn.Module:
    """Load an EDM (EDMPrecond), EDM2 (EDM2Precond) or diffusers UNet2DModel denoiser in eval mode on
    `device`, never executing code from the file. `config`: constructor arguments for a state dict.
    The network remembers its checkpoint, so a schedule exported for another one is refused."""
    fmt = format_of(path)
    net = fmt.load(str(path), config)
    net.__dict__[IDENTITY_ATTR] = NetworkIdentity(fmt.display_name(str(path)), str(path))
    return net.eval().requires_grad_(False).to(device)


def model_choices() -> list[str]:
    return [*MODEL_FAMILIES, *(BUILTIN_PREFIX + name for name in BUILTINS)]


def resolve_model_source(model: str, checkpoint: str | Path | None = None) -> str:
    """Where to load from: the checkpoint if given, else the family's built-in model."""
    if model.startswith(BUILTIN_PREFIX):
        if checkpoint is not None:
            raise CheckpointError(f"--model {model} is a built-in network; drop --checkpoint or use --model edm")
        BUILTINS.lookup(model[len(BUILTIN_PREFIX):])
        return model
    if model not in MODEL_FAMILIES:
        raise CheckpointError(f"unknown model {model!r}; choose one of {', '.join(model_choices())}")
    if checkpoint is not None:
        return str(checkpoint)
    default = MODEL_FAMILIES[model].default
    if default is None:
        raise CheckpointError(f"--model {model} has no built-in network: give --checkpoint FILE")
    return BUILTIN_PREFIX + default


def model_name(source: str) -> str:
    """The name schedules are filed under: the built-in's name, a folder's name or the file's stem."""
    return format_of(source).display_name(source)


def checkpoint_sha256(source: str) -> str:
    """Content hash of a checkpoint (for a built-in: of its shipped weights)."""
    try:
        return format_of(source).sha256(source)
    except OSError as e:
        raise CheckpointError(f"{source}: cannot read checkpoint: {e.strerror or e}") from None
