"""A trial's life in the shared storage: claimed from the queue, kept alive, failed and re-queued.

Every state change here is a single atomic update in the database (Optuna's row-locked
`set_trial_state_values`), so two workers can race for the same trial and exactly one wins:
- `claim`: WAITING → RUNNING; a worker never creates trials, only claims queued ones.
- `Heartbeat`: a thread that records a heartbeat every interval and outlives database blips
  (a failed beat is retried, never fatal), so a live trial is not mistaken for a dead one.
- `sweep`: RUNNING trials whose heartbeat is older than the grace period, or that never beat at
  all, belong to dead workers: each is failed once and re-queued with the same parameters.
- `fail`: a trial given up (preempted, lost, its schedule failed): re-queued, or counted.
- `requeue_orphans`: failing and re-queuing are two writes; a trial failed for its worker whose
  re-queue never landed (its worker died between them) is re-queued by another, so a study
  never ends a trial short. Until then a worker must not call the study done.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import optuna
import sqlalchemy as sa
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from .attrs import (
    COUNTED_ATTR,
    FIXED_PARAMS,
    KIND_ATTR,
    KINDS,
    REASON_ATTR,
    RETRIES_ATTR,
    RETRY_OF_ATTR,
    RHO_ATTR,
    SEARCH_VALUE_ATTR,
    SIGMA_RANGE_ATTR,
    SOURCE_ATTR,
    WARM_FROM_ATTR,
)

__all__ = ["claim", "Heartbeat", "sweep", "fail", "requeue_orphans", "rdb"]


# Queued trials run in this order, whenever they were queued: a baseline lost with its worker runs
# next, not after every empty slot (where it would be last, and pruned).
_PRIORITY = {kind: rank for rank, kind in enumerate(KINDS)}


def claim(study: optuna.Study) -> int | None:
    """Atomically take the next queued trial (WAITING → RUNNING): the baseline first, then warm
    starts, the paper's point, probes and search slots, each oldest first. Its id, or None."""
    storage = study._storage
    queued = storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,))
    for trial in sorted(queued, key=lambda t: (_PRIORITY.get(t.user_attrs.get(KIND_ATTR), len(KINDS)), t.number)):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return trial._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


class Heartbeat:
    """Records a heartbeat for one trial every `interval` seconds until stopped.

    A beat that fails (database unreachable) is retried at the next tick; the thread never dies of
    it. `last_ok` tells the worker how long the trial has gone without a recorded beat.
    """

    def __init__(self, storage: RDBStorage, trial_id: int, interval: float, log: Callable[[str], None]) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval
        self.log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)
        self.failures = 0

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
            self.failures = 0
        except Exception:  # noqa: BLE001 - an outage must not end the beat; the worker decides
            self.failures += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()


# What a queued trial is (its kind, the warm start or the search trial a confirmation job re-scores
# and that trial's score and schedule): a retry carries all of it, or it would be another trial.
IDENTITY = (KIND_ATTR, WARM_FROM_ATTR, SOURCE_ATTR, SEARCH_VALUE_ATTR, RHO_ATTR, SIGMA_RANGE_ATTR)


def _requeue(study: optuna.Study, failed: FrozenTrial) -> None:
    """Queue a failed trial again with the same parameters and identity, linked to it."""
    params = {**(failed.system_attrs.get(FIXED_PARAMS) or {}), **failed.params}
    attrs = {key: failed.user_attrs[key] for key in IDENTITY if key in failed.user_attrs}
    attrs.setdefault(KIND_ATTR, "search")
    attrs.update({RETRIES_ATTR: int(failed.user_attrs.get(RETRIES_ATTR, 0)) + 1, RETRY_OF_ATTR: failed.number})
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)


def fail(study: optuna.Study, trial_id: int, reason: str, *, counted: bool, max_retry: int) -> bool:
    """Fail a RUNNING trial with `reason`; re-queue it unless `counted` (its schedule, not its
    worker, failed) or it was already re-run `max_retry` times (then it counts, so a schedule that
    kills every worker cannot loop forever).

    Returns False when another worker had already finished or failed it: exactly one caller wins.
    """
    storage = study._storage
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.RUNNING:
        return False
    retries = int(trial.user_attrs.get(RETRIES_ATTR, 0))
    if not counted and retries >= max_retry:
        counted, reason = True, f"{reason}; gave up after {retries} retries"
    try:  # attributes first: a finished trial can no longer take any
        storage.set_trial_user_attr(trial_id, REASON_ATTR, reason)
        if counted:
            storage.set_trial_user_attr(trial_id, COUNTED_ATTR, True)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    if not counted:
        _requeue(study, storage.get_trial(trial_id))
    return True


def rdb(study: optuna.Study) -> RDBStorage:
    """The RDBStorage behind a study (Optuna wraps it in a per-process cache)."""
    storage = getattr(study._storage, "_backend", study._storage)
    assert isinstance(storage, RDBStorage), "skipsearch studies live in an RDB storage"
    return storage


def _running_without_heartbeat(storage: RDBStorage, study_id: int) -> set[int]:
    with storage.engine.connect() as conn:
        beating = {row[0] for row in conn.execute(sa.text("SELECT trial_id FROM trial_heartbeats"))}
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    return {t._trial_id for t in running if t._trial_id not in beating}


def sweep(study: optuna.Study, grace_period: float, max_retry: int) -> list[int]:
    """Fail and re-queue the RUNNING trials of dead workers; returns their numbers.

    Stale: the last heartbeat is older than `grace_period` (database clock). Orphaned: a trial
    never beat and started longer ago than that (its worker died right after claiming it).
    """
    storage = rdb(study)
    stale = set(storage._get_stale_trial_ids(study._study_id))
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace_period)
    for trial_id in _running_without_heartbeat(storage, study._study_id):
        trial = storage.get_trial(trial_id)
        if trial.datetime_start is not None and trial.datetime_start < cutoff:
            stale.add(trial_id)
    swept = []
    for trial_id in sorted(stale):
        number = storage.get_trial_number_from_id(trial_id)
        if fail(study, trial_id, "worker lost (no heartbeat within the grace period)", counted=False,
                max_retry=max_retry):
            swept.append(number)
    return swept


def _orphans(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Failed for their worker (not counted) and never re-queued."""
    retried = {t.user_attrs.get(RETRY_OF_ATTR) for t in trials}
    return [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get(COUNTED_ATTR)
            and t.number not in retried]


def requeue_orphans(study: optuna.Study, settle: float | None,
                    lock: Callable[[], AbstractContextManager[None]]) -> bool:
    """Re-queue trials failed for their worker more than `settle` seconds ago (None: none now) whose
    re-queue never landed; a more recent one is still being re-queued by its worker, and is left to
    it. True while any such trial exists: the caller has work coming and must not stop."""
    orphans = _orphans(study.get_trials(deepcopy=False))
    if settle is None:
        return bool(orphans)
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=settle)
    if any(t.datetime_complete is None or t.datetime_complete < cutoff for t in orphans):
        with lock():  # read again under the lock: two workers re-queue each orphan once between them
            for t in _orphans(study.get_trials(deepcopy=False)):
                if t.datetime_complete is None or t.datetime_complete < cutoff:
                    _requeue(study, t)
    return bool(orphans)
