"""Read NVlabs EDM and EDM2 pickles (`network-snapshot-*.pkl`, `edm-*.pkl`, `edm2-*.pkl`) without executing them.

Both pickle each network class together with its module source; the original loaders `exec` that
source. Here a restricted unpickler turns every persistent object into an inert `PersistentRecord`
(class name + state), rebuilds tensors only through torch's own `weights_only` machinery, rebuilds
numpy arrays from raw bytes of plain numeric dtypes only, and refuses any other global by name.
Our own EDMPrecond (EDM `EDMPrecond` records) or EDM2Precond (EDM2 `Precond` records) is then built
from the recorded constructor arguments and the recorded tensors are loaded into it.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..safe_pickle import NUMPY_DATA, SafeRecord, safe_load
from .edm import EDMPrecond
from .edm2 import ENCODER_ATTR, EDM2Block, EDM2Precond, EDM2UNet, EncoderInfo
from .limits import check_size

__all__ = [
    "CheckpointError",
    "PersistentRecord",
    "read_edm_pickle",
    "network_from_record",
    "encoder_from_record",
    "load_edm_pickle",
    "ALLOWED_GLOBALS",
]


@dataclass
class PersistentRecord:
    """What EDM's `_reconstruct_persistent_obj(meta)` would have built, kept as plain data."""

    class_name: str
    state: dict[str, Any]
    version: int | None = None
    module_src_length: int = 0


class _InertObject(SafeRecord):
    """A plain torch container (ModuleDict) rebuilt as data: its pickled `__dict__`."""

    def __init__(self, type_name: str, state: dict[str, Any] | None = None) -> None:
        self.type_name = type_name
        self.state: dict[str, Any] = dict(state or {})

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise CheckpointError(f"malformed {self.type_name}: its state is not a dict")
        self.state = dict(state)


class _InertModuleDict(_InertObject):
    def __init__(self) -> None:
        super().__init__("torch.nn.ModuleDict")


class _EasyDict(dict, SafeRecord):
    """dnnlib.util.EasyDict read back as a plain dict."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


def _reconstruct_persistent_obj(meta: Any) -> PersistentRecord:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise CheckpointError("malformed EDM persistent object: expected a dict with type='class' and a class_name")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise CheckpointError(f"malformed EDM persistent object {meta['class_name']!r}: state is not a dict")
    src = meta.get("module_src")
    return PersistentRecord(meta["class_name"], state, meta.get("version"), len(src) if isinstance(src, str) else 0)


def _load_storage_from_bytes(data: bytes) -> Any:
    """torch serialises each storage as a nested torch.save() blob; weights_only keeps that safe too.

    torch writes those blobs as uncompressed zip archives. A compressed member could expand a
    small file a thousandfold in memory, so it is refused: what is read is bounded by the file size.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointError("malformed tensor storage: expected bytes")
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = archive.infolist()
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"damaged tensor storage: {e}") from None
        packed = [m.filename for m in members if m.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise CheckpointError(f"refusing a compressed tensor storage ({packed[0]}): torch never writes one")
        if sum(m.file_size for m in members) > len(data):
            raise CheckpointError("tensor storage declares more data than it holds")
    with warnings.catch_warnings():  # torch's notes about a damaged blob's pickle protocol are not the user's
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any) -> torch.Tensor:
    return data


# module, name -> what the name stands for here. Nothing else may be imported by a checkpoint.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    # EDM2's VAE encoder keeps its scale/bias as numpy arrays; EDM's snapshots numpy scalars.
    **NUMPY_DATA,
    ("torch.nn.modules.container", "ModuleDict"): _InertModuleDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


def read_edm_pickle(path: str | Path) -> Any:
    """Unpickle an EDM/EDM2 snapshot into plain data (dicts, tensors, numpy arrays, PersistentRecords)."""
    return safe_load(path, ALLOWED_GLOBALS, error=CheckpointError, what="EDM checkpoint",
                     refused="is not on skipsearch's allow-list; only EDM and EDM2 network pickles are supported")


