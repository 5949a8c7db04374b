"""Models that ship with skipsearch, loaded by `load_network("builtin:NAME")`.

`edm-digits` is an EDM DDPM++ network trained by `skipsearch demo train-model` on scikit-learn's
digits; its weights and constructor arguments are package data, and it names its own proxy-FID
features (`skipsearch-digits`) and reference statistics, so the whole search runs offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from torch import nn

from ..errors import CheckpointError
from ..registry import BUILTIN_PREFIX, Registry
from .edm import EDMPrecond
from .edm_pickle import load_state_dict_checked

__all__ = ["BuiltinModel", "BUILTINS", "builtin_info", "BUILTIN_PREFIX"]

_NAME_ATTR = "skipsearch_builtin"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    features: str  # feature extractor its proxy FID uses
    reference: str  # reference statistics ("builtin:NAME" or a path)
    solver: str  # where the demo shows the method
    description: str

    @property
    def weights_path(self) -> Path:
        return Path(str(resources.files("skipsearch") / "data" / f"{self.name}.safetensors"))

    def load(self) -> EDMPrecond:
        from safetensors.torch import load_file

        weights, meta = self.weights_path, self.weights_path.with_suffix(".json")
        if not weights.is_file() or not meta.is_file():
            raise CheckpointError(f"built-in model {self.name!r} is missing its weights ({weights.name}); reinstall skipsearch")
        net = EDMPrecond(**json.loads(meta.read_text())["constructor_kwargs"])
        load_state_dict_checked(net, load_file(str(weights)))
        net.__dict__[_NAME_ATTR] = self.name
        return net


BUILTINS: Registry[BuiltinModel] = Registry("built-in model", CheckpointError)
BUILTINS.register(
    "edm-digits",
    BuiltinModel(
        name="edm-digits",
        features="skipsearch-digits",
        reference="builtin:edm-digits",
        solver="euler",
        description="EDM DDPM++ (16/32/32 channels) on scikit-learn digits, 16x16, 1 channel",
    ),
)


def builtin_info(net: nn.Module) -> BuiltinModel | None:
    """The built-in model `net` was loaded as, if any (it brings its own features and reference)."""
    name = getattr(net, _NAME_ATTR, None)
    return BUILTINS.get(name) if name else None
