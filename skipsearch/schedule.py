"""Skip schedules: one coefficient ρ per skip site, in push order (0 = outermost).

Pure data with validation; applying a schedule to a network is `skipsearch.skiptune`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .errors import ScheduleError

__all__ = ["SkipSite", "SkipSchedule", "ScheduleOrigin", "FreeU", "linear_rho", "ScheduleError", "MAX_RHO"]

MAX_RHO = 10.0  # ten times a skip: far past anything useful; larger is a mistake (or a forged file)


@dataclass(frozen=True)
class SkipSite:
    """One encoder→decoder skip connection.

    `index` is the push order (0 = outermost, full resolution); `producer` names the encoder entry
    whose output is pushed and `consumer` the decoder block that pops and concatenates it.
    """

    index: int
    resolution: int | None
    channels: int
    producer: str
    consumer: str


def linear_rho(num_skips: int, rho_top: float, rho_bottom: float, curve: float = 0.0) -> list[float]:
    """ρ_i = ρ_top + (ρ_bottom − ρ_top)·s_i^γ with s_i = i/(K−1), γ = 4^curve (DESIGN.md §3).

    curve = 0 is the paper's linear interpolation; curve < 0 moves every site but the outermost
    toward ρ_bottom, curve > 0 keeps them near ρ_top.
    """
    if num_skips < 1:
        raise ScheduleError(f"num_skips must be at least 1, got {num_skips}")
    for name, value in (("rho_top", rho_top), ("rho_bottom", rho_bottom), ("curve", curve)):
        if not math.isfinite(value):
            raise ScheduleError(f"{name} must be finite, got {value}")
    gamma = 4.0**curve
    if num_skips == 1:
        return [float(rho_top)]
    return [rho_top + (rho_bottom - rho_top) * (i / (num_skips - 1)) ** gamma for i in range(num_skips)]


def _check_sigma_range(sigma_range: Sequence[float] | None) -> tuple[float, float] | None:
    if sigma_range is None:
        return None
    try:
        lo, hi = (float(v) for v in sigma_range)
    except (TypeError, ValueError):
        raise ScheduleError(f"sigma_range must be a pair (sigma_lo, sigma_hi), got {sigma_range!r}") from None
    if not (math.isfinite(lo) and lo >= 0 and hi > lo):
        raise ScheduleError(f"sigma_range must satisfy 0 <= sigma_lo < sigma_hi, got ({lo}, {hi})")
    return lo, hi


@dataclass(frozen=True)
class ScheduleOrigin:
    """Which network a schedule was exported for: a consumer refuses to apply it to another one."""

    label: str  # model/solver/nfeN, for messages
    model_name: str
    model_sha256: str | None = None
    sites: tuple[tuple[int | None, int], ...] | None = None  # per site: (resolution, channels)


# FreeU's published factors (the FreeU repository's table; diffusers' docs use the same for SD 1.5):
# the reference point a FreeU search enqueues after its baseline.
FREEU_DEFAULTS = {"sd1": {"b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2},
                  "sd2": {"b1": 1.4, "b2": 1.6, "s1": 0.9, "s2": 0.2},
                  "sdxl": {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}}


@dataclass(frozen=True)
class FreeU:
    """FreeU's factors (Si et al. 2023), as diffusers' `enable_freeu(s1, s2, b1, b2)` takes them: in
    the decoder's two lowest-resolution stages (1: the lowest), the first half of the backbone's
    channels is multiplied by b, and the skip's lowest frequencies (a 2×2 box around the centre of
    its shifted 2-D spectrum) by s. (1, 1, 1, 1) changes nothing."""

    b1: float = 1.0
    b2: float = 1.0
    s1: float = 1.0
    s2: float = 1.0

    def __post_init__(self) -> None:
        for name in ("b1", "b2", "s1", "s2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ScheduleError(f"FreeU {name} must be a finite number, got {value!r}")
            if not 0 < value <= MAX_RHO:
                raise ScheduleError(f"FreeU {name} = {value:g} must lie in (0, {MAX_RHO:g}] (diffusers ignores FreeU "
                                    "when a factor is 0)")
            object.__setattr__(self, name, float(value))

    @property
    def is_identity(self) -> bool:
        return (self.b1, self.b2, self.s1, self.s2) == (1.0, 1.0, 1.0, 1.0)

    def stage(self, index: int) -> tuple[float, float] | None:
        """(b, s) of decoder stage `index` (0: the lowest resolution), None past FreeU's two."""
        return ((self.b1, self.s1), (self.b2, self.s2))[index] if index in (0, 1) else None

    def as_kwargs(self) -> dict[str, float]:
        """What `pipe.enable_freeu(**...)` takes."""
        return {"s1": self.s1, "s2": self.s2, "b1": self.b1, "b2": self.b2}


