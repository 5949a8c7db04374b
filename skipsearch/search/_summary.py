"""What a study has found so far, read from the storage alone (status, export, launch, dashboard)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ._config import StudyConfig
from ._confirm import Confirmation, summarize_confirmation
from ._seal import is_sealed, sealing
from ._study import list_studies, study_budget
from .attrs import (
    COUNTED_ATTR,
    IMAGES_PER_S_ATTR,
    KIND_ATTR,
    NOISE_ATTR,
    PROGRESS_ATTR,
    REASON_ATTR,
    RHO_ATTR,
    SECONDS_ATTR,
    SIGMA_RANGE_ATTR,
    SIGMAS_ATTR,
    SITE_INFO_ATTR,
    TRIAL_SIGMAS_ATTR,
    WORKER_ATTR,
)

__all__ = ["StudySummary", "RunningTrial", "summarize", "study_summaries"]


@dataclass(frozen=True)
class RunningTrial:
    number: int
    samples_done: int
    samples_total: int
    seconds: float | None
    worker: str | None


@dataclass(frozen=True)
class StudySummary:
    name: str
    config: StudyConfig
    budget: int
    complete: int
    running: int
    pruned: int
    failed: int  # failed for good (counted toward the budget)
    retried: int  # failed with their worker and re-queued
    waiting: int
    baseline: float | None
    best: float | None
    best_trial: int | None
    best_params: dict[str, Any]
    best_rho: list[float] | None
    best_sigma_range: list[float] | None
    images_per_s: float | None
    noise: float | None
    trial_seconds: float | None  # mean wall time of a finished trial
    running_trials: list[RunningTrial] = field(default_factory=list)
    fail_reasons: list[str] = field(default_factory=list)
    confirmation: Confirmation | None = None
    site_info: list[dict[str, Any]] | None = None
    sigmas: list[float] | None = None
    baseline_note: str | None = None  # why there is no baseline FID (None: there is one)
    best_sigmas: list[float] | None = None  # the σ steps the best trial sampled on (its own, in a steps space)

    @property
    def confirmed(self) -> bool:
        """A finished confirmation ranks the schedules from here on, not the search score."""
        return self.confirmation is not None and self.confirmation.done and self.confirmation.best is not None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def done(self) -> bool:
        return self.finished >= self.budget and not self.running and not self.waiting

    @property
    def gain(self) -> float | None:
        """Share of the baseline's FID the best schedule removes (positive is better)."""
        if self.baseline is None or self.best is None or self.baseline == 0:
            return None
        return (self.baseline - self.best) / self.baseline

    @property
    def change(self) -> float | None:
        """Relative FID change of the best schedule against the baseline (negative is better):
        the confirmed one once a confirmation is done, else the search's."""
        if self.confirmed:
            gain = self.confirmation.best.gain  # type: ignore[union-attr]
            return None if gain is None else -gain
        return None if self.gain is None else -self.gain

    @property
    def change_significant(self) -> bool | None:
        """The confirmed gain's interval excludes 0; before confirmation: beyond the seed noise."""
        if self.confirmed:
            return self.confirmation.best.significant  # type: ignore[union-attr]
        return self.significant

    @property
    def significant(self) -> bool | None:
        """Does the best beat the baseline by more than the proxy's seed noise?"""
        if self.baseline is None or self.best is None or self.noise is None:
            return None
        return self.baseline - self.best > self.noise

    def eta_seconds(self) -> float | None:
        """Time to the end of the budget at the current pace and parallelism."""
        if self.trial_seconds is None:
            return None
        left = max(0, self.budget - self.finished)
        workers = max(1, self.running)
        in_flight = sum(max(0.0, (self.trial_seconds or 0) - (r.seconds or 0)) for r in self.running_trials)
        queued = max(0, left - self.running)
        return (queued * self.trial_seconds) / workers + (in_flight / workers if self.running else 0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.name,
            "model": self.config.model_name,
            "solver": self.config.solver,
            "nfe": self.config.nfe,
            "metric": self.config.metric_name,
            "trials": {"complete": self.complete, "running": self.running, "pruned": self.pruned,
                       "failed": self.failed, "retried": self.retried, "waiting": self.waiting,
                       "budget": self.budget},
            "done": self.done,
            "baseline_fid": self.baseline,
            "baseline_note": self.baseline_note,
            "best_fid": self.best,
            "best_trial": self.best_trial,
            "gain": self.gain,
            "noise": self.noise,
            "significant": self.significant,
            "best_params": self.best_params,
            "best_rho": self.best_rho,
            "best_sigma_range": self.best_sigma_range,
            "best_sigmas": self.best_sigmas,
            "images_per_s": self.images_per_s,
            "fail_reasons": self.fail_reasons,
            "confirmation": self.confirmation.to_json() if self.confirmation is not None else None,
        }


