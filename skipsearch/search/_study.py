"""Create, load and describe skipsearch studies in an Optuna storage.

A study's user attributes carry its full config and fingerprint, so a worker needs only the
storage URL (and optionally a name) to join, and a worker with a different config is refused.

The budget is a queue: creating a study enqueues the baseline (ρ = 1, trial 0), the paper's point
(if inside the search bounds) and one empty slot per remaining trial. Workers only ever claim
queued trials (never create them), so the finished count equals the budget whatever the number of
workers, and a trial lost with its worker is re-queued in its place. Creation and seeding run
under `storage_lock`, so ten concurrent launches still make one study with one baseline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError, StudyError
from ..schedule import SkipSite
from ..version import __version__
from ._config import StudyConfig
from ._space import SPACES, in_bounds
from .attrs import (
    BUDGET_ATTR,
    CONFIG_ATTR,
    COUNTED_ATTR,
    FINGERPRINT_ATTR,
    KIND_ATTR,
    SITES_ATTR,
    VERSION_ATTR,
    WARM_FROM_ATTR,
)
from .storage import StudyStore

__all__ = [
    "Prepared",
    "prepare_study",
    "load_study",
    "study_config",
    "study_budget",
    "list_studies",
    "unreadable_studies",
    "read_config",
    "counts_toward_budget",
    "search_done",
]


def _release(text: Any) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split(".")[:3])
    except ValueError:
        return ()


def read_config(name: str, attrs: dict[str, Any]) -> StudyConfig | None:
    """A study's config from its user attributes (None: not a skipsearch study, or not yet one);
    a study written by a newer skipsearch, or with settings this one does not know, is one line."""
    raw = attrs.get(CONFIG_ATTR)
    if not raw:
        return None
    made_by = attrs.get(VERSION_ATTR)
    if made_by is not None and _release(made_by) > _release(__version__):
        raise StudyError(f"study {name!r} was created by skipsearch {made_by}, newer than this one ({__version__}): "
                         "upgrade skipsearch on this node to read or join it")
    try:
        return StudyConfig.from_dict(json.loads(raw))
    except (ConfigError, ValueError) as e:
        raise StudyError(f"study {name!r} holds settings this skipsearch ({__version__}) cannot read ({e}); it was "
                         f"created by {'skipsearch ' + str(made_by) if made_by else 'another version'}: upgrade "
                         "skipsearch to read or join it") from None


def study_config(study: optuna.Study) -> StudyConfig | None:
    return read_config(study.study_name, study.user_attrs)


def study_budget(study: optuna.Study, config: StudyConfig) -> int:
    return int(study.user_attrs.get(BUDGET_ATTR, config.trials))


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Finished for good: complete, pruned, or failed because of its schedule (not its worker)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(COUNTED_ATTR))


def _check_compatible(existing: StudyConfig, config: StudyConfig, name: str) -> None:
    if existing.fingerprint() != config.fingerprint():
        diffs = existing.differences(config)
        detail = ", ".join(f"{k}: study has {getattr(existing, k)!r}, you gave {getattr(config, k)!r}" for k in diffs[:3])
        raise StudyError(
            f"study {name!r} was created with a different evaluation config ({detail}); "
            "join without overrides, or use another --study name"
        )


@dataclass(frozen=True)
class Prepared:
    study: optuna.Study
    config: StudyConfig
    created: bool
    budget: int
    previous_budget: int | None  # set when this call raised the budget
    complete: bool  # nothing queued or running: the budget is spent
    kept: tuple[tuple[str, Any, Any], ...] = ()  # (setting, the study's, the one given): the study's stay


# Settings that change no score but are the study's own once it exists (the budget is raised with
# --trials; files are this node's paths): a re-launch that gives others is told they are kept.
KEPT_SETTINGS = ("batch_size", "confirm_top", "enqueue_probes", "report_features")


def search_done(trials: Sequence[FrozenTrial], budget: int) -> bool:
    """Nothing queued or running, and the budget spent."""
    active = any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
    return not active and sum(counts_toward_budget(t) for t in trials) >= budget


def _enqueue(study: optuna.Study, params: dict[str, float], kind: str) -> None:
    study.enqueue_trial(params, user_attrs={KIND_ATTR: kind}, skip_if_exists=False)


def _seed(study: optuna.Study, config: StudyConfig, sites: Sequence[SkipSite], budget: int,
          warm: Sequence[tuple[str, dict[str, float]]] = ()) -> None:
    """Enqueue what is missing so that queued + running + finished = budget (idempotent): the
    baseline, the neighbouring NFEs' confirmed best (warm starts), the paper's point, the probes,
    then empty slots for the sampler."""
    trials = study.get_trials(deepcopy=False)
    kinds = {t.user_attrs.get(KIND_ATTR) for t in trials}
    space = SPACES.lookup(config.space)
    live = [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING) or counts_toward_budget(t)]
    missing = budget - len(live)
    if "baseline" not in kinds and missing > 0:
        _enqueue(study, space.baseline(config, sites), "baseline")
        missing -= 1
    warmed = {t.user_attrs.get(WARM_FROM_ATTR) for t in trials}
    for source, params in warm:
        if missing > 0 and source not in warmed and in_bounds(params, config, sites):
            study.enqueue_trial(params, user_attrs={KIND_ATTR: "warm", WARM_FROM_ATTR: source}, skip_if_exists=False)
            missing -= 1
    paper = space.paper(config, sites)
    if (config.enqueue_paper and paper is not None and "paper" not in kinds and missing > 0
            and in_bounds(paper, config, sites)):
        _enqueue(study, paper, "paper")
        missing -= 1
    if config.enqueue_probes and "probe" not in kinds:
        for probe in space.probes(config, sites):
            if missing > 0 and in_bounds(probe, config, sites) and probe != space.baseline(config, sites):
                _enqueue(study, probe, "probe")
                missing -= 1
    for _ in range(max(0, missing)):
        _enqueue(study, {}, "search")


def prepare_study(store: StudyStore, config: StudyConfig, sites: Sequence[SkipSite],
                  describe: dict[str, Any] | None = None,
                  warm: Sequence[tuple[str, dict[str, float]]] = ()) -> Prepared:
    """Create the study (or join it when it exists with the same config) and fill its queue.

    A larger `config.trials` than the study's budget extends it; a smaller one leaves it.
    `describe` (site info, σ steps) is stored with a new study for the export; `warm` are the
    neighbouring NFEs' confirmed best parameters, queued once each after the baseline.
    """
    with store.lock(f"study:{config.study_name}"):
        created, kept = True, ()
        try:
            study = optuna.create_study(storage=store.storage, study_name=config.study_name, direction="minimize")
        except DuplicatedStudyError:
            created = False
            study = optuna.load_study(study_name=config.study_name, storage=store.storage)
        existing = study_config(study)
        previous = None
        if existing is None:
            study.set_user_attr(VERSION_ATTR, __version__)  # before the config: a reader sees no config without it
            study.set_user_attr(CONFIG_ATTR, json.dumps(config.to_dict(), sort_keys=True))
            study.set_user_attr(FINGERPRINT_ATTR, config.fingerprint())
            study.set_user_attr(SITES_ATTR, len(sites))
            study.set_user_attr(BUDGET_ATTR, config.trials)
            for key, value in (describe or {}).items():
                study.set_user_attr(key, value)
            study.set_metric_names([config.metric_name])
            budget = config.trials
        else:
            _check_compatible(existing, config, config.study_name)
            kept = tuple((key, getattr(existing, key), getattr(config, key)) for key in KEPT_SETTINGS
                         if getattr(existing, key) != getattr(config, key))
            budget = study_budget(study, existing)
            if config.trials > budget:
                previous, budget = budget, config.trials
                study.set_user_attr(BUDGET_ATTR, budget)
            config = existing
        _seed(study, config, sites, budget, warm)
        complete = search_done(study.get_trials(deepcopy=False), budget)
    return Prepared(study, config, created, budget, previous, complete, kept)


def load_study(storage: BaseStorage, name: str, wait: float = 10.0) -> tuple[optuna.Study, StudyConfig]:
    """Join an existing study; its stored config is the truth.

    A study another process is creating this instant may not have its config yet: wait briefly.
    """
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        raise StudyError(f"no study named {name!r} in this storage; existing: {', '.join(names) or 'none'}") from None
    deadline = time.monotonic() + wait
    while (config := study_config(study)) is None:
        if time.monotonic() > deadline:
            raise StudyError(f"study {name!r} was not created by skipsearch (no config in its user attributes)")
        time.sleep(0.2)
    return study, config


def list_studies(storage: BaseStorage) -> list[tuple[str, StudyConfig]]:
    """The skipsearch studies this version can read (see `unreadable_studies` for the others)."""
    out = []
    for summary in storage.get_all_studies():
        try:
            config = read_config(summary.study_name, summary.user_attrs)
        except StudyError:
            continue
        if config is not None:
            out.append((summary.study_name, config))
    return out


def unreadable_studies(storage: BaseStorage) -> list[tuple[str, str]]:
    """(name, why) of each skipsearch study this version cannot read: written by a newer one."""
    out = []
    for summary in storage.get_all_studies():
        try:
            read_config(summary.study_name, summary.user_attrs)
        except StudyError as e:
            out.append((summary.study_name, str(e)))
    return out

