"""Confirmation: the best schedules re-scored on held-out seeds, with intervals, before export.

The minimum of many noisy scores is biased low (the winner's curse), so once a study's budget is
spent, its top-k schedules (plus the paper's point and the baseline) are scored again on seeds the
search never saw, with common random numbers across them. The jobs are trials of a companion
study `NAME/confirm`, queued once under the storage lock, so several workers share them exactly
as they share search trials: claimed atomically, kept alive by heartbeats, re-queued when their
worker dies, never scored twice.

Each job keeps B FIDs of one shared set of bootstrap draws over samples; because the draws are
shared, the baseline's and a schedule's replicates are paired and the gain's interval is tight.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ..errors import StudyError
from ..intervals import basic_interval, paired_gain
from ..version import __version__
from ._config import StudyConfig
from ._study import counts_toward_budget, list_studies, load_study, search_done, study_budget
from .attrs import (
    BOOTSTRAP_ATTR,
    CONFIRMS_ATTR,
    FID_INFINITY_ATTR,
    FIXED_PARAMS,
    KIND_ATTR,
    NOISE_ATTR,
    PASSED_OVER_ATTR,
    RHO_ATTR,
    SEARCH_VALUE_ATTR,
    SIGMA_RANGE_ATTR,
    SOURCE_ATTR,
    TRIAL_SIGMAS_ATTR,
    VERSION_ATTR,
    WARM_FROM_ATTR,
)
from ._seal import is_sealed, sealing
from .storage import StudyStore

__all__ = [
    "CONFIRM_SUFFIX",
    "confirm_name",
    "is_confirmation",
    "prepare_confirmation",
    "Confirmation",
    "ConfirmedRow",
    "summarize_confirmation",
    "bootstrap_seed",
    "queue_confirmations",
    "warm_points",
    "push_warm_start",
    "confirmation_pending",
]

CONFIRM_SUFFIX = "/confirm"


def confirm_name(study_name: str) -> str:
    return study_name + CONFIRM_SUFFIX


def is_confirmation(study: optuna.Study) -> bool:
    return CONFIRMS_ATTR in study.user_attrs


def bootstrap_seed(study_name: str) -> int:
    """The draws every job of one confirmation shares (what pairs them)."""
    return int.from_bytes(hashlib.sha256(f"skipsearch-bootstrap/{study_name}".encode()).digest()[:4], "little")


def _key(trial: FrozenTrial) -> tuple[float, ...]:
    return tuple(round(v, 9) for _, v in sorted(trial.params.items()))


def plan(trials: Sequence[FrozenTrial], top: int, sealed: bool = True, noise: float = 0.0) -> list[FrozenTrial]:
    """The baseline, the `top` best distinct complete schedules, and the paper's point: workers'
    results only (`sealed`: the study's trials carry seals). A schedule whose search score is worse
    than the baseline's by more than the seeds' `noise` is not confirmed: that would only confirm
    that it is worse (a study where nothing beats the baseline confirms the baseline and the paper's
    point, and says so)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and is_sealed(t, sealed)]
    baseline = [t for t in complete if t.user_attrs.get(KIND_ATTR) == "baseline"][:1]
    ceiling = baseline[0].value + noise if baseline else float("inf")
    chosen: list[FrozenTrial] = []
    seen = {_key(t) for t in baseline}
    for t in sorted(complete, key=lambda t: (t.value, t.number)):
        if len(chosen) == top or t.value > ceiling:
            break
        if _key(t) not in seen:
            chosen.append(t)
            seen.add(_key(t))
    paper = [t for t in complete if t.user_attrs.get(KIND_ATTR) == "paper" and _key(t) not in seen][:1]
    return baseline + chosen + paper


def _plan(study: optuna.Study, top: int) -> tuple[list[FrozenTrial], int]:
    """The jobs, and how many of the top `top` were passed over as worse than the baseline."""
    trials, sealed, noise = study.get_trials(deepcopy=False), sealing(study), study.user_attrs.get(NOISE_ATTR)
    jobs = plan(trials, top, sealed, float(noise) if noise is not None else 0.0)
    return jobs, len(plan(trials, top, sealed, float("inf"))) - len(jobs)