def _collect_tensors(record: PersistentRecord | _InertObject, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = record.state
    for group in ("_parameters", "_buffers"):
        for name, tensor in (state.get(group) or {}).items():
            if tensor is not None:
                if not isinstance(tensor, torch.Tensor):
                    raise CheckpointError(f"{prefix}{name} is not a tensor")
                out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentRecord, _InertObject)):
            raise CheckpointError(f"unexpected object {type(child).__name__} at {prefix}{name}")
        _collect_tensors(child, f"{prefix}{name}.", out)


# Recorded class name -> our class. EDM's is `EDMPrecond` (training.networks); EDM2's is `Precond`
# (training.networks_edm2). The record carries no module name, so EDM2 is also checked by structure.
PRECOND_CLASSES: dict[str, type[EDMPrecond] | type[EDM2Precond]] = {"EDMPrecond": EDMPrecond, "Precond": EDM2Precond}
SUPPORTED_PRECONDS = tuple(PRECOND_CLASSES)


def _constructor_kwargs(record: PersistentRecord, cls: type[torch.nn.Module]) -> dict[str, Any]:
    args = tuple(record.state.get("_init_args") or ())
    kwargs = dict(record.state.get("_init_kwargs") or {})
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    if len(args) > len(positional):
        raise CheckpointError(
            f"{cls.__name__} was built with {len(args)} positional arguments; expected at most {len(positional)}"
        )
    kwargs.update(zip(positional, args))
    return kwargs


def _child(record: PersistentRecord | _InertObject, name: str) -> Any:
    return (record.state.get("_modules") or {}).get(name)


# Plain attributes the original reads at run time; a snapshot may carry values that differ from its
# constructor arguments (set after construction), and the original would use the recorded ones.
_EDM2_RUNTIME_FLOATS: dict[type[torch.nn.Module], tuple[str, ...]] = {
    EDM2Precond: ("sigma_data",),
    EDM2UNet: ("label_balance", "concat_balance"),
    EDM2Block: ("res_balance", "attn_balance", "clip_act"),
}
# Attributes fixed by the constructor arguments; a record that disagrees was not built from them.
_EDM2_STRUCTURE: tuple[str, ...] = ("out_channels", "flavor", "resample_mode", "resample_filter", "num_heads")


def _adopt_edm2_attributes(record: PersistentRecord | _InertObject, module: torch.nn.Module, path: str) -> None:
    state = record.state
    for name in _EDM2_RUNTIME_FLOATS.get(type(module), ()):
        if name not in state:
            continue
        value = state[name]
        if value is None and name == "clip_act":
            setattr(module, name, None)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise CheckpointError(f"{path or 'network'}.{name} is {value!r}; expected a finite number")
        setattr(module, name, float(value))
    if isinstance(module, EDM2Block):
        for name in _EDM2_STRUCTURE:
            recorded = state.get(name, getattr(module, name))
            if (list(recorded) if isinstance(recorded, tuple) else recorded) != getattr(module, name):
                raise CheckpointError(
                    f"{path}.{name} is recorded as {recorded!r} but the recorded constructor arguments give "
                    f"{getattr(module, name)!r}; the snapshot is inconsistent"
                )
    for name, child in module.named_children():
        sub = _child(record, name)
        if isinstance(sub, (PersistentRecord, _InertObject)):
            _adopt_edm2_attributes(sub, child, f"{path}.{name}" if path else name)


