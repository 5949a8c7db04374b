"""Models that ship with skipsearch, registered under `builtin:NAME` for `load_network`.

`edm-digits` is an EDM DDPM++ network trained by `skipsearch.models.digits` on scikit-learn's
digits; its weights and constructor arguments are package data, and it brings its own proxy-FID
features (`skipsearch-digits`) and reference statistics, so the whole search runs offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from torch import nn

from .edm import EDMPrecond
from .edm_pickle import CheckpointError, load_state_dict_checked
from .loading import register_builtin

__all__ = ["BuiltinInfo", "BUILTINS", "builtin_info", "builtin_weights_path"]

BUILTIN_ATTR = "skipsearch_builtin"


@dataclass(frozen=True)
class BuiltinInfo:
    name: str
    features: str
    reference: str
    solver: str  # where the demo shows the method
    description: str


BUILTINS: dict[str, BuiltinInfo] = {
    "edm-digits": BuiltinInfo(
        name="edm-digits",
        features="skipsearch-digits",
        reference="builtin:edm-digits",
        solver="euler",
        description="EDM DDPM++ (16/32/32 channels) on scikit-learn digits, 16x16, 1 channel",
    )
}


def builtin_weights_path(name: str) -> Path:
    return Path(str(resources.files("skipsearch") / "data" / f"{name}.safetensors"))


def builtin_info(net: nn.Module) -> BuiltinInfo | None:
    name = getattr(net, BUILTIN_ATTR, None)
    return BUILTINS.get(name) if name else None


def _load(name: str) -> EDMPrecond:
    from safetensors.torch import load_file

    weights = builtin_weights_path(name)
    meta_path = weights.with_suffix(".json")
    if not weights.is_file() or not meta_path.is_file():
        raise CheckpointError(f"built-in model {name!r} is missing its weights ({weights.name}); reinstall skipsearch")
    kwargs = json.loads(meta_path.read_text())["constructor_kwargs"]
    net = EDMPrecond(**kwargs)
    load_state_dict_checked(net, load_file(str(weights)))
    net.__dict__[BUILTIN_ATTR] = name
    return net


for _name in BUILTINS:
    register_builtin(_name, lambda _n=_name: _load(_n))
