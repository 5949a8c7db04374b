"""Study configuration: presets, CLI overrides, and the fingerprint that keeps workers consistent.

A study is one (model, solver, NFE, evaluation config). Everything that changes a trial's score is
part of the fingerprint (checkpoint and reference contents included, by sha256); a worker whose
config differs is refused rather than silently mixing incomparable scores into one study.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["StudyConfig", "ConfigError", "load_preset", "preset_names", "file_sha256", "SPACES", "SAMPLERS", "PRUNERS"]

SPACES = ("linear", "stages", "linear+window")
SAMPLERS = ("gp", "tpe", "random")
PRUNERS = ("median", "none")
CONFIG_VERSION = 1

# Fields that do not change a trial's score: a joining worker may differ in these.
OPERATIONAL = {"checkpoint", "features_weights", "reference", "batch_size", "trials", "artifacts"}


class ConfigError(ValueError):
    """A study configuration that cannot run."""


@dataclass(frozen=True)
class StudyConfig:
    model: str = "edm"  # family given on the command line
    model_name: str = "edm-digits"  # the name schedules are filed under
    checkpoint: str = "builtin:edm-digits"
    checkpoint_sha256: str = ""
    solver: str = "euler"
    nfe: int = 10
    time_exponent: float = 7.0
    samples: int = 1000
    fidelity: tuple[float, ...] = (0.25, 0.5, 1.0)
    seed_start: int = 0
    features: str = "skipsearch-digits"
    features_weights: str | None = None
    reference: str = "builtin:edm-digits"
    reference_sha256: str = ""
    precision: str = "fp32"
    batch_size: int = 250
    space: str = "linear"
    rho_bounds: tuple[float, float] = (0.3, 1.1)
    curve_bounds: tuple[float, float] = (-2.0, 2.0)
    sigma_bounds: tuple[float, float] = (0.002, 80.0)
    sampler: str = "gp"
    sampler_seed: int = 0
    pruner: str = "median"
    trials: int = 20
    enqueue_paper: bool = True
    artifacts: str = "skipsearch-artifacts"
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        self.validate()

    @property
    def study_name(self) -> str:
        return f"{self.model_name}/{self.solver}/nfe{self.nfe}"

    @property
    def steps(self) -> list[int]:
        """Sample counts at which FID is reported (the last is `samples`)."""
        counts = sorted({max(1, min(self.samples, round(f * self.samples))) for f in self.fidelity} | {self.samples})
        return counts

    @property
    def seeds(self) -> range:
        return range(self.seed_start, self.seed_start + self.samples)

    def validate(self) -> None:
        if self.space not in SPACES:
            raise ConfigError(f"unknown search space {self.space!r}; choose one of {', '.join(SPACES)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"unknown pruner {self.pruner!r}; choose one of {', '.join(PRUNERS)}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, not {self.precision!r}")
        if self.samples < 2:
            raise ConfigError(f"--samples must be at least 2 (FID needs a covariance), got {self.samples}")
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if self.nfe < 1:
            raise ConfigError(f"--nfe must be at least 1, got {self.nfe}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if not all(0 < f <= 1 for f in self.fidelity):
            raise ConfigError(f"fidelity steps are fractions of --samples in (0, 1], got {list(self.fidelity)}")
        for name, (lo, hi) in (("rho", self.rho_bounds), ("curve", self.curve_bounds), ("sigma", self.sigma_bounds)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"{name} bounds must be finite with low < high, got ({lo}, {hi})")
        if self.rho_bounds[0] <= 0:
            raise ConfigError(f"rho bounds must be positive, got {self.rho_bounds}")
        if self.sigma_bounds[0] <= 0:
            raise ConfigError(f"sigma bounds must be positive, got {self.sigma_bounds}")

    def fingerprint(self) -> str:
        data = {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def differences(self, other: StudyConfig) -> list[str]:
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in OPERATIONAL and mine[k] != theirs.get(k)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown study setting(s): {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"bad study settings: {e}") from None

    def with_overrides(self, **overrides: Any) -> StudyConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _preset_dir() -> Path:
    return Path(str(resources.files("skipsearch") / "studies"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in _preset_dir().glob("*.toml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset's settings: a shipped name (see `studies/`) or a TOML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = _preset_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"unknown study preset {name_or_path!r}; shipped presets: {', '.join(preset_names())}")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read preset {path}: {e}") from None
    data.pop("description", None)
    return data


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
