"""A worker: joins studies in a storage and runs queued trials until none is left.

Workers share nothing but the storage. Each rebuilds the sampler and pruner from the study's
config, verifies it has the same checkpoint and reference (by sha256), and then, trial by trial:
claims a queued trial, keeps it alive with a heartbeat, evaluates it and reports to the storage
through `Retrying` (a database outage is waited out, not fatal). It never leaves a trial behind:
- SIGTERM/SIGINT (preemption) fail the running trial with the reason, re-queue it and exit;
- a dead worker's trial is swept (failed and re-queued) by any other worker, also after the
  budget is otherwise spent: a worker waits until nothing is RUNNING before it calls a study done;
- a trial whose samples go non-finite fails with the reason and counts toward the budget.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.engine import URL

from .. import SkipSchedule
from ..errors import StudyError
from ..scoring import ProxyFID, make_scorer, score_confirmed, seed_noise
from ..target import Target, load_target, source_sha256
from ._config import StudyConfig
from ._notes import update_study_note
from ._confirm import (
    CONFIRMS_ATTR,
    SOURCE_ATTR,
    bootstrap_seed,
    confirm_name,
    is_confirmation,
    prepare_confirmation,
    push_warm_start,
    search_done,
)
from ._objective import Evaluation, NonFiniteSamples, SampleGrid, evaluate, finite_guard
from ._samplers import make_pruner, make_sampler
from ._space import SPACES, suggest_params
from ._storage import Retrying, StorageSettings, open_storage, resolve_url
from ._study import KIND_ATTR, NOISE_ATTR, SITES_ATTR, list_studies, load_study, study_budget
from ._trials import Heartbeat, claim, fail, sweep

__all__ = ["run_worker", "WorkerReport", "WorkerIdentity", "Interrupted", "signals_interrupt"]

PROGRESS_ATTR = "progress"
Log = Callable[[str], None]


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached the worker (preemption, Ctrl-C): stop the trial, hand it back."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SignalGate:
    """Turns SIGTERM/SIGINT into `Interrupted`, deferred while a storage update must finish whole."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.depth = 0

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.depth:
            self.pending = signum
        else:
            raise Interrupted(signum)

    @contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise Interrupted(signum)


_GATE = _SignalGate()


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM and SIGINT raise `Interrupted`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _GATE.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


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
class _Resources:
    """Networks and scorers loaded once per worker and shared by its studies."""

    device: str
    overrides: dict[str, str | None]
    compile: bool = False
    targets: dict[str, Target] = field(default_factory=dict)
    scorers: dict[tuple[str, str, str], ProxyFID] = field(default_factory=dict)

    def _load(self, source: str, sha256: str, what: str, option: str, study: str) -> Target:
        if source not in self.targets:
            if sha256 and source_sha256(source) != sha256:
                raise StudyError(f"{what} {source} differs from study {study!r}'s (sha256 mismatch); "
                                 f"give this worker the same file with {option}")
            self.targets[source] = load_target(source, self.device)
            if self.compile:
                self.targets[source].compile()
        return self.targets[source]

    def guide(self, config: StudyConfig) -> Target | None:
        source = self.overrides.get("guide") or config.guide
        if not source:
            return None
        return self._load(source, config.guide_sha256, "guiding network", "--guide", config.study_name)

    def target(self, config: StudyConfig, expected_sites: int | None) -> Target:
        source = self.overrides.get("checkpoint") or config.checkpoint
        target = self._load(source, config.checkpoint_sha256, "checkpoint", "--checkpoint", config.study_name)
        if expected_sites is not None and expected_sites != len(target.sites):
            raise StudyError(f"study {config.study_name!r} expects {expected_sites} skip sites, "
                             f"this network has {len(target.sites)}")
        return target

    def scorer(self, config: StudyConfig, target: Target) -> ProxyFID:
        reference = self.overrides.get("reference") or config.reference
        weights = self.overrides.get("features_weights") or config.features_weights
        key = (target.source, config.features, str(reference))
        if key not in self.scorers:
            decode = target.decoder(self.overrides.get("vae") or config.vae, self.device)
            scorer = make_scorer(target.net, config.features, reference, device=self.device, features_weights=weights,
                                 report=config.report_features, decode=decode)
            if config.reference_sha256 and scorer.reference.sha256 != config.reference_sha256:
                raise StudyError(f"reference {reference} differs from study {config.study_name!r}'s (sha256 mismatch); "
                                 "give this worker the same file with --ref")
            self.scorers[key] = scorer
        return self.scorers[key]


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in params.items())


Evaluate = Callable[..., Iterator[tuple[int, float]]]


