"""Samplers and pruners, by name, rebuilt the same way by every worker (Optuna stores neither).

Two guards keep workers from repeating each other:
- every trial's sampler is seeded from (study seed, trial number), so proposals never coincide
  because two processes share a seed, and a one-worker run is reproducible for a given `--seed`;
- `DistinctSampler` refuses a proposal whose schedule lies within `min_distance` of a running or
  finished trial's (in units of the search range) and draws another, so no two concurrent trials
  spend a GPU on near-identical schedules.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError
from ..registry import Registry
from .attrs import FIXED_PARAMS



class SamplerSettings(Protocol):
    """What samplers and pruners read of a study's config (StudyConfig has it)."""

    @property
    def trials(self) -> int: ...

    @property
    def steps(self) -> list[int]: ...

    @property
    def sampler(self) -> str: ...

    @property
    def sampler_seed(self) -> int: ...

    @property
    def pruner(self) -> str: ...

__all__ = ["SAMPLERS", "PRUNERS", "DistinctSampler", "make_sampler", "make_pruner", "trial_seed", "startup_trials"]

SamplerFactory = Callable[["SamplerSettings", int], BaseSampler]
PrunerFactory = Callable[["SamplerSettings"], optuna.pruners.BasePruner]


def startup_trials(config: SamplerSettings) -> int:
    """Random trials before the model-based sampler takes over: a quarter of the budget, 4 to 10."""
    return min(10, max(4, config.trials // 4))


SAMPLERS: Registry[SamplerFactory] = Registry("sampler", ConfigError)
SAMPLERS.register(
    "gp",
    lambda c, seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(c), deterministic_objective=True),
)
SAMPLERS.register(
    "tpe",
    lambda c, seed: optuna.samplers.TPESampler(
        seed=seed, multivariate=True, constant_liar=True, n_startup_trials=startup_trials(c)
    ),
)
SAMPLERS.register("random", lambda c, seed: optuna.samplers.RandomSampler(seed=seed))

PRUNERS: Registry[PrunerFactory] = Registry("pruner", ConfigError)
PRUNERS.register(
    "median",
    lambda c: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if len(c.steps) > 1
    else optuna.pruners.NopPruner(),
)
PRUNERS.register("none", lambda c: optuna.pruners.NopPruner())


class _PrunedAsComplete:
    """The study as a sampler that learns from complete trials only (GPSampler) should see it.

    A pruned trial stopped early because it was bad; hidden from the model, the region it probed
    looks unexplored and is proposed again and again. Here it counts as complete, with its last
    reported FID scaled to full fidelity by the median ratio (full / that step) of the complete
    trials. Values are shown as log FID, whose range suits a Gaussian process better than FID's.
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list[FrozenTrial]:
        wanted = tuple(states) if states is not None else tuple(TrialState)
        real = self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache)
        complete = [t for t in real if t.state == TrialState.COMPLETE and t.value is not None]
        out = []
        for t in real:
            if t.state == TrialState.PRUNED and TrialState.COMPLETE in wanted and t.intermediate_values:
                step = max(t.intermediate_values)
                ratios = [c.value / c.intermediate_values[step] for c in complete
                          if c.intermediate_values.get(step, 0) > 0]
                scaled = t.intermediate_values[step] * (float(np.median(ratios)) if ratios else 1.0)
                out.append(self._shown(t, TrialState.COMPLETE, scaled))
            elif t.state in wanted:
                out.append(self._shown(t, t.state, t.value) if t.state == TrialState.COMPLETE else t)
        return out

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @staticmethod
    def _shown(trial: FrozenTrial, state: TrialState, value: float | None) -> FrozenTrial:
        shown = copy.copy(trial)
        shown.state = state
        shown.value = math.log(max(value, 1e-9)) if value is not None else None
        return shown


def trial_seed(base_seed: int, trial_number: int) -> int:
    digest = hashlib.sha256(f"skipsearch/{base_seed}/{trial_number}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


Vector = Callable[[dict[str, Any]], Sequence[float]]


class DistinctSampler(BaseSampler):
    """Wraps a sampler; re-draws a relative proposal that nearly repeats another trial's schedule.

    `vector(params)` maps parameters to what matters (the per-site ρ, scaled to the search range);
    two proposals closer than `min_distance` (max-norm) are the same experiment.
    """

    def __init__(self, base: BaseSampler, vector: Vector, *, seed: int, min_distance: float = 0.02, tries: int = 32,
                 pruned_as_complete: bool = False):
        self.base = base
        self.pruned_as_complete = pruned_as_complete
        self.vector = vector
        self.min_distance = min_distance
        self.tries = tries
        self._rng = np.random.RandomState(seed)
        self.redraws = 0

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        view = _PrunedAsComplete(study) if self.pruned_as_complete else study
        params = self.base.sample_relative(view, trial, search_space)  # type: ignore[arg-type]
        if not params or set(params) != set(search_space) or not self._is_float(search_space):
            return params
        taken = self._taken(study, trial, set(search_space))
        for _ in range(self.tries):
            if not self._near(params, taken):
                return params
            self.redraws += 1
            params = {name: self._uniform(dist) for name, dist in search_space.items()}  # type: ignore[arg-type]
        return params

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng.seed()

    @staticmethod
    def _is_float(space: dict[str, BaseDistribution]) -> bool:
        return all(isinstance(d, FloatDistribution) for d in space.values())

    def _uniform(self, dist: FloatDistribution) -> float:
        if dist.log:
            return float(math.exp(self._rng.uniform(math.log(dist.low), math.log(dist.high))))
        return float(self._rng.uniform(dist.low, dist.high))

    def _taken(self, study: optuna.Study, trial: FrozenTrial, names: set[str]) -> list[np.ndarray]:
        out = []
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number or other.state == TrialState.FAIL:
                continue
            params = other.params or other.system_attrs.get(FIXED_PARAMS) or {}
            if set(params) == names:
                out.append(np.asarray(self.vector(params), dtype=np.float64))
        return out

    def _near(self, params: dict[str, Any], taken: list[np.ndarray]) -> bool:
        mine = np.asarray(self.vector(params), dtype=np.float64)
        return any(np.max(np.abs(mine - v)) < self.min_distance for v in taken)


def make_sampler(config: SamplerSettings, trial_number: int, vector: Vector) -> DistinctSampler:
    seed = trial_seed(config.sampler_seed, trial_number)
    return DistinctSampler(SAMPLERS.lookup(config.sampler)(config, seed), vector, seed=seed,
                           pruned_as_complete=config.sampler == "gp")


def make_pruner(config: SamplerSettings) -> optuna.pruners.BasePruner:
    return PRUNERS.lookup(config.pruner)(config)
