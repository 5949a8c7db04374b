"""Read NVlabs EDM pickles (`network-snapshot-*.pkl`, `edm-*.pkl`) without executing them.

EDM pickles each network class together with its module source; the original loader `exec`s that
source. Here a restricted unpickler turns every persistent object into an inert `PersistentRecord`
(class name + state), rebuilds tensors only through torch's own `weights_only` machinery, and
refuses any other global by name. Our own EDMPrecond is then built from the recorded constructor
arguments and the recorded tensors are loaded into it.
"""

from __future__ import annotations

import inspect
import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from .edm import EDMPrecond

__all__ = ["CheckpointError", "PersistentRecord", "read_edm_pickle", "network_from_record", "ALLOWED_GLOBALS"]


@dataclass
class PersistentRecord:
    """What EDM's `_reconstruct_persistent_obj(meta)` would have built, kept as plain data."""

    class_name: str
    state: dict[str, Any]
    version: int | None = None
    module_src_length: int = 0


@dataclass
class _InertObject:
    """A plain torch container (ModuleDict) rebuilt as data: its pickled `__dict__`."""

    type_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


class _InertModuleDict(_InertObject):
    def __init__(self) -> None:
        super().__init__("torch.nn.ModuleDict")


class _EasyDict(dict):
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
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, backward_hooks: Any) -> torch.Tensor:
    return data


def _numpy_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CheckpointError("refusing a numpy scalar of object dtype")
    return np.frombuffer(data or b"", dtype=dtype, count=1)[0]


def _numpy_dtype(kind: str, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(kind, str) or kind.startswith("O"):
        raise CheckpointError(f"refusing numpy dtype {kind!r}")
    return np.dtype(kind)


# module, name -> what the name stands for here. Nothing else may be imported by a checkpoint.
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    ("torch.nn.modules.container", "ModuleDict"): _InertModuleDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"checkpoint refers to {module}.{name}, which is not on skipsearch's allow-list; "
                "only EDM network pickles are supported"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("checkpoint uses persistent ids (a torch.save file?): load it as .pt instead")


def read_edm_pickle(path: str | Path) -> Any:
    """Unpickle an EDM snapshot into plain data (dicts, tensors, PersistentRecords)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f).load()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise CheckpointError(f"{path} is not a readable EDM checkpoint (truncated or not a pickle): {e}") from None
    except RuntimeError as e:  # torch failing on a damaged storage blob
        raise CheckpointError(f"{path} holds a damaged tensor: {e}") from None


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


SUPPORTED_PRECONDS = ("EDMPrecond",)


def _constructor_kwargs(record: PersistentRecord) -> dict[str, Any]:
    args = tuple(record.state.get("_init_args") or ())
    kwargs = dict(record.state.get("_init_kwargs") or {})
    params = [p for p in inspect.signature(EDMPrecond.__init__).parameters.values() if p.name != "self"]
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    if len(args) > len(positional):
        raise CheckpointError(f"EDMPrecond was built with {len(args)} positional arguments; expected at most {len(positional)}")
    kwargs.update(zip(positional, args))
    return kwargs


def network_from_record(record: Any) -> EDMPrecond:
    """Build our EDMPrecond from the inert record of NVlabs' network and load its tensors."""
    if not isinstance(record, PersistentRecord):
        raise CheckpointError(f"expected an EDM network object, found {type(record).__name__}")
    if record.class_name not in SUPPORTED_PRECONDS:
        raise CheckpointError(
            f"unsupported preconditioning {record.class_name!r}: skipsearch supports {', '.join(SUPPORTED_PRECONDS)} "
            "(the edm-*.pkl networks)"
        )
    kwargs = _constructor_kwargs(record)
    try:
        net = EDMPrecond(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build EDMPrecond from the recorded arguments {sorted(kwargs)}: {e}") from None
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(record, "", tensors)
    load_state_dict_checked(net, tensors)
    return net


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
    net.load_state_dict(tensors, strict=True)


def load_edm_pickle(path: str | Path) -> EDMPrecond:
    data = read_edm_pickle(path)
    record = data.get("ema") if isinstance(data, dict) else data
    if record is None:
        raise CheckpointError(f"{path}: no 'ema' network in this checkpoint (keys: {sorted(data)})")
    try:
        return network_from_record(record)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