class _Worker:
    def __init__(self, url: URL, storage: RDBStorage, settings: StorageSettings, identity: WorkerIdentity,
                 resources: _Resources, log: Log, evaluate: Evaluate = evaluate) -> None:
        self.url = url
        self.storage = storage
        self.settings = settings
        self.identity = identity
        self.resources = resources
        self.log = log
        self.db = Retrying(url, settings, log)
        self.report = WorkerReport()
        self.evaluate = evaluate
        self.confirmations: dict[str, optuna.Study | None] = {}
        self.confirm_only = False

    # -- studies ---------------------------------------------------------------------------

    def studies(self, names: Sequence[str] | None) -> list[tuple[optuna.Study, StudyConfig]]:
        """The search studies (named, or all), each followed by its confirmation once the search is
        done: the confirmation is queued here, by whichever worker first finds the budget spent."""
        names = list(names) if names else [name for name, _ in self.db(list_studies, self.storage)]
        out = []
        for name in names:
            study, config = self.db(load_study, self.storage, name)
            if not self.confirm_only:
                out.append((study, config))
            if not config.confirm_top and not self.confirm_only:
                continue
            if name not in self.confirmations:
                trials = self.db(study.get_trials, deepcopy=False)
                if self.confirm_only:  # queued by `skipsearch confirm`: join what is there
                    try:
                        self.confirmations[name] = optuna.load_study(study_name=confirm_name(name), storage=self.storage)
                    except KeyError:
                        continue
                elif not search_done(trials, study_budget(study, config)):
                    continue
                else:
                    with _GATE.critical():
                        self.confirmations[name] = self.db(prepare_confirmation, self.storage, self.url, study, config)
            if self.confirmations[name] is not None:
                out.append((self.confirmations[name], config))
        return out

    def sweep(self, study: optuna.Study) -> None:
        # After an outage every worker's heartbeats were blocked alike: give them a grace period
        # to beat again before calling anyone dead.
        if time.monotonic() - self.db.recovered_at < self.settings.grace_period:
            return
        with _GATE.critical():
            swept = self.db(sweep, study, self.settings.grace_period, self.settings.max_retry)
        if swept:
            self.report.swept += len(swept)
            self.log(f"{study.study_name}: re-queued trial(s) {', '.join(map(str, swept))} of lost workers")

    def has_running(self, study: optuna.Study) -> bool:
        return bool(self.db(study.get_trials, deepcopy=False, states=(TrialState.RUNNING,)))

    def has_queued(self, study: optuna.Study) -> bool:
        return bool(self.db(study.get_trials, deepcopy=False, states=(TrialState.WAITING,)))

    # -- one trial -------------------------------------------------------------------------

    def run(self, names: Sequence[str] | None) -> WorkerReport:
        while True:
            studies = self.studies(names)
            self.report.studies = [s.study_name for s, _ in studies if not is_confirmation(s)]
            waiting_on_others = False
            for study, config in studies:
                self.sweep(study)
                if not self.has_queued(study):
                    waiting_on_others |= self.has_running(study)
                    continue
                # Resources are checked before claiming: a node with the wrong checkpoint takes nothing.
                target = self.resources.target(config, study.user_attrs.get(SITES_ATTR))
                scorer = self.resources.scorer(config, target)
                with _GATE.critical():
                    trial_id = self.db(claim, study)
                if trial_id is not None:
                    self.run_trial(study, config, target, scorer, trial_id)
                    break
                waiting_on_others |= self.has_running(study)
            else:
                if not waiting_on_others:
                    return self.report
                time.sleep(min(self.settings.heartbeat_interval, 2.0))

    def run_trial(self, study: optuna.Study, config: StudyConfig, target: Target, scorer: ProxyFID,
                  trial_id: int) -> None:
        space = SPACES.lookup(config.space)
        number = self.db(self.storage.get_trial_number_from_id, trial_id)
        confirming = is_confirmation(study)
        if confirming:  # every job's parameters are fixed: nothing to sample, nothing to prune
            study.sampler, study.pruner = optuna.samplers.RandomSampler(seed=number), optuna.pruners.NopPruner()
        else:
            study.sampler = make_sampler(config, number, lambda p: space.vector(p, config, target.sites))
            study.pruner = make_pruner(config)
        with Heartbeat(self.storage, trial_id, self.settings.heartbeat_interval, self.log):
            try:
                if confirming:
                    self._confirm(study, config, target, scorer, trial_id, number)
                else:
                    self._evaluate(study, config, target, scorer, trial_id, number)
            except Interrupted as stop:
                with _GATE.critical():
                    self.db(fail, study, trial_id, f"interrupted by {stop}", counted=False,
                            max_retry=self.settings.max_retry)
                self.report.outcomes["interrupted"] += 1
                self.log(f"trial {number} interrupted by {stop}: re-queued")
                raise
            except UpdateFinishedTrialError:
                self.report.outcomes["discarded"] += 1
                self.log(f"trial {number} was failed by another worker while this one could not reach the storage; "
                         "its result is discarded (the trial was re-queued)")
            except NonFiniteSamples as bad:
                with _GATE.critical():
                    self.db(fail, study, trial_id, str(bad), counted=True, max_retry=self.settings.max_retry)
                self.report.outcomes["failed"] += 1
                self.log(f"trial {number} failed: {bad}")

    def _open_trial(self, study: optuna.Study, config: StudyConfig, target: Target,
                    trial_id: int) -> tuple[optuna.Trial, dict[str, Any], SkipSchedule, str]:
        """A claimed trial with its parameters, the schedule they mean and the precision to run it in."""
        trial = self.db(optuna.Trial, study, trial_id)
        params = self.db(suggest_params, trial, config, target.sites)
        schedule = SPACES.lookup(config.space).schedule(params, config, target.sites)
        return trial, params, schedule, target.precision(config.precision, self.resources.device)

    def _evaluate(self, study: optuna.Study, config: StudyConfig, target: Target, scorer: ProxyFID,
                  trial_id: int, number: int) -> None:
        db = self.db
        trial, params, schedule, precision = self._open_trial(study, config, target, trial_id)
        kind = trial.user_attrs.get(KIND_ATTR, "search")
        db(self._set_attrs, trial, {"rho": list(schedule.rho), "worker": self.identity.label, "precision": precision,
                                    "device": f"{self.identity.host}:{self.identity.device}",
                                    "sigma_range": list(schedule.sigma_range) if schedule.sigma_range else None})
        record, grid = Evaluation(), SampleGrid()
        progress = self._progress_writer(trial)
        final = config.steps[-1]
        stream = scorer.stream(config.steps, keep_features=True) if kind == "baseline" else None
        guiding = dict(guide=self.resources.guide(config)) if config.guide else {}
        for n, fid in self.evaluate(config, target, scorer, schedule, precision=precision, record=record,
                                    on_images=grid, progress=progress, **({"stream": stream} if stream else {}),
                                    **guiding):
            db(trial.report, fid, n)
            if n < final and db(trial.should_prune):
                self._finish(study, config, trial, record, grid, target, None, params, number)
                return
        if stream is not None:  # the baseline: how much of any FID difference the draw of seeds alone explains
            db(study.set_user_attr, NOISE_ATTR, seed_noise(scorer, stream, seed=config.sampler_seed))
        self._finish(study, config, trial, record, grid, target, record.fids[final], params, number)

    def _confirm(self, study: optuna.Study, config: StudyConfig, target: Target, scorer: ProxyFID,
                 trial_id: int, number: int) -> None:
        """One confirmation job: the schedule on the held-out seeds, with bootstrap replicates."""
        db = self.db
        trial, params, schedule, precision = self._open_trial(study, config, target, trial_id)
        db(self._set_attrs, trial, {"worker": self.identity.label, "precision": precision})
        seeds = config.confirmation_seeds
        done = [0]
        write_progress = self._progress_writer(trial)

        def progress(n: int, total: int) -> None:
            done[0] = n
            write_progress(n, total)

        start = time.perf_counter()
        guide = self.resources.guide(config)
        result = score_confirmed(
            scorer, target.net, seeds, solver=config.solver, nfe=config.nfe, schedule=schedule,
            guide=guide.net if guide else None, guidance=config.guidance,
            guide_schedule=schedule if config.tune_guide else None,
            resamples=config.bootstrap, bootstrap_seed=bootstrap_seed(study.user_attrs[CONFIRMS_ATTR]),
            batch_size=config.batch_size, precision=precision, time_exponent=config.time_exponent,  # type: ignore[arg-type]
            on_samples=finite_guard(lambda: seeds[0] + done[0]), progress=progress,
        )
        seconds = time.perf_counter() - start
        db(self._set_attrs, trial, {
            "bootstrap": result.bootstrap, "fid_steps": {str(k): v for k, v in result.fid_steps.items()},
            "fid_infinity": result.fid_infinity, "samples": result.samples, "seconds": round(seconds, 3),
            "reported": result.extra,
            "images_per_s": round(result.samples / seconds, 2) if seconds > 0 else None,
        })
        with _GATE.critical():
            frozen = db(study.tell, trial, result.value, skip_if_finished=True)
        if frozen.state == TrialState.FAIL:
            raise UpdateFinishedTrialError(f"confirmation {number} already failed")
        self.report.outcomes["confirmed"] += 1
        kind = trial.user_attrs.get(KIND_ATTR, "search")
        source = trial.user_attrs.get(SOURCE_ATTR)
        self.log(f"{study.study_name}: {kind} (trial {source}) confirmed: FID {result.value:.2f} on "
                 f"{result.samples} held-out samples {seconds:.0f} s")
        parent = study.user_attrs[CONFIRMS_ATTR]
        with _GATE.critical():
            warmed = self.db(push_warm_start, self.storage, self.url, parent, config)
        for name in warmed:
            self.log(f"{name}: starts from {parent}'s confirmed best (warm start)")

    def _finish(self, study: optuna.Study, config: StudyConfig, trial: optuna.Trial, record: Evaluation,
                grid: SampleGrid, target: Target, value: float | None, params: dict[str, Any], number: int) -> None:
        db = self.db
        db(self._set_attrs, trial, {
            "fid_steps": {str(k): v for k, v in record.fids.items()}, "samples": record.samples,
            "seconds": round(record.seconds, 3), "images_per_s": round(record.images_per_s or 0.0, 2),
            **({"reported": record.extra} if record.extra else {}),
        })
        self._upload_grid(trial, grid, target, config)
        with _GATE.critical():
            if value is None:
                frozen = db(study.tell, trial, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                frozen = db(study.tell, trial, value, skip_if_finished=True)
        if frozen.state == TrialState.FAIL:
            raise UpdateFinishedTrialError(f"trial {number} already failed")
        outcome = "pruned" if value is None else "complete"
        self.report.outcomes[outcome] += 1
        shown = record.fids[max(record.fids)]
        best = self._best(study)
        best_text = f" (best {best:.2f})" if best is not None else ""
        self.log(f"trial {number} {outcome}: FID {shown:.2f} at {record.samples} samples{best_text} "
                 f"{_params_text(params)} {record.seconds:.0f} s")
        if value is not None and best is not None and value <= best:  # the dashboard note changes with the best only
            try:
                update_study_note(study)
            except Exception:  # noqa: BLE001 - the dashboard note is cosmetic; a blip must not fail a trial
                pass

    def _best(self, study: optuna.Study) -> float | None:
        done = self.db(study.get_trials, deepcopy=False, states=(TrialState.COMPLETE,))
        return min(t.value for t in done) if done else None

    @staticmethod
    def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)

    def _progress_writer(self, trial: optuna.Trial) -> Callable[[int, int], None]:
        """Samples done, for live progress in `launch`: best effort, at most every 2 s."""
        last = [0.0]

        def write(done: int, total: int) -> None:
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
        folder = Path(self.resources.overrides.get("artifacts") or config.artifacts)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            store = FileSystemArtifactStore(str(folder))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"samples-trial-{trial.number}.png"
                if grid.save(str(path), target.resolution):
                    self.db(upload_artifact, artifact_store=store, file_path=str(path), study_or_trial=trial,
                            mimetype="image/png")
        except OSError as e:
            self.log(f"trial {trial.number}: sample grid not saved ({e.strerror or e}: {folder})")


