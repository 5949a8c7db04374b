"""Create, load and describe skipsearch studies in an Optuna storage.

A study's user attributes carry its full config and fingerprint, so a worker needs only the
storage URL (and optionally a name) to join, and a worker with a different config is refused.
Trial 0 is the untuned baseline (ρ = 1) so every result is read against it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from ..schedule import SkipSite
from .config import ConfigError, StudyConfig
from .space import baseline_params, paper_params

__all__ = [
    "create_study",
    "load_study",
    "study_config",
    "list_studies",
    "make_sampler",
    "make_pruner",
    "StudyError",
    "CONFIG_ATTR",
    "FINGERPRINT_ATTR",
]

CONFIG_ATTR = "skipsearch_config"
FINGERPRINT_ATTR = "skipsearch_fingerprint"
SITES_ATTR = "skipsearch_num_skips"
KIND_ATTR = "skipsearch_trial_kind"


class StudyError(ValueError):
    """A study that cannot be created or joined as asked."""


def study_config(study: optuna.Study) -> StudyConfig | None:
    raw = study.user_attrs.get(CONFIG_ATTR)
    return StudyConfig.from_dict(json.loads(raw)) if raw else None


def _check_compatible(existing: StudyConfig, config: StudyConfig, name: str) -> None:
    if existing.fingerprint() != config.fingerprint():
        diffs = existing.differences(config)
        detail = ", ".join(f"{k}: study has {getattr(existing, k)!r}, you gave {getattr(config, k)!r}" for k in diffs[:3])
        raise StudyError(
            f"study {name!r} was created with a different evaluation config ({detail}); "
            "join without overrides, or use another --study name"
        )


def create_study(storage: BaseStorage, config: StudyConfig, sites: Sequence[SkipSite]) -> optuna.Study:
    """Create the study (or load it when it exists with the same config) and enqueue the baseline."""
    study = optuna.create_study(storage=storage, study_name=config.study_name, direction="minimize", load_if_exists=True)
    existing = study_config(study)
    if existing is not None:
        _check_compatible(existing, config, config.study_name)
        return study
    study.set_user_attr(CONFIG_ATTR, json.dumps(config.to_dict(), sort_keys=True))
    study.set_user_attr(FINGERPRINT_ATTR, config.fingerprint())
    study.set_user_attr(SITES_ATTR, len(sites))
    study.enqueue_trial(baseline_params(config, sites), user_attrs={KIND_ATTR: "baseline"}, skip_if_exists=True)
    if config.enqueue_paper:
        study.enqueue_trial(paper_params(config, sites), user_attrs={KIND_ATTR: "paper"}, skip_if_exists=True)
    return study


def load_study(storage: BaseStorage, name: str, config: StudyConfig | None = None) -> tuple[optuna.Study, StudyConfig]:
    """Join an existing study; its stored config is the truth, `config` (if given) must agree."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        raise StudyError(f"no study named {name!r} in this storage; existing: {', '.join(names) or 'none'}") from None
    existing = study_config(study)
    if existing is None:
        raise StudyError(f"study {name!r} was not created by skipsearch (no config in its user attributes)")
    if config is not None:
        _check_compatible(existing, config, name)
    return study, existing


def list_studies(storage: BaseStorage) -> list[tuple[str, StudyConfig]]:
    out = []
    for summary in storage.get_all_studies():
        raw = summary.user_attrs.get(CONFIG_ATTR)
        if raw:
            try:
                out.append((summary.study_name, StudyConfig.from_dict(json.loads(raw))))
            except ConfigError:
                continue
    return out


def budget_states() -> tuple[TrialState, ...]:
    """Trials that count against a study's budget: finished, whether complete or pruned."""
    return (TrialState.COMPLETE, TrialState.PRUNED)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=budget_states()))


def make_sampler(config: StudyConfig, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    """Rebuilt identically by every worker (samplers are not stored); seeds differ per worker."""
    seed = config.sampler_seed + worker_index
    if config.sampler == "gp":
        startup = min(10, max(4, config.trials // 4))
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup, deterministic_objective=True)
    if config.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    if config.pruner == "median" and len(config.steps) > 1:
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class StudySummary:
    name: str
    config: StudyConfig
    complete: int
    running: int
    pruned: int
    failed: int
    waiting: int
    baseline: float | None
    best: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    best_rho: list[float] | None
    best_sigma_range: list[float] | None
    images_per_s: float | None
    noise: float | None

    @property
    def gain(self) -> float | None:
        if self.baseline is None or self.best is None or self.baseline == 0:
            return None
        return (self.baseline - self.best) / self.baseline

    @property
    def significant(self) -> bool | None:
        """Does the best beat the baseline by more than the proxy's seed noise?"""
        if self.baseline is None or self.best is None or self.noise is None:
            return None
        return self.baseline - self.best > self.noise

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.name,
            "model": self.config.model_name,
            "solver": self.config.solver,
            "nfe": self.config.nfe,
            "trials": {"complete": self.complete, "running": self.running, "pruned": self.pruned,
                       "failed": self.failed, "waiting": self.waiting, "budget": self.config.trials},
            "baseline_fid": self.baseline,
            "best_fid": self.best,
            "best_trial": self.best_trial,
            "gain": self.gain,
            "noise": self.noise,
            "significant": self.significant,
            "best_params": self.best_params,
            "best_rho": self.best_rho,
            "best_sigma_range": self.best_sigma_range,
            "images_per_s": self.images_per_s,
        }


NOISE_ATTR = "skipsearch_baseline_noise"


def summarize(study: optuna.Study, config: StudyConfig) -> StudySummary:
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    complete = by_state[TrialState.COMPLETE]
    baseline = next((t.value for t in complete if t.user_attrs.get(KIND_ATTR) == "baseline"), None)
    best = min(complete, key=lambda t: t.value) if complete else None
    rates = [t.user_attrs["images_per_s"] for t in complete if "images_per_s" in t.user_attrs]
    noise = study.user_attrs.get(NOISE_ATTR)
    return StudySummary(
        name=study.study_name,
        config=config,
        complete=len(complete),
        running=len(by_state[TrialState.RUNNING]),
        pruned=len(by_state[TrialState.PRUNED]),
        failed=len(by_state[TrialState.FAIL]),
        waiting=len(by_state[TrialState.WAITING]),
        baseline=baseline,
        best=best.value if best else None,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        best_rho=best.user_attrs.get("rho") if best else None,
        best_sigma_range=best.user_attrs.get("sigma_range") if best else None,
        images_per_s=sum(rates) / len(rates) if rates else None,
        noise=float(noise) if noise is not None else None,
    )
