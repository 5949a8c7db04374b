"""Study presets: the shipped TOML files in `skipsearch/studies/`, or a user's own.

Plain file reading on purpose: `skipsearch presets` lists them without importing torch or Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["Preset", "PRESETS", "load_preset"]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    settings: dict[str, Any]

    @property
    def nfe(self) -> list[int]:
        nfe = self.settings.get("nfe", [10])
        return list(nfe) if isinstance(nfe, list) else [nfe]


def _read_preset(path: Path) -> Preset:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read preset {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} is not a TOML table")
    description = str(data.pop("description", ""))
    return Preset(path.stem, description, data)


PRESETS: Registry[Preset] = Registry("study preset", ConfigError)
for _path in sorted(Path(str(resources.files("skipsearch") / "studies")).glob("*.toml")):
    PRESETS.register(_path.stem, _read_preset(_path))


def load_preset(name_or_path: str) -> Preset:
    """A shipped preset by name (see `skipsearch presets`) or a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
        return _read_preset(path)
    return PRESETS.lookup(name_or_path)
