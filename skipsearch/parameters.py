"""What a search space's parameters mean: ρ per skip site, a σ window, σ steps.

Pure numbers, no torch and no Optuna: the search's spaces (which add distributions, the baseline,
the paper's point and probes), exported families (parameters as functions of NFE) and anything
that reads an export all turn parameters into a schedule with these same functions.

A space's name is its parts joined by `+`: a ρ part (`linear`, `stages`, `linear+window`; none
for `steps`), or `freeu` (FreeU's b1, b2, s1, s2; ρ stays 1), and optionally `steps`, whose
parameters place the solver's evaluations:
- `steps.exponent`: EDM's time exponent (7 is EDM's grid; larger puts more steps at low σ);
- `steps.crowd_high`, `steps.crowd_low`: log2 of a Kumaraswamy warp's exponents, which gather
  steps near σ_max or σ_min (see `steps.warp_positions`); 0 leaves EDM's spacing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ScheduleError
from .schedule import FreeU, linear_rho
from .steps import EDM_TIME_EXPONENT, TimeSteps

__all__ = ["STEP_PARAMS", "FREEU_PARAMS", "RHO_PARTS", "split_space", "rho_from_params", "steps_from_params",
           "freeu_from_params", "default_step_params"]

STEP_PARAMS = ("steps.exponent", "steps.crowd_high", "steps.crowd_low")
FREEU_PARAMS = ("b1", "b2", "s1", "s2")
RHO_PARTS = ("linear", "stages", "linear+window", "freeu")


def split_space(space: str) -> tuple[str | None, bool]:
    """(ρ part or None, whether the steps are searched) of a space's name."""
    searches_steps = space == "steps" or space.endswith("+steps")
    rho_part = None if space == "steps" else space.removesuffix("+steps")
    if rho_part is not None and rho_part not in RHO_PARTS:
        raise ScheduleError(f"unknown search space {space!r}")
    return rho_part, searches_steps


def default_step_params(time_exponent: float = EDM_TIME_EXPONENT) -> dict[str, float]:
    """EDM's own steps, in the steps parameters."""
    return {"steps.exponent": float(time_exponent), "steps.crowd_high": 0.0, "steps.crowd_low": 0.0}


def stage_count(resolutions: Sequence[int | None]) -> int:
    return len(set(resolutions))


def rho_from_params(space: str, params: Mapping[str, Any], resolutions: Sequence[int | None]
                    ) -> tuple[list[float], tuple[float, float] | None]:
    """The per-site ρ (push order) and σ window the parameters give, for sites at `resolutions`."""
    rho_part, _ = split_space(space)
    count = len(resolutions)
    if rho_part is None or rho_part == "freeu":
        return [1.0] * count, None
    if rho_part == "stages":
        if any(r is None for r in resolutions):
            raise ScheduleError("stage schedules need each site's resolution; this network's sites have none")
        by_res = sorted(set(resolutions), reverse=True)  # type: ignore[arg-type]
        per_res = {res: float(params[f"rho_stage{i}"]) for i, res in enumerate(by_res)}
        return [per_res[r] for r in resolutions], None  # type: ignore[index]
    rho = linear_rho(count, float(params["rho_top"]), float(params["rho_bottom"]), float(params["curve"]))
    if rho_part == "linear+window":
        lo, hi = sorted((float(params["sigma_lo"]), float(params["sigma_hi"])))
        return rho, (lo, hi) if hi > lo else None
    return rho, None


def freeu_from_params(space: str, params: Mapping[str, Any]) -> FreeU | None:
    """FreeU's factors in a `freeu` space's parameters (None in any other space)."""
    rho_part, _ = split_space(space)
    if rho_part != "freeu":
        return None
    return FreeU(**{name: float(params[name]) for name in FREEU_PARAMS})


def steps_from_params(space: str, params: Mapping[str, Any], base: TimeSteps = TimeSteps()) -> TimeSteps:
    """The σ steps the parameters give (`base`, the study's grid, when the space does not search them)."""
    _, searches_steps = split_space(space)
    if not searches_steps:
        return base
    return TimeSteps(sigma_min=base.sigma_min, sigma_max=base.sigma_max,
                     time_exponent=float(params["steps.exponent"]),
                     warp=(float(params["steps.crowd_high"]), float(params["steps.crowd_low"])))
