"""Write pickles in NVlabs EDM's persistent-object format, for loader tests.

Each network module becomes a call of `torch_utils.persistence._reconstruct_persistent_obj(meta)`
with `meta = {type, version, module_src, class_name, state}` as EDM writes it. The module source we
embed is hostile: executing it would create a marker file and raise, so a loader that ever runs it
fails the tests. `torch_utils`/`dnnlib` exist only as stand-in modules while writing.
"""

from __future__ import annotations

import copyreg
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn


def hostile_source(marker: Path) -> str:
    return (
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
        "raise RuntimeError('module_src must never be executed')\n"
    )


def _install_stand_ins() -> None:
    if "torch_utils.persistence" not in sys.modules:
        pkg = types.ModuleType("torch_utils")
        mod = types.ModuleType("torch_utils.persistence")

        def _reconstruct_persistent_obj(meta: Any) -> Any:
            raise RuntimeError("stand-in: the real EDM function would exec module_src here")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
        pkg.persistence = mod
        sys.modules["torch_utils"] = pkg
        sys.modules["torch_utils.persistence"] = mod
    if "dnnlib.util" not in sys.modules:
        pkg = types.ModuleType("dnnlib")
        util = types.ModuleType("dnnlib.util")

        class EasyDict(dict):
            def __getattr__(self, name: str) -> Any:
                return self[name]

        EasyDict.__module__ = "dnnlib.util"
        EasyDict.__qualname__ = "EasyDict"
        util.EasyDict = EasyDict
        pkg.util = util
        sys.modules["dnnlib"] = pkg
        sys.modules["dnnlib.util"] = util


class Persistent:
    """Pickles exactly as an EDM persistent-class instance does."""

    def __init__(self, class_name: str, state: dict[str, Any], module_src: str) -> None:
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self) -> Any:
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


class PlainModuleDict:
    """Pickles as torch.nn.ModuleDict (NEWOBJ + __dict__ state), holding persistent children."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # the pickler checks NEWOBJ's class against obj.__class__
        return nn.ModuleDict

    def __reduce__(self) -> Any:
        return (copyreg.__newobj__, (nn.ModuleDict,), self.state)


def _convert(module: nn.Module, module_src: str, init_kwargs: dict[str, Any] | None) -> Any:
    state = dict(module.__dict__)
    state["_modules"] = OrderedDict(
        (name, None if child is None else _convert(child, module_src, None)) for name, child in module._modules.items()
    )
    state["_parameters"] = OrderedDict(
        (k, None if v is None else nn.Parameter(v.detach().clone(), requires_grad=False))
        for k, v in module._parameters.items()
    )
    state["_buffers"] = OrderedDict((k, None if v is None else v.detach().clone()) for k, v in module._buffers.items())
    state.pop("init_kwargs", None)
    if isinstance(module, nn.ModuleDict):
        return PlainModuleDict(state)
    state["_init_args"] = ()
    state["_init_kwargs"] = dict(init_kwargs or {})
    return Persistent(type(module).__name__, state, module_src)


def write_edm_snapshot(
    net: nn.Module,
    init_kwargs: dict[str, Any],
    path: Path,
    marker: Path,
    *,
    class_name: str | None = None,
) -> Path:
    """Write `net` as an EDM `network-snapshot-*.pkl` (ema + loss_fn + augment_pipe + dataset_kwargs)."""
    _install_stand_ins()
    src = hostile_source(marker)
    ema = _convert(net, src, init_kwargs)
    ema.meta["state"]["sigma_data"] = np.float64(0.5)  # numpy scalars appear in real snapshots too
    if class_name is not None:
        ema.meta["class_name"] = class_name
    EasyDict = sys.modules["dnnlib.util"].EasyDict
    data = dict(
        ema=ema,
        loss_fn=Persistent("EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5), src),
        augment_pipe=None,
        dataset_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset", path="x.zip", resolution=16),
    )
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path


def write_pickle(obj: Any, path: Path) -> Path:
    _install_stand_ins()
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path