def network_from_record(record: Any) -> EDMPrecond | EDM2Precond:
    """Build our EDMPrecond/EDM2Precond from the inert record of NVlabs' network and load its tensors."""
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"expected an EDM network object, found {type(record).__name__}")
    cls = PRECOND_CLASSES.get(record.class_name)
    if cls is None:
        raise CheckpointError(
            f"unsupported preconditioning {record.class_name!r}: skipsearch supports EDMPrecond (the edm-*.pkl "
            "networks) and Precond (the edm2-*.pkl networks)"
        )
    if cls is EDM2Precond:
        unet = _child(record, "unet")
        if not isinstance(unet, PersistentRecord) or unet.class_name != "UNet":
            raise CheckpointError("this 'Precond' has no EDM2 'unet' (class UNet); it is not an EDM2 network")
    kwargs = _constructor_kwargs(record, cls)
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(record, "", tensors)
    try:
        check_size(cls, kwargs, tensors, cls.__name__)  # bounded: arguments capped, sized on the meta device
        net = cls(**kwargs)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - arguments from a file break a constructor in any way torch can
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot build {cls.__name__} from the recorded arguments {sorted(kwargs)}: {reason}") from None
    # float16 tensors are copied into the float32 modules; EDM2's gains remember their dtype.
    load_state_dict_checked(net, tensors)
    if isinstance(net, EDM2Precond):
        _adopt_edm2_attributes(record, net, "")
    return net


def _float_tuple(value: Any, what: str) -> tuple[float, ...]:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise CheckpointError(f"the VAE encoder's {what} is {type(value).__name__}; expected an array of numbers")
    try:
        floats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise CheckpointError(f"the VAE encoder's {what} holds non-numbers") from None
    if not all(math.isfinite(v) for v in floats):
        raise CheckpointError(f"the VAE encoder's {what} holds non-finite values")
    return floats


def encoder_from_record(record: Any) -> EncoderInfo:
    """What an EDM2 snapshot's `encoder` says about decoding; none means the RGB encoder, as in EDM2."""
    if record is None:
        return EncoderInfo(kind="rgb")
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"the snapshot's encoder is a {type(record).__name__}, not an EDM2 encoder object")
    if record.class_name == "StandardRGBEncoder":
        return EncoderInfo(kind="rgb")
    if record.class_name == "StabilityVAEEncoder":
        name = record.state.get("vae_name")
        if not isinstance(name, str) or not name:
            raise CheckpointError("the snapshot's VAE encoder has no vae_name")
        scale = _float_tuple(record.state.get("scale"), "scale")
        bias = _float_tuple(record.state.get("bias"), "bias")
        if len(scale) != len(bias):
            raise CheckpointError(f"the VAE encoder's scale ({len(scale)}) and bias ({len(bias)}) differ in length")
        return EncoderInfo(kind="vae", vae_name=name, scale=scale, bias=bias)
    raise CheckpointError(
        f"unsupported encoder {record.class_name!r}: skipsearch knows StandardRGBEncoder and StabilityVAEEncoder"
    )


def load_state_dict_checked(net: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Strict load with a one-line error that names the first mismatching keys."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shape (e.g. {k}: {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)})")
        raise CheckpointError("checkpoint tensors do not match the network: " + "; ".join(parts))
    odd = [k for k, t in tensors.items() if not (t.dtype.is_floating_point or t.dtype == expected[k].dtype)]
    if odd:
        raise CheckpointError(f"checkpoint tensor {odd[0]} is {tensors[odd[0]].dtype}, not floating point")
    net.load_state_dict(tensors, strict=True)


def load_edm_pickle(path: str | Path) -> EDMPrecond | EDM2Precond:
    """Our network for an EDM or EDM2 snapshot; an EDM2 one also gets `skipsearch_encoder` (EncoderInfo)."""
    data = read_edm_pickle(path)
    record = data.get("ema") if isinstance(data, dict) else data
    if record is None:
        raise CheckpointError(f"{path}: no 'ema' network in this checkpoint (keys: {', '.join(sorted(map(repr, data)))})")
    try:
        net = network_from_record(record)
        if isinstance(net, EDM2Precond):
            setattr(net, ENCODER_ATTR, encoder_from_record(data.get("encoder") if isinstance(data, dict) else None))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a record of the wrong shape fails wherever it is first read
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: the network record is malformed ({type(e).__name__}: {reason})") from None
    return net
