"""Read pickles that are data, never code: one restricted unpickler for every caller.

A caller names what its files may hold (an allow-list of globals, each mapped to a stand-in) and
gets back plain data. For every caller alike:
- a global not on its list is refused by name; persistent ids are refused;
- BUILD (pickle's "set this object's state") applies only to records that check their state
  (`SafeRecord`): an allowed function or class can never be altered for the rest of the process;
- a length an opcode declares (bytes, strings, frames) must fit in what is left of the file, so a
  few bytes cannot ask for gigabytes;
- numpy arrays and scalars are rebuilt from raw bytes of plain numeric dtypes only.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import SkipsearchError

__all__ = ["SafeRecord", "Refused", "NUMPY_DATA", "safe_load", "RestrictedUnpickler"]

Allowed = Mapping[tuple[str, str], Any]


class Refused(pickle.UnpicklingError):
    """The file holds something a data pickle may not (said by name), as opposed to broken bytes."""


class SafeRecord:
    """An object a pickle may BUILD: it validates the state it is given (subclasses override)."""

    def __setstate__(self, state: Any) -> None:  # pragma: no cover - every record defines its own
        raise Refused(f"{type(self).__name__} takes no state")


# -- numpy, as plain numbers --------------------------------------------------------------------

# numpy pickles a dtype as numpy.dtype(kind, align, copy) followed by a BUILD state; only plain
# little/big-endian numeric kinds ('f4', 'i8', 'b1', 'c8', ...) are ever needed.
_DTYPE_KIND_RE = re.compile(r"^[biufc][0-9]{1,2}$")


class DtypeRecord(SafeRecord):
    """A numpy dtype as pickled, resolved to a real dtype only if it is plain numeric data."""

    def __init__(self, kind: Any) -> None:
        if not isinstance(kind, str) or not _DTYPE_KIND_RE.match(kind):
            raise Refused(f"refusing numpy dtype {kind!r}: only plain numbers (numeric dtypes) are read")
        self.kind = kind
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 5:
            raise Refused("malformed numpy dtype state")
        byteorder, subarray, names, fields = state[1:5]
        if subarray is not None or names is not None or fields is not None:
            raise Refused("refusing a structured numpy dtype: only plain numbers (numeric dtypes) are read")
        if byteorder not in ("<", ">", "=", "|"):
            raise Refused(f"malformed numpy dtype byte order {byteorder!r}")
        self.byteorder = byteorder

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.kind)
        if dtype.hasobject or dtype.kind not in "biufc":
            raise Refused(f"refusing numpy dtype {self.kind!r}")
        if self.byteorder in ("<", ">"):
            return dtype.newbyteorder(self.byteorder)
        return dtype


def _numpy_dtype(kind: Any, align: bool = False, copy: bool = False) -> DtypeRecord:
    return DtypeRecord(kind)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, DtypeRecord):
        raise Refused("malformed numpy scalar: expected a numeric dtype")
    resolved = dtype.resolve()
    if not isinstance(data, (bytes, bytearray)) or len(data) != resolved.itemsize:
        raise Refused("malformed numpy scalar: wrong data size")
    return np.frombuffer(data, dtype=resolved, count=1)[0]


class _NdarrayType:
    """What the global `numpy.ndarray` stands for: only a marker for `_reconstruct`."""


class ArrayRecord(SafeRecord):
    """numpy's `_reconstruct(ndarray, (0,), b'b')` + BUILD state, rebuilt from raw bytes.

    The state is validated (plain numeric dtype, raw bytes of exactly the declared size) instead of
    being handed to ndarray.__setstate__; `safe_load` swaps each record for its array.
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # drop the version number
        if not isinstance(state, tuple) or len(state) != 4:
            raise Refused("malformed numpy array state")
        shape, dtype, fortran, data = state
        if not isinstance(dtype, DtypeRecord):
            raise Refused("malformed numpy array: expected a numeric dtype")
        if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise Refused("malformed numpy array shape")
        resolved = dtype.resolve()
        if not isinstance(data, (bytes, bytearray)) or len(data) != math.prod(shape) * resolved.itemsize:
            raise Refused("malformed numpy array: data size does not match its shape")
        flat = np.frombuffer(data, dtype=resolved)
        self.array = flat.reshape(shape, order="F" if fortran else "C").copy()

    def resolve(self) -> np.ndarray:
        if self.array is None:
            raise Refused("malformed numpy array: no data")
        return self.array