@dataclass(frozen=True)
class SkipSchedule:
    """K skip coefficients, optionally active only for σ in [σ_lo, σ_hi] (ρ = 1 outside).

    `origin` (a schedule read from an export) names the network it was searched on; it takes no
    part in comparisons."""

    rho: tuple[float, ...]
    sigma_range: tuple[float, float] | None = None
    origin: ScheduleOrigin | None = field(default=None, compare=False, repr=False)
    freeu: FreeU | None = None  # FreeU's backbone and skip-spectrum factors, applied with ρ

    def __init__(self, rho: Iterable[float], sigma_range: Sequence[float] | None = None,
                 origin: ScheduleOrigin | None = None, freeu: FreeU | None = None) -> None:
        try:
            values = tuple(float(r) for r in rho)
        except (TypeError, ValueError):
            raise ScheduleError(f"rho must be a sequence of numbers, got {rho!r}") from None
        if not values:
            raise ScheduleError("rho is empty: a schedule needs one coefficient per skip site")
        for i, r in enumerate(values):
            if not math.isfinite(r) or not 0 < r <= MAX_RHO:
                raise ScheduleError(f"rho[{i}] = {r:g} is invalid: coefficients must be finite and positive, at most "
                                    f"{MAX_RHO:g}")
        object.__setattr__(self, "rho", values)
        object.__setattr__(self, "sigma_range", _check_sigma_range(sigma_range))
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "freeu", None if freeu is None or freeu.is_identity else freeu)

    @classmethod
    def linear(
        cls,
        num_skips: int,
        rho_top: float,
        rho_bottom: float,
        curve: float = 0.0,
        sigma_range: Sequence[float] | None = None,
    ) -> SkipSchedule:
        return cls(linear_rho(num_skips, rho_top, rho_bottom, curve), sigma_range)

    @classmethod
    def stages(
        cls,
        sites: Sequence[SkipSite | int],
        rho: Sequence[float],
        sigma_range: Sequence[float] | None = None,
    ) -> SkipSchedule:
        """One ρ per resolution stage, `rho[0]` for the highest resolution (outermost) stage.

        `sites` is `skip_sites(net)` or the sites' resolutions in push order.
        """
        resolutions = [s.resolution if isinstance(s, SkipSite) else int(s) for s in sites]
        if any(r is None for r in resolutions):
            raise ScheduleError("stage schedules need each site's resolution; this network's sites have none")
        stage_res = sorted(set(resolutions), reverse=True)
        if len(rho) != len(stage_res):
            raise ScheduleError(
                f"got {len(rho)} stage coefficients but the network has {len(stage_res)} resolution stages "
                f"({', '.join(map(str, stage_res))})"
            )
        per_res = dict(zip(stage_res, rho))
        return cls([per_res[r] for r in resolutions], sigma_range)

    @classmethod
    def identity(cls, num_skips: int) -> SkipSchedule:
        return cls([1.0] * num_skips)

    @property
    def num_skips(self) -> int:
        return len(self.rho)

    @property
    def is_identity(self) -> bool:
        return all(r == 1.0 for r in self.rho) and self.freeu is None

    def check_sites(self, num_sites: int) -> None:
        if self.num_skips != num_sites:
            raise ScheduleError(
                f"schedule has {self.num_skips} coefficients but the network has {num_sites} skip sites"
            )