def prepare_confirmation(store: StudyStore, study: optuna.Study, config: StudyConfig) -> optuna.Study | None:
    """Create `NAME/confirm` and queue its jobs, once, whatever the number of workers asking.
    None when there is nothing to confirm (no trial completed)."""
    name = confirm_name(study.study_name)
    jobs, passed_over = _plan(study, config.confirm_top)
    if not jobs:
        return None
    with store.lock(f"confirm:{study.study_name}"):
        try:
            confirm = optuna.create_study(storage=store.storage, study_name=name, direction="minimize")
            confirm.set_user_attr(VERSION_ATTR, __version__)
            confirm.set_user_attr(CONFIRMS_ATTR, study.study_name)
            seeds = config.confirmation_seeds
            confirm.set_metric_names([f"proxy FID ({len(seeds)} held-out samples)"])
        except DuplicatedStudyError:
            confirm = optuna.load_study(study_name=name, storage=store.storage)
        confirm.set_user_attr(PASSED_OVER_ATTR, passed_over)
        queued = {t.user_attrs.get(SOURCE_ATTR) for t in confirm.get_trials(deepcopy=False)}
        for source in jobs:
            if source.number in queued:
                continue
            attrs = {KIND_ATTR: source.user_attrs.get(KIND_ATTR, "search"), SOURCE_ATTR: source.number,
                     SEARCH_VALUE_ATTR: source.value, RHO_ATTR: source.user_attrs.get(RHO_ATTR),
                     SIGMA_RANGE_ATTR: source.user_attrs.get(SIGMA_RANGE_ATTR)}
            confirm.enqueue_trial(dict(source.params), user_attrs=attrs, skip_if_exists=False)
    return confirm


@dataclass(frozen=True)
class ConfirmedRow:
    source_trial: int
    kind: str
    params: dict[str, float]
    rho: list[float] | None
    sigma_range: list[float] | None
    search_value: float | None
    value: float
    interval: tuple[float, float]
    fid_infinity: float | None
    gain: float | None = None  # share of the baseline's FID removed (positive is better)
    gain_interval: tuple[float, float] | None = None
    sigmas: list[float] | None = None  # the σ steps it sampled on

    @property
    def significant(self) -> bool | None:
        """Does the gain's 95% interval exclude 0?"""
        if self.gain_interval is None:
            return None
        return self.gain_interval[0] > 0 or self.gain_interval[1] < 0


@dataclass(frozen=True)
class Confirmation:
    """A study's confirmation as far as it has run."""

    study: str
    seeds: tuple[int, int]  # first and last held-out seed
    samples: int
    resamples: int
    jobs: int
    rows: list[ConfirmedRow] = field(default_factory=list)
    settled: bool = False  # every job finished (a job can fail for good: non-finite samples)
    running: int = 0  # jobs a worker is running now
    passed_over: int = 0  # of the top k, schedules not confirmed: worse than the baseline beyond its noise

    @property
    def done(self) -> bool:
        return self.jobs > 0 and self.settled

    @property
    def state(self) -> str:
        """What is happening to it, in words that are true: nothing is "running" that no worker runs."""
        if self.done:
            return "done"
        progress = f"{len(self.rows)}/{self.jobs} done"
        if self.running:
            return f"running, {progress}"
        return f"waiting for a worker, {progress}: `skipsearch launch` or `skipsearch worker` finishes it"

    @property
    def baseline(self) -> ConfirmedRow | None:
        return next((r for r in self.rows if r.kind == "baseline"), None)

    @property
    def best(self) -> ConfirmedRow | None:
        """The best schedule by its confirmed score (the baseline is the yardstick, not a candidate)."""
        candidates = [r for r in self.rows if r.kind != "baseline"]
        return min(candidates, key=lambda r: r.value) if candidates else None

    def to_json(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds), "samples": self.samples, "resamples": self.resamples, "done": self.done,
            "state": self.state, "passed_over": self.passed_over,
            "rows": [{"trial": r.source_trial, "kind": r.kind, "search_value": r.search_value, "value": r.value,
                      "interval": list(r.interval), "fid_infinity": r.fid_infinity, "gain": r.gain,
                      "gain_interval": list(r.gain_interval) if r.gain_interval else None,
                      "significant": r.significant} for r in self.rows],
        }


def summarize_confirmation(storage: BaseStorage, study_name: str, config: StudyConfig) -> Confirmation | None:
    """The confirmation of `study_name`, or None when none was queued."""
    try:
        confirm = optuna.load_study(study_name=confirm_name(study_name), storage=storage)
    except KeyError:
        return None
    trials = confirm.get_trials(deepcopy=False)
    seeds = config.confirmation_seeds
    strict = sealing(confirm)
    done = [t for t in trials if t.state == TrialState.COMPLETE and BOOTSTRAP_ATTR in t.user_attrs
            and is_sealed(t, strict)]
    base = next((t for t in done if t.user_attrs.get(KIND_ATTR) == "baseline"), None)
    rows = []
    for t in sorted(done, key=lambda t: t.value):
        reps = t.user_attrs[BOOTSTRAP_ATTR]
        gain = gain_interval = None
        if base is not None and t is not base:
            gain, gain_interval = paired_gain(base.value, base.user_attrs[BOOTSTRAP_ATTR], t.value, reps)
        rows.append(ConfirmedRow(
            source_trial=int(t.user_attrs.get(SOURCE_ATTR, -1)), kind=str(t.user_attrs.get(KIND_ATTR, "search")),
            params=dict(t.params), rho=t.user_attrs.get(RHO_ATTR), sigma_range=t.user_attrs.get(SIGMA_RANGE_ATTR),
            search_value=t.user_attrs.get(SEARCH_VALUE_ATTR), value=float(t.value), interval=basic_interval(t.value, reps),
            fid_infinity=t.user_attrs.get(FID_INFINITY_ATTR), gain=gain, gain_interval=gain_interval,
            sigmas=t.user_attrs.get(TRIAL_SIGMAS_ATTR),
        ))
    sources = {t.user_attrs.get(SOURCE_ATTR) for t in trials}
    settled = {t.user_attrs.get(SOURCE_ATTR) for t in trials if counts_toward_budget(t)}
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return Confirmation(study_name, (seeds.start, seeds.stop - 1), len(seeds), config.bootstrap, len(sources), rows,
                        settled >= sources, running, int(confirm.user_attrs.get(PASSED_OVER_ATTR, 0)))


