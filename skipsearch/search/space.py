"""Search spaces: how an Optuna trial's parameters become a SkipSchedule.

- `linear`: rho_top, rho_bottom, curve (DESIGN.md §3); curve ≪ 0 reaches "outermost skip low,
  the rest ≈ rho_bottom", where the built-in demo's gain lives.
- `stages`: one ρ per resolution stage (rho_stage0 = highest resolution).
- `linear+window`: `linear` plus a σ window [sigma_lo, sigma_hi] (log-uniform) outside which ρ = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna

from ..schedule import SkipSchedule, SkipSite
from .config import StudyConfig

__all__ = ["suggest_params", "schedule_from_params", "baseline_params", "paper_params", "param_distributions"]


def _stage_count(sites: Sequence[SkipSite]) -> int:
    return len({s.resolution for s in sites})


def param_distributions(config: StudyConfig, sites: Sequence[SkipSite]) -> dict[str, optuna.distributions.BaseDistribution]:
    lo, hi = config.rho_bounds
    rho = optuna.distributions.FloatDistribution(lo, hi)
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    if config.space == "stages":
        for i in range(_stage_count(sites)):
            dists[f"rho_stage{i}"] = rho
        return dists
    dists["rho_top"] = rho
    dists["rho_bottom"] = rho
    dists["curve"] = optuna.distributions.FloatDistribution(*config.curve_bounds)
    if config.space == "linear+window":
        s_lo, s_hi = config.sigma_bounds
        dists["sigma_lo"] = optuna.distributions.FloatDistribution(s_lo, s_hi, log=True)
        dists["sigma_hi"] = optuna.distributions.FloatDistribution(s_lo, s_hi, log=True)
    return dists


def suggest_params(trial: optuna.Trial, config: StudyConfig, sites: Sequence[SkipSite]) -> dict[str, float]:
    params: dict[str, float] = {}
    for name, dist in param_distributions(config, sites).items():
        assert isinstance(dist, optuna.distributions.FloatDistribution)
        params[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return params


def schedule_from_params(params: dict[str, Any], config: StudyConfig, sites: Sequence[SkipSite]) -> SkipSchedule:
    k = len(sites)
    if config.space == "stages":
        rho = [params[f"rho_stage{i}"] for i in range(_stage_count(sites))]
        return SkipSchedule.stages(sites, rho)
    window = None
    if config.space == "linear+window":
        lo, hi = sorted((params["sigma_lo"], params["sigma_hi"]))
        window = (lo, hi) if hi > lo else None
    return SkipSchedule.linear(k, params["rho_top"], params["rho_bottom"], params["curve"], sigma_range=window)


def baseline_params(config: StudyConfig, sites: Sequence[SkipSite]) -> dict[str, float]:
    """The untuned network (ρ = 1 everywhere) in this space's parameters."""
    if config.space == "stages":
        return {f"rho_stage{i}": 1.0 for i in range(_stage_count(sites))}
    params = {"rho_top": 1.0, "rho_bottom": 1.0, "curve": 0.0}
    if config.space == "linear+window":
        params.update(sigma_lo=config.sigma_bounds[0], sigma_hi=config.sigma_bounds[1])
    return params


def paper_params(config: StudyConfig, sites: Sequence[SkipSite]) -> dict[str, float]:
    """Skip-Tuning's hand-set point: linear from ρ_top = 1.0 to ρ_bottom = 0.8."""
    if config.space == "stages":
        n = _stage_count(sites)
        return {f"rho_stage{i}": 1.0 - 0.2 * i / max(n - 1, 1) for i in range(n)}
    params = {"rho_top": 1.0, "rho_bottom": 0.8, "curve": 0.0}
    if config.space == "linear+window":
        params.update(sigma_lo=config.sigma_bounds[0], sigma_hi=config.sigma_bounds[1])
    return params
