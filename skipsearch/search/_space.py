"""Search spaces: how an Optuna trial's parameters become a SkipSchedule.

Each space is a registered object (`SPACES`), so adding one is one class, not an edit of every
`if space == ...`:
- `linear`: rho_top, rho_bottom, curve (DESIGN.md §3); curve ≪ 0 reaches "outermost skip low,
  the rest ≈ rho_bottom", where the built-in demo's gain lives.
- `stages`: one ρ per resolution stage (rho_stage0 = highest resolution).
- `linear+window`: `linear` plus a σ window [sigma_lo, sigma_hi] (log-uniform) outside which ρ = 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution

from ..schedule import SkipSchedule, SkipSite
from ..errors import ConfigError
from ..registry import Registry



class SpaceBounds(Protocol):
    """What a space reads of a study's config (StudyConfig has it)."""

    @property
    def rho_bounds(self) -> tuple[float, float]: ...

    @property
    def curve_bounds(self) -> tuple[float, float]: ...

    @property
    def sigma_bounds(self) -> tuple[float, float]: ...

    @property
    def space(self) -> str: ...

__all__ = ["Space", "SPACES", "SpaceBounds", "suggest_params", "in_bounds"]


class Space:
    """A parameterisation of skip schedules; subclasses fill in the four methods."""

    name = ""

    def distributions(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, BaseDistribution]:
        raise NotImplementedError

    def schedule(self, params: dict[str, Any], config: SpaceBounds, sites: Sequence[SkipSite]) -> SkipSchedule:
        raise NotImplementedError

    def baseline(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        """The untuned network (ρ = 1 everywhere) in this space's parameters."""
        raise NotImplementedError

    def paper(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        """Skip-Tuning's hand-set point: linear from ρ = 1.0 at the top to 0.8 at the bottom."""
        raise NotImplementedError

    def probes(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> list[dict[str, float]]:
        """Structural probes queued after the baseline and the paper's point: the qualitatively
        different answers the literature and the demo have seen, so the model-based search starts
        from informative corners rather than from random points alone. Only those inside the
        bounds are queued."""
        return []

    def vector(self, params: dict[str, Any], config: SpaceBounds, sites: Sequence[SkipSite]) -> list[float]:
        """What two trials must differ in to be different experiments: per-site ρ (and the σ
        window, log scale), each in units of its search range."""
        schedule = self.schedule(params, config, sites)
        lo, hi = config.rho_bounds
        out = [r / (hi - lo) for r in schedule.rho]
        s_lo, s_hi = config.sigma_bounds
        window = schedule.sigma_range or (s_lo, s_hi)
        span = math.log(s_hi) - math.log(s_lo)
        return out + [math.log(max(w, s_lo)) / span for w in window]


def _rho(config: SpaceBounds) -> FloatDistribution:
    return FloatDistribution(*config.rho_bounds)


class Linear(Space):
    name = "linear"

    def distributions(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, BaseDistribution]:
        return {"rho_top": _rho(config), "rho_bottom": _rho(config), "curve": FloatDistribution(*config.curve_bounds)}

    def schedule(self, params: dict[str, Any], config: SpaceBounds, sites: Sequence[SkipSite]) -> SkipSchedule:
        return SkipSchedule.linear(len(sites), params["rho_top"], params["rho_bottom"], params["curve"])

    def baseline(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        return {"rho_top": 1.0, "rho_bottom": 1.0, "curve": 0.0}

    def paper(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        return {"rho_top": 1.0, "rho_bottom": 0.8, "curve": 0.0}

    def probes(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> list[dict[str, float]]:
        lo, hi = config.rho_bounds
        flat_high = min(hi, 1.1)
        return [
            # only the outermost (full-resolution) skip lowered: where the demo's gain lives
            {"rho_top": max(lo, 0.5), "rho_bottom": min(max(1.0, lo), hi), "curve": config.curve_bounds[0]},
            # every skip slightly strengthened: what helps multistep solvers at few NFE on the demo
            {"rho_top": flat_high, "rho_bottom": flat_high, "curve": 0.0},
        ]


class LinearWindow(Linear):
    name = "linear+window"

    def distributions(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, BaseDistribution]:
        window = FloatDistribution(*config.sigma_bounds, log=True)
        return {**super().distributions(config, sites), "sigma_lo": window, "sigma_hi": window}

    def schedule(self, params: dict[str, Any], config: SpaceBounds, sites: Sequence[SkipSite]) -> SkipSchedule:
        lo, hi = sorted((params["sigma_lo"], params["sigma_hi"]))
        rho = super().schedule(params, config, sites).rho
        return SkipSchedule(rho, (lo, hi) if hi > lo else None)

    def _full_window(self, config: SpaceBounds) -> dict[str, float]:
        return {"sigma_lo": config.sigma_bounds[0], "sigma_hi": config.sigma_bounds[1]}

    def baseline(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        return {**super().baseline(config, sites), **self._full_window(config)}

    def paper(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        return {**super().paper(config, sites), **self._full_window(config)}


class Stages(Space):
    name = "stages"

    @staticmethod
    def _count(sites: Sequence[SkipSite]) -> int:
        return len({s.resolution for s in sites})

    def distributions(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, BaseDistribution]:
        return {f"rho_stage{i}": _rho(config) for i in range(self._count(sites))}

    def schedule(self, params: dict[str, Any], config: SpaceBounds, sites: Sequence[SkipSite]) -> SkipSchedule:
        return SkipSchedule.stages(sites, [params[f"rho_stage{i}"] for i in range(self._count(sites))])

    def baseline(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        return {f"rho_stage{i}": 1.0 for i in range(self._count(sites))}

    def paper(self, config: SpaceBounds, sites: Sequence[SkipSite]) -> dict[str, float]:
        n = self._count(sites)
        return {f"rho_stage{i}": 1.0 - 0.2 * i / max(n - 1, 1) for i in range(n)}


SPACES: Registry[Space] = Registry("search space", ConfigError)
for _space in (Linear(), Stages(), LinearWindow()):
    SPACES.register(_space.name, _space)


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
