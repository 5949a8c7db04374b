"""Where a few-step solver's network evaluations fall: σ steps and their parameterisations.

Pure numbers (no torch), so a schedules file that records its steps reads without torch and every
consumer computes exactly the σ list the search sampled on.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .errors import SolverError

__all__ = ["EDM_SIGMA_MIN", "EDM_SIGMA_MAX", "EDM_TIME_EXPONENT", "MAX_NFE", "edm_sigma_list", "TimeSteps"]

MAX_NFE = 1000  # few-step sampling, with room to spare: a larger budget is a mistake, not a setting

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


@dataclass(frozen=True)
class TimeSteps:
    """Where a solver's network evaluations fall: EDM's grid (σ_min, σ_max, time exponent) for any
    number of steps, or an explicit σ list (descending, ending in 0) for one step count.

    An explicit list is used as it is; a grid is clamped to the network's own σ range first (a
    DDPM-style model knows no σ below its smallest training σ), as the search did.
    """

    sigma_min: float = EDM_SIGMA_MIN
    sigma_max: float = EDM_SIGMA_MAX
    time_exponent: float = EDM_TIME_EXPONENT
    sigmas: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.sigmas is not None:
            object.__setattr__(self, "sigmas", tuple(float(v) for v in self.sigmas))

    def sigma_list(self, num_steps: int, net_range: tuple[float, float] | None = None) -> list[float]:
        if self.sigmas is not None:
            if len(self.sigmas) != num_steps + 1:
                raise SolverError(f"the σ list has {len(self.sigmas)} entries but {num_steps} steps need "
                                  f"{num_steps + 1}; give a list for this NFE or the grid's parameters instead")
            return list(self.sigmas)
        lo, hi = self.sigma_min, self.sigma_max
        if net_range is not None:
            lo, hi = max(lo, net_range[0]), min(hi, net_range[1])
        return edm_sigma_list(num_steps, lo, hi, self.time_exponent)

    def agrees_with_grid(self) -> bool:
        """Does the explicit list equal the grid its recorded parameters give (so neither is stale)?"""
        if self.sigmas is None or len(self.sigmas) < 3:
            return True  # a one-step list says nothing about σ_min or the exponent
        grid = edm_sigma_list(len(self.sigmas) - 1, self.sigma_min, self.sigma_max, self.time_exponent)
        return all(math.isclose(a, b, rel_tol=_MATCH, abs_tol=1e-12) for a, b in zip(grid, self.sigmas))


