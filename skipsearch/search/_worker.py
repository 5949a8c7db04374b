"""A worker: joins studies in a storage and runs queued trials until none is left.

Workers share nothing but the storage. Each rebuilds the sampler and pruner from the study's
config, verifies it has the same checkpoint and reference (by sha256), and then, trial by trial:
claims a queued trial, keeps it alive with a heartbeat, evaluates it and reports to the storage
through the store's retrying call (a database outage is waited out, not fatal). It never leaves
a trial behind:
- SIGTERM/SIGINT (preemption) fail the running trial with the reason, re-queue it and exit;
- a dead worker's trial is swept (failed and re-queued) by any other worker, also after the
  budget is otherwise spent: a worker waits until nothing is RUNNING, and no failed trial awaits
  its re-queue, before it calls a study done;
- a trial whose samples go non-finite fails with the reason and counts toward the budget.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from sqlalchemy.engine import URL

from ..errors import NonFiniteSamples, StudyError
from ..recipe import SamplingRecipe
from ..schedule import SkipSchedule
from ..scoring import ProxyFID, SampleWatch, finite_guard, score_confirmed, seed_noise
from ..target import Target
from ._config import StudyConfig
from ._confirm import bootstrap_seed, confirm_name, is_confirmation, prepare_confirmation, push_warm_start
from ._notes import update_study_note
from ._objective import Evaluation, Objective, SampleGrid, TrialRun, evaluate
from ._resources import NodePaths, Resources
from ._seal import seal
from ._signals import Interrupted, checkpoint, critical, signals_interrupt
from ._space import SPACES, suggest_params
from ._study import list_studies, load_study, search_done, study_budget, unreadable_studies
from ._trials import Heartbeat, claim, fail, requeue_orphans, sweep
from .attrs import (
    BOOTSTRAP_ATTR,
    CONFIRMS_ATTR,
    DEVICE_ATTR,
    FID_INFINITY_ATTR,
    FID_STEPS_ATTR,
    IMAGES_PER_S_ATTR,
    KIND_ATTR,
    NOISE_ATTR,
    PRECISION_ATTR,
    PROGRESS_ATTR,
    REPORTED_ATTR,
    RHO_ATTR,
    SAMPLES_ATTR,
    SECONDS_ATTR,
    SIGMA_RANGE_ATTR,
    SITES_ATTR,
    SOURCE_ATTR,
    TRIAL_SIGMAS_ATTR,
    WORKER_ATTR,
)
from .storage import StorageSettings, StudyStore

__all__ = ["run_worker", "WorkerOptions", "WorkerReport", "WorkerIdentity"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class WorkerIdentity:
    """Who ran a trial: recorded on every trial so a slow or broken node can be found."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    device: str = "cpu"

    @property
    def label(self) -> str:
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
        device = f"{self.device}(gpu {gpu})" if self.device.startswith("cuda") and gpu else self.device
        return f"{self.host}:{self.pid}:{device}"


@dataclass(frozen=True)
class WorkerOptions:
    """How this worker runs: its device, this node's paths to the studies' files, whether it
    compiles the network's blocks (long GPU searches) or only runs queued confirmations.

    Benchmarks look inside through the rest: the `objective` it runs (a fixed-cost stand-in times
    the rest of the worker), `on_loaded(target, scorer)` once it has a network and its scorer, and
    `around_trial(number)`, a context manager around each trial.
    """

    device: str = "cpu"
    node: NodePaths = field(default_factory=NodePaths)
    compile: bool = False
    confirm_only: bool = False
    objective: Objective = evaluate
    on_loaded: Callable[[Target, ProxyFID], None] | None = None
    around_trial: Callable[[int], AbstractContextManager[Any]] | None = None