def _running(trial: FrozenTrial, config: StudyConfig) -> RunningTrial:
    started = trial.datetime_start
    seconds = (datetime.datetime.now() - started).total_seconds() if started else None
    return RunningTrial(trial.number, int(trial.user_attrs.get(PROGRESS_ATTR, 0)), config.samples, seconds,
                        trial.user_attrs.get(WORKER_ATTR))


def summarize(study: optuna.Study, config: StudyConfig, trials: Sequence[FrozenTrial] | None = None) -> StudySummary:
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    strict = sealing(study)
    complete = [t for t in by_state[TrialState.COMPLETE] if is_sealed(t, strict)]  # workers' results only
    failed = [t for t in by_state[TrialState.FAIL] if t.user_attrs.get(COUNTED_ATTR)]
    baseline = next((t.value for t in complete if t.user_attrs.get(KIND_ATTR) == "baseline"), None)
    note = None if baseline is not None else _missing_baseline([t for t in trials if t.user_attrs.get(KIND_ATTR) == "baseline"])
    best = min(complete, key=lambda t: t.value) if complete else None
    rates = [t.user_attrs[IMAGES_PER_S_ATTR] for t in complete if t.user_attrs.get(IMAGES_PER_S_ATTR)]
    seconds = [t.user_attrs[SECONDS_ATTR] for t in complete if SECONDS_ATTR in t.user_attrs]
    noise = study.user_attrs.get(NOISE_ATTR)
    return StudySummary(
        name=study.study_name,
        config=config,
        budget=study_budget(study, config),
        complete=len(complete),
        running=len(by_state[TrialState.RUNNING]),
        pruned=len(by_state[TrialState.PRUNED]),
        failed=len(failed),
        retried=len(by_state[TrialState.FAIL]) - len(failed),
        waiting=len(by_state[TrialState.WAITING]),
        baseline=baseline,
        best=best.value if best else None,
        best_trial=best.number if best else None,
        best_params=dict(best.params) if best else {},
        best_rho=best.user_attrs.get(RHO_ATTR) if best else None,
        best_sigma_range=best.user_attrs.get(SIGMA_RANGE_ATTR) if best else None,
        best_sigmas=best.user_attrs.get(TRIAL_SIGMAS_ATTR) if best else None,
        images_per_s=sum(rates) / len(rates) if rates else None,
        noise=float(noise) if noise is not None else None,
        trial_seconds=sum(seconds) / len(seconds) if seconds else None,
        running_trials=[_running(t, config) for t in by_state[TrialState.RUNNING]],
        fail_reasons=sorted({str(t.user_attrs.get(REASON_ATTR)) for t in failed if t.user_attrs.get(REASON_ATTR)}),
        confirmation=summarize_confirmation(study._storage, study.study_name, config),
        site_info=study.user_attrs.get(SITE_INFO_ATTR),
        sigmas=study.user_attrs.get(SIGMAS_ATTR),
        baseline_note=note,
    )


def _missing_baseline(trials: Sequence[FrozenTrial]) -> str:
    """Why a study has no baseline FID yet: every change is read against it, so it is said."""
    if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
        return "the baseline (ρ = 1) has not finished yet: FID changes come once it has"
    reasons = sorted({str(t.user_attrs.get(REASON_ATTR)) for t in trials if t.state == TrialState.FAIL})
    if reasons:
        return f"the baseline (ρ = 1) failed ({reasons[-1]}): no FID change can be computed"
    return "the study has no baseline (ρ = 1) result: no FID change can be computed"


def study_summaries(
    storage: BaseStorage,
    *,
    model: str | None = None,
    nfe: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> list[StudySummary]:
    out = []
    for name, config in list_studies(storage):
        if names and name not in names:
            continue
        if model is not None and model not in (config.model_name, config.model):
            continue
        if nfe and config.nfe not in nfe:
            continue
        out.append(summarize(optuna.load_study(study_name=name, storage=storage), config))
    return out