def confirmation_pending(storage: BaseStorage, study: optuna.Study, config: StudyConfig) -> bool:
    """A study whose search is done still has work for a worker: its confirmation is not queued yet
    (and has something to confirm), or not settled."""
    if not config.confirm_top:
        return False
    summary = summarize_confirmation(storage, study.study_name, config)
    if summary is None:
        return bool(_plan(study, config.confirm_top)[0])
    return not summary.done


def queue_confirmations(store: StudyStore, names: Sequence[str] | None, *, top: int | None = None,
                        now: bool = False) -> list[str]:
    """Queue the confirmation of the named studies (default: all), on demand. A study still searching
    is refused unless `now` (then its current best are confirmed); `top` confirms more (or fewer)
    than the study's setting. Returns the studies whose confirmation is queued or done."""
    wanted = list(names) if names else [name for name, _ in list_studies(store.storage)]
    out = []
    for name in wanted:
        study, config = load_study(store.storage, name)
        trials = study.get_trials(deepcopy=False)
        if not now and not search_done(trials, study_budget(study, config)):
            finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
            raise StudyError(f"study {name!r} is still searching ({finished}/{study_budget(study, config)} trials); "
                             "its workers confirm it when the budget is spent, or confirm its current best with --now")
        if top is not None:
            config = config.with_overrides(confirm_top=top)
        if prepare_confirmation(store, study, config) is not None:
            out.append(name)
    return out


# ---------------------------------------------------------------------------------------------
# Warm starts across NFE


def neighbours(storage: BaseStorage, config: StudyConfig) -> list[tuple[str, StudyConfig]]:
    """The studies of the same model, solver and space at the nearest lower and higher NFE."""
    siblings = [(name, c) for name, c in list_studies(storage)
                if c.model_name == config.model_name and c.solver == config.solver and c.space == config.space
                and c.nfe != config.nfe]
    lower = [s for s in siblings if s[1].nfe < config.nfe]
    higher = [s for s in siblings if s[1].nfe > config.nfe]
    return ([max(lower, key=lambda s: s[1].nfe)] if lower else []) + ([min(higher, key=lambda s: s[1].nfe)] if higher else [])


def warm_points(storage: BaseStorage, config: StudyConfig) -> list[tuple[str, dict[str, float]]]:
    """(neighbour study, its confirmed best parameters) for each neighbour with a finished confirmation."""
    out = []
    for name, sibling in neighbours(storage, config):
        confirmation = summarize_confirmation(storage, name, sibling)
        if confirmation is not None and confirmation.done and confirmation.best is not None:
            out.append((name, dict(confirmation.best.params)))
    return out


def push_warm_start(store: StudyStore, study_name: str, config: StudyConfig) -> list[str]:
    """A confirmation just finished: hand its best to neighbours still searching, in place of one of
    their empty queued slots (once per neighbour). Returns the studies that took it."""
    storage = store.storage
    confirmation = summarize_confirmation(storage, study_name, config)
    if confirmation is None or not confirmation.done or confirmation.best is None:
        return []
    params = dict(confirmation.best.params)
    taken = []
    for name, _ in neighbours(storage, config):
        with store.lock(f"study:{name}"):
            study = optuna.load_study(study_name=name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            if any(t.user_attrs.get(WARM_FROM_ATTR) == study_name for t in trials):
                continue
            empty = [t for t in trials if t.state == TrialState.WAITING and not t.system_attrs.get(FIXED_PARAMS)]
            for slot in empty:  # take it from the queue, fill it in, put it back: nobody claims it meanwhile
                if not storage.set_trial_state_values(slot._trial_id, state=TrialState.RUNNING):
                    continue
                storage.set_trial_system_attr(slot._trial_id, FIXED_PARAMS, params)
                storage.set_trial_user_attr(slot._trial_id, KIND_ATTR, "warm")
                storage.set_trial_user_attr(slot._trial_id, WARM_FROM_ATTR, study_name)
                storage.set_trial_state_values(slot._trial_id, state=TrialState.WAITING)
                taken.append(name)
                break
    return taken
