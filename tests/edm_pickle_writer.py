"""Write pickles in NVlabs EDM's and EDM2's persistent-object format, for loader tests.

Each network module becomes a call of `torch_utils.persistence._reconstruct_persistent_obj(meta)`
with `meta = {type, version, module_src, class_name, state}` as EDM writes it. The module source we
embed is hostile: executing it would create a marker file and raise, so a loader that ever runs it
fails the tests. `torch_utils`/`dnnlib` exist only as stand-in modules while writing.
EDM2 snapshots (`write_edm2_snapshot`) follow the documented format: an EasyDict of encoder,
dataset_kwargs, loss_fn and ema, the network under its original class names with float16 tensors.
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
import torch
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


# Our EDM2 classes -> the names NVlabs' networks_edm2 pickles them under, and the plain attributes
# each original object carries in its state (besides torch's module internals).
EDM2_CLASS_NAMES = {"EDM2Precond": "Precond", "EDM2UNet": "UNet", "EDM2Block": "Block", "MPConv": "MPConv",
                    "MPFourier": "MPFourier"}
EDM2_ATTRIBUTES = {
    "Precond": ("img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_data"),
    "UNet": ("label_balance", "concat_balance"),
    "Block": ("out_channels", "flavor", "resample_filter", "resample_mode", "num_heads", "dropout", "res_balance",
              "attn_balance", "clip_act"),
    "MPConv": ("out_channels",),
    "MPFourier": (),
}
# Optional children the original stores as None when absent.
EDM2_OPTIONAL = {"UNet": ("emb_label",), "Block": ("conv_skip", "attn_qkv", "attn_proj")}
# EDM2's latent normalisation of sd-vae-ft-mse latents (per channel).
VAE_RAW_MEAN = np.array([5.81, 3.25, 0.12, -2.15], dtype=np.float32)
VAE_RAW_STD = np.array([4.17, 4.62, 3.71, 3.28], dtype=np.float32)


def _convert_edm2(module: nn.Module, module_src: str, dtype: torch.dtype, init_kwargs: dict[str, Any] | None) -> Any:
    state: dict[str, Any] = dict(nn.Module().__dict__)  # torch's internals, this torch version's set
    state["training"] = False
    state["_parameters"] = OrderedDict(
        (k, None if v is None else nn.Parameter(v.detach().to(dtype).clone(), requires_grad=False))
        for k, v in module._parameters.items()
    )
    state["_buffers"] = OrderedDict((k, None if v is None else v.detach().to(dtype).clone()) for k, v in module._buffers.items())
    state["_modules"] = OrderedDict(
        (name, None if child is None else _convert_edm2(child, module_src, dtype, None))
        for name, child in module._modules.items()
    )
    if isinstance(module, nn.ModuleDict):
        return PlainModuleDict(state)
    class_name = EDM2_CLASS_NAMES[type(module).__name__]
    for name in EDM2_ATTRIBUTES[class_name]:
        state[name] = getattr(module, name)
    for name in EDM2_OPTIONAL.get(class_name, ()):
        if getattr(module, name) is None:
            state[name] = None
    if class_name == "MPConv":
        state["_init_args"] = (module.in_channels, module.out_channels, list(module.weight.shape[2:]))
        state["_init_kwargs"] = {}
    else:
        state["_init_args"] = ()
        state["_init_kwargs"] = dict(init_kwargs or {})
    return Persistent(class_name, state, module_src)


def write_edm2_snapshot(
    net: nn.Module,
    init_kwargs: dict[str, Any],
    path: Path,
    marker: Path,
    *,
    encoder: str = "rgb",
    dtype: torch.dtype = torch.float16,
    numpy1_names: bool = False,
    encoder_state: dict[str, Any] | None = None,
) -> Path:
    """Write `net` (an EDM2Precond) as an EDM2 snapshot: EasyDict(encoder, dataset_kwargs, loss_fn, ema).

    `encoder` 'vae' stores a StabilityVAEEncoder with numpy scale/bias arrays ('rgb': a
    StandardRGBEncoder; any other name: a bare record of that class); `encoder_state`
    overrides entries of the encoder's state (for hostile variants). `numpy1_names` writes protocol 3
    and names numpy's array functions as numpy 1.x does (numpy.core.multiarray).
    """
    _install_stand_ins()
    src = hostile_source(marker)
    EasyDict = sys.modules["dnnlib.util"].EasyDict
    if encoder == "vae":
        scale = (0.5 / VAE_RAW_STD).astype(np.float32)
        enc = Persistent("StabilityVAEEncoder", dict(
            _init_args=(), _init_kwargs={}, vae_name="stabilityai/sd-vae-ft-mse", scale=scale,
            bias=(-VAE_RAW_MEAN * scale).astype(np.float32), batch_size=8, _vae=None,
        ), src)
    else:
        enc = Persistent("StandardRGBEncoder" if encoder == "rgb" else encoder, dict(_init_args=(), _init_kwargs={}), src)
    enc.meta["state"].update(encoder_state or {})
    data = EasyDict(
        encoder=enc,
        dataset_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset", path="img.zip", use_labels=True),
        loss_fn=Persistent("EDM2Loss", dict(_init_args=(), _init_kwargs={}, P_mean=-0.4, P_std=1.0, sigma_data=0.5), src),
        ema=_convert_edm2(net, src, dtype, init_kwargs),
    )
    payload = pickle.dumps(data, protocol=3 if numpy1_names else 4)
    if numpy1_names:  # protocol 3 names globals as text lines, so the module name can be swapped
        payload = payload.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(payload)
    return path


def write_expanded_snapshot(net_class: type, init_kwargs: dict[str, Any], path: Path) -> Path:
    """An EDM snapshot whose every tensor is a stride-0 view of one stored number: a few hundred kB
    that describe a network of any size (how a hostile file hides a huge allocation)."""
    _install_stand_ins()
    with torch.device("meta"):
        shaped = net_class(**init_kwargs)

    def convert(module: nn.Module, kwargs: dict[str, Any] | None) -> Any:
        state = {k: v for k, v in module.__dict__.items() if not k.startswith("_")}
        state["training"] = False
        state["_modules"] = OrderedDict((n, None if c is None else convert(c, None)) for n, c in module._modules.items())
        state["_parameters"] = OrderedDict((k, None if v is None else torch.zeros(1).expand(v.shape))
                                           for k, v in module._parameters.items())
        state["_buffers"] = OrderedDict((k, None if v is None else torch.zeros(1).expand(v.shape))
                                        for k, v in module._buffers.items())
        state.pop("init_kwargs", None)
        if isinstance(module, nn.ModuleDict):
            return PlainModuleDict(state)
        state["_init_args"], state["_init_kwargs"] = (), dict(kwargs or {})
        return Persistent(type(module).__name__, state, "raise SystemExit")

    with open(path, "wb") as f:
        pickle.dump({"ema": convert(shaped, init_kwargs)}, f)
    return path
