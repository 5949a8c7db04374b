"""Search spaces: the Optuna distributions of a space's parameters and its fixed points.

What the parameters mean (ρ per site, a σ window, σ steps) is `skipsearch.parameters`, shared with
exported families; here each space adds what a search needs: distributions within the study's
bounds, the baseline (ρ = 1 on EDM's steps), the paper's point and structural probes. A space is a
ρ part and optionally `steps`:
- `linear`: rho_top, rho_bottom, curve (DESIGN.md §3); curve ≪ 0 reaches "outermost skip low,
  the rest ≈ rho_bottom", where the built-in demo's gain lives;
- `stages`: one ρ per resolution stage (rho_stage0 = highest resolution);
- `linear+window`: `linear` plus a σ window [sigma_lo, sigma_hi] (log-uniform) outside which ρ = 1;
- `steps`: the σ steps only (ρ = 1): steps.exponent, steps.crowd_high, steps.crowd_low;
- `linear+steps`, `stages+steps`: both at once, a joint search of skips and steps;
- `freeu`: FreeU's b1, b2 (backbone) and s1, s2 (skip spectrum) on the decoder's two lowest stages,
  with FreeU's published factors for the model as the reference point after the baseline.
Every fixed point of a steps space sits on EDM's default steps, so a joint search always has the
ρ-only answers at the same point to beat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution

from ..errors import ConfigError
from ..parameters import (
    FREEU_PARAMS,
    default_step_params,
    freeu_from_params,
    rho_from_params,
    split_space,
    stage_count,
    steps_from_params,
)
from ..registry import Registry
from ..schedule import SkipSchedule, SkipSite
from ..steps import TimeSteps, warp_positions

__all__ = ["Space", "SPACES", "SpaceBounds", "suggest_params", "in_bounds"]


class SpaceBounds(Protocol):
    """What a space reads of a study's config (StudyConfig has it)."""

    @property
    def rho_bounds(self) -> tuple[float, float]: ...

    @property
    def curve_bounds(self) -> tuple[float, float]: ...

    @property
    def sigma_bounds(self) -> tuple[float, float]: ...

    @property
    def exponent_bounds(self) -> tuple[float, float]: ...

    @property
    def crowd_bounds(self) -> tuple[float, float]: ...

    @property
    def time_exponent(self) -> float: ...

    @property
    def freeu_b_bounds(self) -> tuple[float, float]: ...

    @property
    def freeu_s_bounds(self) -> tuple[float, float]: ...

    @property
    def freeu_reference(self) -> dict[str, float]: ...

    @property
    def space(self) -> str: ...


def _resolutions(sites: Sequence[SkipSite]) -> list[int | None]:
    return [s.resolution for s in sites]


