"""Which finished trials a worker produced: the only ones a study's results may come from.

optuna-dashboard (started with --allow-writes) or any other Optuna client can set a queued or
running trial's user attributes and complete it with any value. A worker, before it tells a trial,
seals it with a system attribute — which those clients cannot write — holding the digest of the
schedule it scored. A trial counts as a result only with a seal that matches its recorded
schedule; studies created before seals existed (no version recorded) are read as they were.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from .attrs import RHO_ATTR, SEAL_ATTR, SIGMA_RANGE_ATTR, TRIAL_SIGMAS_ATTR, VERSION_ATTR

__all__ = ["seal", "is_sealed", "sealing"]


def _digest(rho: Any, sigma_range: Any, sigmas: Any = None) -> str:
    parts: list[Any] = [[float(r) for r in rho], None if sigma_range is None else [float(s) for s in sigma_range]]
    if sigmas is not None:
        parts.append([float(s) for s in sigmas])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def seal(storage: optuna.storages.BaseStorage, trial_id: int, worker: str, rho: Any, sigma_range: Any,
         sigmas: Any = None) -> None:
    """Mark a trial as this worker's result for the schedule (rho, sigma_range) and steps it scored."""
    storage.set_trial_system_attr(trial_id, SEAL_ATTR, {"worker": worker, "digest": _digest(rho, sigma_range, sigmas)})


def sealing(study: optuna.Study | Any) -> bool:
    """Does this study's data carry seals (it was created by a version that writes them)?"""
    attrs = study.user_attrs if hasattr(study, "user_attrs") else {}
    return VERSION_ATTR in attrs


def is_sealed(trial: FrozenTrial, required: bool = True) -> bool:
    """A worker's result: sealed, and its recorded schedule is the one the seal names."""
    if not required:
        return True
    mark = trial.system_attrs.get(SEAL_ATTR)
    if not isinstance(mark, dict) or RHO_ATTR not in trial.user_attrs:
        return False
    return mark.get("digest") == _digest(trial.user_attrs[RHO_ATTR], trial.user_attrs.get(SIGMA_RANGE_ATTR),
                                         trial.user_attrs.get(TRIAL_SIGMAS_ATTR))
