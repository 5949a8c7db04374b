"""Where a few-step solver's network evaluations fall: σ steps and their parameterisations.

Pure numbers (no torch), so a schedules file that records its steps reads without torch and every
consumer computes exactly the σ list the search sampled on.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .errors import SolverError

__all__ = ["EDM_SIGMA_MIN", "EDM_SIGMA_MAX", "EDM_TIME_EXPONENT", "MAX_NFE", "MAX_WARP", "edm_sigma_list",
           "edm_warped_sigma_list", "warp_positions", "TimeSteps"]

MAX_NFE = 1000  # few-step sampling, with room to spare: a larger budget is a mistake, not a setting
MAX_WARP = 2.0  # log2 of the warp's exponents: beyond 4× bunching, steps at 1000 NFE meet in float64

EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0
EDM_TIME_EXPONENT = 7.0
_MATCH = 1e-6  # relative agreement of a recorded σ list with the grid its parameters give


def edm_sigma_list(num_steps: int, sigma_min: float = EDM_SIGMA_MIN, sigma_max: float = EDM_SIGMA_MAX,
                   time_exponent: float = EDM_TIME_EXPONENT) -> list[float]:
    """EDM's σ steps: `num_steps` values from σ_max to σ_min, uniform in σ^(1/time_exponent), then 0.

    The exponent is EDM's ρ; it is called `time_exponent` here because ρ names the skip
    coefficients in this project.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
        raise SolverError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    lo, hi, exponent = float(sigma_min), float(sigma_max), float(time_exponent)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
        raise SolverError(f"need 0 < sigma_min < sigma_max (finite), got sigma_min={lo}, sigma_max={hi}")
    if not (math.isfinite(exponent) and exponent > 0.0):
        raise SolverError(f"time_exponent must be finite and > 0, got {exponent}")
    n = int(num_steps)
    if n == 1:  # a single step goes straight from σ_max to 0 (the grid would divide by N − 1 = 0)
        return [hi, 0.0]
    inv = 1.0 / exponent
    top, bottom = hi**inv, lo**inv
    return [(top + i / (n - 1) * (bottom - top)) ** exponent for i in range(n)] + [0.0]


def warp_positions(positions: list[float], crowd_high: float = 0.0, crowd_low: float = 0.0) -> list[float]:
    """Move step positions u ∈ [0, 1] (0: σ_max, 1: σ_min) along a monotone warp that keeps both ends:
    Kumaraswamy's CDF F(u) = 1 − (1 − u^a)^b with a = 2^crowd_high, b = 2^crowd_low. A positive
    `crowd_high` gathers steps near σ_max, a positive `crowd_low` near σ_min; (0, 0) changes nothing."""
    a, b = 2.0**crowd_high, 2.0**crowd_low
    # 1 − (1 − u^a)^b through expm1/log1p: the plain form rounds steps near either end onto the end
    return [-math.expm1(b * math.log(-math.expm1(a * math.log(u)))) if 0.0 < u < 1.0 else u for u in positions]


def edm_warped_sigma_list(num_steps: int, sigma_min: float, sigma_max: float, time_exponent: float,
                          warp: tuple[float, float] = (0.0, 0.0)) -> list[float]:
    """EDM's grid with its step positions warped (`warp_positions`): a monotone map of [0, 1] onto
    [σ_min, σ_max] whose one-parameter case (no warp) is EDM's, for any number of steps."""
    if warp == (0.0, 0.0) or num_steps < 3:
        return edm_sigma_list(num_steps, sigma_min, sigma_max, time_exponent)
    edm_sigma_list(2, sigma_min, sigma_max, time_exponent)  # checks the grid's arguments
    inv = 1.0 / float(time_exponent)
    top, bottom = float(sigma_max) ** inv, float(sigma_min) ** inv
    positions = warp_positions([i / (num_steps - 1) for i in range(num_steps)], *warp)
    sigmas = [(top + u * (bottom - top)) ** time_exponent for u in positions]
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])):  # a solver divides by log(σ/σ_next)
        raise SolverError(f"the warp {warp} puts two of {num_steps} steps at the same σ; use a milder warp")
    return sigmas + [0.0]


@dataclass(frozen=True)
class TimeSteps:
    """Where a solver's network evaluations fall: EDM's grid (σ_min, σ_max, time exponent), its
    steps optionally moved by a two-parameter warp (`warp`: crowd_high, crowd_low), for any number
    of steps; or an explicit σ list (descending, ending in 0) for one step count.

    An explicit list is used as it is; a grid is clamped to the network's own σ range first (a
    DDPM-style model knows no σ below its smallest training σ), as the search did.
    """

    sigma_min: float = EDM_SIGMA_MIN
    sigma_max: float = EDM_SIGMA_MAX
    time_exponent: float = EDM_TIME_EXPONENT
    sigmas: tuple[float, ...] | None = None
    warp: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.sigmas is not None:
            object.__setattr__(self, "sigmas", tuple(float(v) for v in self.sigmas))
        object.__setattr__(self, "warp", tuple(float(v) for v in self.warp))
        if len(self.warp) != 2 or not all(math.isfinite(v) and abs(v) <= MAX_WARP for v in self.warp):
            raise SolverError(f"the step warp must be two numbers within ±{MAX_WARP:g}, got {self.warp}")

    @property
    def is_default(self) -> bool:
        """EDM's own steps: no list, no warp, EDM's grid parameters."""
        return (self.sigmas is None and self.warp == (0.0, 0.0) and self.time_exponent == EDM_TIME_EXPONENT
                and self.sigma_min == EDM_SIGMA_MIN and self.sigma_max == EDM_SIGMA_MAX)

    def sigma_list(self, num_steps: int, net_range: tuple[float, float] | None = None) -> list[float]:
        if self.sigmas is not None:
            if len(self.sigmas) != num_steps + 1:
                raise SolverError(f"the σ list has {len(self.sigmas)} entries but {num_steps} steps need "
                                  f"{num_steps + 1}; give a list for this NFE or the grid's parameters instead")
            return list(self.sigmas)
        lo, hi = self.sigma_min, self.sigma_max
        if net_range is not None:
            lo, hi = max(lo, net_range[0]), min(hi, net_range[1])
        return edm_warped_sigma_list(num_steps, lo, hi, self.time_exponent, self.warp)

    def agrees_with_grid(self) -> bool:
        """Does the explicit list equal the grid its recorded parameters give (so neither is stale)?"""
        if self.sigmas is None or len(self.sigmas) < 3:
            return True  # a one-step list says nothing about σ_min or the exponent
        grid = edm_warped_sigma_list(len(self.sigmas) - 1, self.sigma_min, self.sigma_max, self.time_exponent,
                                     self.warp)
        return all(math.isclose(a, b, rel_tol=_MATCH, abs_tol=1e-12) for a, b in zip(grid, self.sigmas))