def _numpy_reconstruct(subtype: Any, shape: Any = (0,), dtype_code: Any = b"b") -> ArrayRecord:
    if subtype is not _NdarrayType:
        raise Refused("refusing a numpy array subclass: only numpy.ndarray is allowed")
    return ArrayRecord()


# numpy's globals for arrays and scalars (numpy 2 and numpy 1 spellings), as plain numbers only.
NUMPY_DATA: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
}


def _resolve(obj: Any, seen: set[int]) -> Any:
    """Replace every ArrayRecord in the unpickled data by its numpy array (in place where it can)."""
    if isinstance(obj, ArrayRecord):
        return obj.resolve()
    if isinstance(obj, (str, bytes, int, float)) or obj is None or id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _resolve(value, seen)
    elif isinstance(obj, list):
        obj[:] = [_resolve(value, seen) for value in obj]
    elif isinstance(obj, tuple):
        return tuple(_resolve(value, seen) for value in obj)
    elif isinstance(getattr(obj, "state", None), dict):  # a caller's record of an object's state
        _resolve(obj.state, seen)
    return obj


# -- the unpickler ------------------------------------------------------------------------------


class RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD and reads can be guarded
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: IO[bytes], allowed: Allowed, *, refused: str, size: int | None = None) -> None:
        super().__init__(file)
        self.allowed = allowed
        self.refused = refused  # what to say after "refers to MODULE.NAME, which ..."
        if size is None:
            size = os.fstat(file.fileno()).st_size
        read = file.read

        def bounded_read(n: int = -1) -> bytes:
            left = size - file.tell()
            if n > left:
                raise pickle.UnpicklingError(f"an entry declares {n:,} bytes at byte {file.tell():,} but only "
                                             f"{max(left, 0):,} remain")
            return read(n)

        self._file_read = bounded_read
        self._file = file
        self._size = size

    def _left(self) -> int:
        """Bytes the pickle still holds: in the current frame, else in the file."""
        frame = getattr(getattr(self, "_unframer", None), "current_frame", None)
        if frame is not None:
            return len(frame.getbuffer()) - frame.tell()
        return self._size - self._file.tell()

    def load_bytearray8(self) -> None:
        """As pickle's, but the length is checked against the file before the buffer is allocated."""
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._left():
            raise pickle.UnpicklingError(f"a bytearray declares {length:,} bytes but only {max(self._left(), 0):,} "
                                         "remain")
        buffer = bytearray(length)
        self.readinto(buffer)
        self.append(buffer)

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def load_build(self) -> None:
        target = self.stack[-2] if len(self.stack) >= 2 else None  # [..., object, state]
        if not isinstance(target, SafeRecord):
            raise Refused(f"the file sets the state of a {type(target).__name__}, which only "
                                         "data records may have")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise Refused(f"the file refers to {module}.{name}, which {self.refused}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("the file uses persistent ids (a torch.save file?), which a data pickle never has")


def safe_load(path: str | os.PathLike[str], allowed: Allowed, *, error: type[SkipsearchError], what: str,
              refused: str) -> Any:
    """The data in the pickle at `path`, read with `allowed` globals only; any failure is one `error`
    line that starts with the path and says it is not a readable `what`."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = RestrictedUnpickler(f, allowed, refused=refused).load()
        return _resolve(data, set())
    except SkipsearchError as e:
        raise error(f"{path}: {e}") from None
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except Refused as e:
        raise error(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, struct.error, MemoryError,
            OverflowError, RecursionError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{path} is not a readable {what} (truncated or not a pickle): {reason}") from None
    except RuntimeError as e:  # torch failing on a damaged storage blob
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise error(f"{path} holds a damaged tensor: {reason}") from None