class Space:
    """A ρ part (or none) and, optionally, the σ steps."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rho_part, self.searches_steps = split_space(name)

    # -- distributions ---------------------------------------------------------------------

    def distributions(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, BaseDistribution]:
        rho = FloatDistribution(*config.rho_bounds)
        out: dict[str, BaseDistribution] = {}
        if self.rho_part in ("linear", "linear+window"):
            out.update(rho_top=rho, rho_bottom=rho, curve=FloatDistribution(*config.curve_bounds))
        if self.rho_part == "linear+window":
            window = FloatDistribution(*config.sigma_bounds, log=True)
            out.update(sigma_lo=window, sigma_hi=window)
        if self.rho_part == "stages":
            out.update({f"rho_stage{i}": rho for i in range(stage_count(_resolutions(sites)))})
        if self.rho_part == "freeu":
            b, s = FloatDistribution(*config.freeu_b_bounds), FloatDistribution(*config.freeu_s_bounds)
            out.update(b1=b, b2=b, s1=s, s2=s)
        if self.searches_steps:
            crowd = FloatDistribution(*config.crowd_bounds)
            out.update({"steps.exponent": FloatDistribution(*config.exponent_bounds, log=True),
                        "steps.crowd_high": crowd, "steps.crowd_low": crowd})
        return out

    # -- what parameters mean --------------------------------------------------------------

    def schedule(self, params: dict[str, Any], config: SpaceBounds, sites: Sequence[SkipSite]) -> SkipSchedule:
        rho, window = rho_from_params(self.name, params, _resolutions(sites))
        return SkipSchedule(rho, window, freeu=freeu_from_params(self.name, params))

    def steps(self, params: dict[str, Any], config: SpaceBounds) -> TimeSteps:
        """The σ steps a trial samples on: the study's grid, or the searched one."""
        return steps_from_params(self.name, params, TimeSteps(time_exponent=config.time_exponent))

    # -- fixed points ----------------------------------------------------------------------

    def _with_steps(self, rho_params: dict[str, float], config: SpaceBounds) -> dict[str, float]:
        return {**rho_params, **(default_step_params(config.time_exponent) if self.searches_steps else {})}

    def _identity(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        if self.rho_part == "stages":
            return {f"rho_stage{i}": 1.0 for i in range(stage_count(_resolutions(sites)))}
        if self.rho_part is None:
            return {}
        if self.rho_part == "freeu":
            return {name: 1.0 for name in FREEU_PARAMS}
        out = {"rho_top": 1.0, "rho_bottom": 1.0, "curve": 0.0}
        if self.rho_part == "linear+window":
            out.update(sigma_lo=config.sigma_bounds[0], sigma_hi=config.sigma_bounds[1])
        return out

    def baseline(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        """The untuned network (ρ = 1 everywhere) on EDM's default steps, in this space's parameters."""
        return self._with_steps(self._identity(config, sites), config)

    def paper(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float] | None:
        """Skip-Tuning's hand-set point: linear from ρ = 1.0 at the top to 0.8 at the bottom (on
        EDM's steps); a steps-only space has none."""
        if self.rho_part is None:
            return None
        if self.rho_part == "freeu":  # FreeU's published factors for this model (SD 1.x, 2.x or SDXL)
            return self._with_steps(dict(config.freeu_reference), config)
        if self.rho_part == "stages":
            n = stage_count(_resolutions(sites))
            return self._with_steps({f"rho_stage{i}": 1.0 - 0.2 * i / max(n - 1, 1) for i in range(n)}, config)
        return self._with_steps({**self._identity(config, sites), "rho_bottom": 0.8}, config)

    def probes(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> list[dict[str, float]]:
        """Structural probes queued after the baseline and the paper's point: the qualitatively
        different answers the literature and the demo have seen, so the model-based search starts
        from informative corners rather than from random points alone. Only those inside the
        bounds are queued."""
        if self.rho_part != "linear":
            return []
        lo, hi = config.rho_bounds
        flat_high = min(hi, 1.1)
        return [self._with_steps(p, config) for p in (
            # only the outermost (full-resolution) skip lowered: where the demo's gain lives
            {"rho_top": max(lo, 0.5), "rho_bottom": min(max(1.0, lo), hi), "curve": config.curve_bounds[0]},
            # every skip slightly strengthened: what helps multistep solvers at few NFE on the demo
            {"rho_top": flat_high, "rho_bottom": flat_high, "curve": 0.0},
        )]

    # -- distinctness ----------------------------------------------------------------------

    def vector(self, params: dict[str, Any], config: SpaceBounds, sites: Sequence[SkipSite]) -> list[float]:
        """What two trials must differ in to be different experiments: per-site ρ (and the σ
        window, log scale), each in units of its search range, and where the steps fall."""
        schedule = self.schedule(params, config, sites)
        lo, hi = config.rho_bounds
        out = [r / (hi - lo) for r in schedule.rho]
        s_lo, s_hi = config.sigma_bounds
        window = schedule.sigma_range or (s_lo, s_hi)
        span = math.log(s_hi) - math.log(s_lo)
        out += [math.log(max(w, s_lo)) / span for w in window]
        if schedule.freeu is not None or self.rho_part == "freeu":  # each factor in units of its range
            factors = schedule.freeu.as_kwargs() if schedule.freeu is not None else {n: 1.0 for n in FREEU_PARAMS}
            for name in FREEU_PARAMS:
                lo_f, hi_f = config.freeu_b_bounds if name.startswith("b") else config.freeu_s_bounds
                out.append(factors[name] / (hi_f - lo_f))
        if self.searches_steps:  # step positions on a fixed 9-point grid of u, in units of [0, 1]
            exponent = float(params["steps.exponent"])
            positions = warp_positions([i / 8 for i in range(9)], float(params["steps.crowd_high"]),
                                       float(params["steps.crowd_low"]))
            out += positions + [math.log(exponent) / math.log(max(config.exponent_bounds[1], 2.0))]
        return out


SPACES: Registry[Space] = Registry("search space", ConfigError)
for _name in ("linear", "stages", "linear+window", "steps", "linear+steps", "stages+steps", "freeu"):
    SPACES.register(_name, Space(_name))


def suggest_params(trial: optuna.Trial, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
    params: dict[str, float] = {}
    for name, dist in SPACES.lookup(config.space).distributions(config, sites).items():
        assert isinstance(dist, FloatDistribution)
        params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return params


def in_bounds(params: dict[str, float], config: SpaceBounds, sites: Sequence[SkipSite]) -> bool:
    """Whether a seeded point lies inside the study's search space (else it is not enqueued)."""
    dists = SPACES.lookup(config.space).distributions(config, sites)
    if set(params) != set(dists):
        return False
    return all(isinstance(d, FloatDistribution) and d.low <= params[k] <= d.high for k, d in dists.items())