def run_worker(
    storage_url: str | URL | None,
    study_names: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    overrides: dict[str, str | None] | None = None,
    settings: StorageSettings = StorageSettings(),
    log: Log = print,
    evaluation: Evaluate = evaluate,
    compile: bool = False,
    confirm_only: bool = False,
) -> WorkerReport:
    """Run queued trials of the named studies (default: every skipsearch study) until none is left.

    SIGTERM/SIGINT raise `Interrupted` after the running trial was failed and re-queued.
    `evaluation` replaces the objective (benchmarks time the rest of the worker with a fixed cost);
    `compile` compiles the network's blocks (worth it for long GPU searches; see Target.compile);
    `confirm_only` runs queued confirmation jobs and no search trial.
    """
    url = resolve_url(storage_url)
    storage = open_storage(url, settings)
    if device.startswith("cuda"):  # the GPU speed path: TF32 matmuls/convolutions, tuned cuDNN kernels
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    storage.heartbeat_interval = settings.heartbeat_interval  # enables Optuna's stale-trial query
    storage.grace_period = settings.grace_period
    identity = WorkerIdentity(device=device)
    worker = _Worker(url, storage, settings, identity, _Resources(device, dict(overrides or {}), compile), log,
                     evaluation)
    worker.confirm_only = confirm_only
    with signals_interrupt():
        return worker.run(study_names)