@dataclass
class WorkerReport:
    """What this worker did (its own trials only)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    swept: int = 0
    studies: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return sum(self.outcomes.values())


@dataclass
class _Claimed:
    """A claimed trial with what running it needs."""

    study: optuna.Study
    config: StudyConfig
    trial: optuna.Trial
    number: int
    target: Target
    scorer: ProxyFID
    recipe: SamplingRecipe
    schedule: SkipSchedule
    params: dict[str, Any]
    sigmas: list[float]  # the steps it samples on (recorded, and sealed with the schedule)


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in params.items())


class _Worker:
    def __init__(self, store: StudyStore, options: WorkerOptions, log: Log) -> None:
        self.store = store
        self.options = options
        self.identity = WorkerIdentity(device=options.device)
        self.resources = Resources(options.device, options.node, options.compile)
        self.log = log
        self.report = WorkerReport()
        self.confirmations: dict[str, optuna.Study | None] = {}

    @property
    def settings(self) -> StorageSettings:
        return self.store.settings

    # -- studies ---------------------------------------------------------------------------

    def studies(self, names: Sequence[str] | None) -> list[tuple[optuna.Study, StudyConfig]]:
        """The search studies (named, or all), each followed by its confirmation once the search is
        done: the confirmation is queued here, by whichever worker first finds the budget spent."""
        db, confirm_only = self.store, self.options.confirm_only
        names = list(names) if names else [name for name, _ in db(list_studies, db.storage)]
        out = []
        for name in names:
            study, config = db(load_study, db.storage, name)
            if not confirm_only:
                out.append((study, config))
            if not config.confirm_top and not confirm_only:
                continue
            if name not in self.confirmations:
                trials = db(study.get_trials, deepcopy=False)
                if confirm_only:  # queued by `skipsearch confirm`: join what is there
                    try:
                        self.confirmations[name] = optuna.load_study(study_name=confirm_name(name), storage=db.storage)
                    except KeyError:
                        continue
                elif not search_done(trials, study_budget(study, config)):
                    continue
                else:
                    with critical():
                        self.confirmations[name] = db(prepare_confirmation, db, study, config)
            if self.confirmations[name] is not None:
                out.append((self.confirmations[name], config))
        return out

    def sweep(self, study: optuna.Study) -> None:
        # After an outage every worker's heartbeats were blocked alike: give them a grace period
        # to beat again before calling anyone dead.
        if time.monotonic() - self.store.retrying.recovered_at < self.settings.grace_period:
            return
        with critical():
            swept = self.store(sweep, study, self.settings.grace_period, self.settings.max_retry)
        if swept:
            self.report.swept += len(swept)
            self.log(f"{study.study_name}: re-queued trial(s) {', '.join(map(str, swept))} of lost workers")

    def requeue_orphans(self, study: optuna.Study) -> bool:
        """Trials another worker failed but has not (yet) re-queued: wait for them, and re-queue
        those it never will. Read only once nothing is queued or running: the end of a study."""
        # As for the sweep: right after an outage, the failing worker gets its grace period.
        outage = time.monotonic() - self.store.retrying.recovered_at < self.settings.grace_period
        with critical():
            return self.store(requeue_orphans, study, None if outage else self.settings.grace_period,
                              lambda: self.store.lock(f"requeue:{study.study_name}"))

    def _has(self, study: optuna.Study, state: TrialState) -> bool:
        return bool(self.store(study.get_trials, deepcopy=False, states=(state,)))

    # -- one trial -------------------------------------------------------------------------

    def _skip_unreadable(self) -> None:
        """Studies a newer skipsearch wrote are said and skipped; with nothing else to join, refused."""
        db = self.store
        foreign = db(unreadable_studies, db.storage)
        for _, why in foreign:
            self.log(f"skipped: {why}")
        if foreign and not db(list_studies, db.storage):
            raise StudyError(foreign[0][1])

    def run(self, names: Sequence[str] | None) -> WorkerReport:
        if not names:
            self._skip_unreadable()
        while True:
            checkpoint()
            studies = self.studies(names)
            self.report.studies = [s.study_name for s, _ in studies if not is_confirmation(s)]
            waiting_on_others = False
            for study, config in studies:
                self.sweep(study)
                if not self._has(study, TrialState.WAITING):
                    waiting_on_others |= self._has(study, TrialState.RUNNING) or self.requeue_orphans(study)
                    continue
                # Resources are checked before claiming: a node with the wrong checkpoint takes nothing.
                target = self.resources.target(config, study.user_attrs.get(SITES_ATTR))
                scorer = self.resources.scorer(config, target)
                if self.options.on_loaded is not None:
                    self.options.on_loaded(target, scorer)
                with critical():
                    trial_id = self.store(claim, study)
                if trial_id is not None:
                    self.run_trial(study, config, target, scorer, trial_id)
                    break
                waiting_on_others |= self._has(study, TrialState.RUNNING)
            else:
                if not waiting_on_others:
                    return self.report
                time.sleep(min(self.settings.heartbeat_interval, 2.0))

    def run_trial(self, study: optuna.Study, config: StudyConfig, target: Target, scorer: ProxyFID,
                  trial_id: int) -> None:
        space = SPACES.lookup(config.space)
        number = self.store(self.store.storage.get_trial_number_from_id, trial_id)
        confirming = is_confirmation(study)
        if confirming:  # every job's parameters are fixed: nothing to sample, nothing to prune
            study.sampler, study.pruner = optuna.samplers.RandomSampler(seed=number), optuna.pruners.NopPruner()
        else:
            study.sampler = config.make_sampler(number, lambda p: space.vector(p, config, target.sites))
            study.pruner = config.make_pruner()
        around = self.options.around_trial(number) if self.options.around_trial is not None else nullcontext()
        with around, Heartbeat(self.store.storage, trial_id, self.settings.heartbeat_interval, self.log):
            try:
                claimed = self._open(study, config, target, scorer, trial_id, number)
                if confirming:
                    self._confirm(claimed)
                else:
                    self._evaluate(claimed)
            except Interrupted as stop:
                with critical():
                    self.store(fail, study, trial_id, f"interrupted by {stop}", counted=False,
                               max_retry=self.settings.max_retry)
                self.report.outcomes["interrupted"] += 1
                self.log(f"trial {number} interrupted by {stop}: re-queued")
                raise
            except UpdateFinishedTrialError:
                self.report.outcomes["discarded"] += 1
                self.log(f"trial {number} was failed by another worker while this one could not reach the storage; "
                         "its result is discarded (the trial was re-queued)")
            except NonFiniteSamples as bad:
                with critical():
                    self.store(fail, study, trial_id, str(bad), counted=True, max_retry=self.settings.max_retry)
                self.report.outcomes["failed"] += 1
                self.log(f"trial {number} failed: {bad}")

    def _open(self, study: optuna.Study, config: StudyConfig, target: Target, scorer: ProxyFID, trial_id: int,
              number: int) -> _Claimed:
        """A claimed trial with its parameters, the schedule they mean and the recipe to run it with."""
        trial = self.store(optuna.Trial, study, trial_id)
        params = self.store(suggest_params, trial, config, target.sites)
        space = SPACES.lookup(config.space)
        schedule = space.schedule(params, config, target.sites)
        recipe = self.resources.recipe(config, target).with_(steps=space.steps(params, config))
        return _Claimed(study, config, trial, number, target, scorer, recipe, schedule, params, target.sigmas(recipe))

    def _evaluate(self, c: _Claimed) -> None:
        db, config, trial = self.store, c.config, c.trial
        kind = trial.user_attrs.get(KIND_ATTR, "search")
        db(self._set_attrs, trial, {RHO_ATTR: list(c.schedule.rho), TRIAL_SIGMAS_ATTR: c.sigmas,
                                    WORKER_ATTR: self.identity.label,
                                    PRECISION_ATTR: c.recipe.precision,
                                    DEVICE_ATTR: f"{self.identity.host}:{self.identity.device}",
                                    SIGMA_RANGE_ATTR: list(c.schedule.sigma_range) if c.schedule.sigma_range else None})
        grid = SampleGrid()
        stream = c.scorer.stream(config.steps, keep_features=True) if kind == "baseline" else None
        run = TrialRun(config, c.target, c.scorer, c.recipe, c.schedule, on_images=grid,
                       progress=self._progress_writer(trial), stream=stream)
        final = config.steps[-1]
        for n, fid in self.options.objective(run):
            db(trial.report, fid, n)
            if n < final and kind != "baseline" and db(trial.should_prune):  # every result is read against it
                self._finish(c, run.record, grid, None)
                return
        if stream is not None:  # the baseline: how much of any FID difference the draw of seeds alone explains
            db(c.study.set_user_attr, NOISE_ATTR, seed_noise(c.scorer, stream, seed=config.sampler_seed))
        self._finish(c, run.record, grid, run.record.fids[final])

    def _confirm(self, c: _Claimed) -> None:
        """One confirmation job: the schedule on the held-out seeds, with bootstrap replicates."""
        db, trial = self.store, c.trial
        db(self._set_attrs, trial, {WORKER_ATTR: self.identity.label, PRECISION_ATTR: c.recipe.precision,
                                    RHO_ATTR: list(c.schedule.rho),  # what is scored: the job's parameters
                                    TRIAL_SIGMAS_ATTR: c.sigmas,
                                    SIGMA_RANGE_ATTR: list(c.schedule.sigma_range) if c.schedule.sigma_range else None})
        seeds = c.config.confirmation_seeds
        done = [0]
        write_progress = self._progress_writer(trial)

        def progress(n: int, total: int) -> None:
            done[0] = n
            write_progress(n, total)

        start = time.perf_counter()
        parent = c.study.user_attrs[CONFIRMS_ATTR]
        result = score_confirmed(
            c.scorer, c.target.net, seeds, c.recipe, c.schedule,
            bootstrap=(c.config.bootstrap, bootstrap_seed(parent)),
            watch=SampleWatch(on_samples=finite_guard(lambda: seeds[0] + done[0]), progress=progress),
        )
        seconds = time.perf_counter() - start
        db(self._set_attrs, trial, {
            BOOTSTRAP_ATTR: result.bootstrap, FID_STEPS_ATTR: {str(k): v for k, v in result.fid_steps.items()},
            FID_INFINITY_ATTR: result.fid_infinity, SAMPLES_ATTR: result.samples, SECONDS_ATTR: round(seconds, 3),
            REPORTED_ATTR: result.extra,
            IMAGES_PER_S_ATTR: round(result.samples / seconds, 2) if seconds > 0 else None,
        })
        with critical():
            db(self._seal, c)
            frozen = db(c.study.tell, trial, result.value, skip_if_finished=True)
        if frozen.state == TrialState.FAIL:
            raise UpdateFinishedTrialError(f"confirmation {c.number} already failed")
        self.report.outcomes["confirmed"] += 1
        kind = trial.user_attrs.get(KIND_ATTR, "search")
        source = trial.user_attrs.get(SOURCE_ATTR)
        self.log(f"{c.study.study_name}: {kind} (trial {source}) confirmed: FID {result.value:.2f} on "
                 f"{result.samples} held-out samples {seconds:.0f} s")
        with critical():
            warmed = db(push_warm_start, db, parent, c.config)
        for name in warmed:
            self.log(f"{name}: starts from {parent}'s confirmed best (warm start)")

    def _finish(self, c: _Claimed, record: Evaluation, grid: SampleGrid, value: float | None) -> None:
        db, trial = self.store, c.trial
        db(self._set_attrs, trial, {
            FID_STEPS_ATTR: {str(k): v for k, v in record.fids.items()}, SAMPLES_ATTR: record.samples,
            SECONDS_ATTR: round(record.seconds, 3), IMAGES_PER_S_ATTR: round(record.images_per_s or 0.0, 2),
            **({REPORTED_ATTR: record.extra} if record.extra else {}),
        })
        self._upload_grid(trial, grid, c.target, c.config)
        with critical():
            if value is None:
                frozen = db(c.study.tell, trial, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                db(self._seal, c)
                frozen = db(c.study.tell, trial, value, skip_if_finished=True)
        if frozen.state == TrialState.FAIL:
            raise UpdateFinishedTrialError(f"trial {c.number} already failed")
        outcome = "pruned" if value is None else "complete"
        self.report.outcomes[outcome] += 1
        shown = record.fids[max(record.fids)]
        best = self._best(c.study)
        best_text = f" (best {best:.2f})" if best is not None else ""
        self.log(f"trial {c.number} {outcome}: FID {shown:.2f} at {record.samples} samples{best_text} "
                 f"{_params_text(c.params)} {record.seconds:.0f} s")
        if value is not None and best is not None and value <= best:  # the dashboard note changes with the best only
            try:
                update_study_note(c.study)
            except Exception:  # noqa: BLE001 - the dashboard note is cosmetic; a blip must not fail a trial
                pass

    def _best(self, study: optuna.Study) -> float | None:
        done = self.store(study.get_trials, deepcopy=False, states=(TrialState.COMPLETE,))
        return min(t.value for t in done) if done else None

    def _seal(self, c: _Claimed) -> None:
        """This worker's result for the schedule it scored (see _seal): set before the tell, so a
        trial someone else completes first is never sealed."""
        seal(self.store.storage, c.trial._trial_id, self.identity.label, c.schedule.rho, c.schedule.sigma_range,
             c.sigmas)

    @staticmethod
    def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def _progress_writer(self, trial: optuna.Trial) -> Callable[[int, int], None]:
        """Samples done, for live progress in `launch`: best effort, at most every 2 s."""
        last = [0.0]

        def write(done: int, total: int) -> None:
            checkpoint()  # a signal whose raise was swallowed (in a GC callback, say) stops the trial here
            now = time.monotonic()
            if now - last[0] < 2.0 and done < total:
                return
            last[0] = now
            try:
                trial.set_user_attr(PROGRESS_ATTR, done)
            except Exception:  # noqa: BLE001 - cosmetic; the next report or tell will retry for real
                pass

        return write

    def _upload_grid(self, trial: optuna.Trial, grid: SampleGrid, target: Target, config: StudyConfig) -> None:
        folder = Path(self.resources.artifacts(config))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            store = FileSystemArtifactStore(str(folder))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"samples-trial-{trial.number}.png"
                if grid.save(str(path), target.resolution):
                    self.store(upload_artifact, artifact_store=store, file_path=str(path), study_or_trial=trial,
                               mimetype="image/png")
        except OSError as e:
            self.log(f"trial {trial.number}: sample grid not saved ({e.strerror or e}: {folder})")


def run_worker(
    store: StudyStore | str | URL | None,
    study_names: Sequence[str] | None = None,
    options: WorkerOptions = WorkerOptions(),
    log: Log = print,
    settings: StorageSettings | None = None,
) -> WorkerReport:
    """Run queued trials of the named studies (default: every skipsearch study) until none is left.

    `store` is an opened StudyStore, or the URL to open (with `settings`, else the defaults).
    SIGTERM/SIGINT raise `Interrupted` after the running trial was failed and re-queued.
    """
    settings = settings or (store.settings if isinstance(store, StudyStore) else StorageSettings())
    if isinstance(store, StudyStore):
        opened = store.with_settings(settings, log)
    else:  # a worker started while the database restarts (or is full) waits, as in any outage
        opened = StudyStore.open(store, settings, log=log, wait=True)
    if options.device.startswith("cuda"):  # the GPU speed path: TF32 matmuls/convolutions, tuned cuDNN kernels
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    opened.storage.heartbeat_interval = settings.heartbeat_interval  # enables Optuna's stale-trial query
    opened.storage.grace_period = settings.grace_period
    worker = _Worker(opened, options, log)
    with signals_interrupt():
        try:
            return worker.run(study_names)
        except Interrupted as stop:
            what = "the running confirmation" if options.confirm_only else "its running trial"
            raise stop.noted(f"worker stopped by {stop}; {what} was re-queued") from None
