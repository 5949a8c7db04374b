"""The one way skipsearch writes files (atomically), fingerprints them (sha256) and reads the
small JSON/TOML configs that sit beside checkpoints.

A killed process never leaves half a file: data goes to a temp file in the same folder, is
fsynced, and replaces the target in one rename; readers see the old file or the whole new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import CheckpointError, UsageError

__all__ = ["atomic_write", "write_bytes_atomic", "write_text_atomic", "file_sha256", "check_output_path", "read_mapping"]


def read_mapping(path: Path, what: str) -> dict[str, Any]:
    """A JSON (or, by suffix, TOML) object from `path`; anything else is one CheckpointError line."""
    try:
        data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the {what}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the {what} must be a JSON/TOML object")
    return data


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on success it replaces `path`, on any error it is removed.

    The new file keeps the old one's permissions, or gets 0644 (mkstemp's 0600 would hide a
    shared export from other users).
    """
    target = Path(path)
    try:
        perms = target.stat().st_mode & 0o777
    except FileNotFoundError:
        perms = 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, perms)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; best effort (not every OS or file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """One clear line for an output file that cannot be written, before any work is done."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{out} is a folder; give a file name, e.g. {out / 'out'}")
    folder = out.parent
    if not folder.is_dir():
        raise UsageError(f"folder {folder} does not exist; create it or choose another -o")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"cannot write {out}: permission denied")
    return out
