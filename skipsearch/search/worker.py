"""A worker: joins studies in a storage and runs trials until each study's budget is met.

Workers share nothing but the storage. Each rebuilds the sampler and pruner from the study's
config, verifies it has the same checkpoint and reference (by sha256), and runs `study.optimize`
so Optuna's heartbeats apply: a killed worker's trial is failed and re-queued by the next worker.
SIGTERM and Ctrl-C fail the running trial cleanly instead of leaving it RUNNING.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from optuna.artifacts import FileSystemArtifactStore
from optuna.study import MaxTrialsCallback
from torch import nn

from ..metrics import ReferenceStats
from ..models.builtin import builtin_weights_path
from ..models.loading import BUILTIN_PREFIX, load_network
from ..schedule import SkipSite
from ..scoring import ProxyFID, resolve_metric_defaults
from ..skiptune import skip_sites
from .config import StudyConfig, file_sha256
from .objective import Objective
from .storage import StorageSettings, open_storage, quiet_optuna
from .study import (
    SITES_ATTR,
    StudyError,
    budget_states,
    finished_count,
    list_studies,
    load_study,
    make_pruner,
    make_sampler,
)

__all__ = ["checkpoint_sha256", "Resources", "run_worker", "open_studies", "fail_orphaned_trials"]


def checkpoint_sha256(source: str) -> str:
    if source.startswith(BUILTIN_PREFIX):
        return file_sha256(builtin_weights_path(source[len(BUILTIN_PREFIX):]))
    return file_sha256(source)


@dataclass
class Resources:
    """Networks and scorers loaded once per worker and shared by its studies."""

    device: str = "cpu"
    features_weights: str | None = None
    nets: dict[str, tuple[nn.Module, list[SkipSite]]] = field(default_factory=dict)
    scorers: dict[tuple[str, str], ProxyFID] = field(default_factory=dict)

    def network(self, config: StudyConfig) -> tuple[nn.Module, list[SkipSite]]:
        if config.checkpoint not in self.nets:
            if config.checkpoint_sha256 and checkpoint_sha256(config.checkpoint) != config.checkpoint_sha256:
                raise StudyError(
                    f"checkpoint {config.checkpoint} differs from the study's (sha256 mismatch); "
                    "give this worker the same file with --checkpoint"
                )
            net = load_network(config.checkpoint, device=self.device)
            self.nets[config.checkpoint] = (net, skip_sites(net))
        return self.nets[config.checkpoint]

    def scorer(self, config: StudyConfig, net: nn.Module) -> ProxyFID:
        features, reference = resolve_metric_defaults(net, config.features, config.reference)
        if config.reference_sha256 and reference.sha256 != config.reference_sha256:
            raise StudyError(f"reference {config.reference} differs from the study's (sha256 mismatch)")
        key = (features, reference.sha256)
        if key not in self.scorers:
            weights = self.features_weights or config.features_weights
            self.scorers[key] = ProxyFID(features, reference, device=self.device, weights_path=weights)
        return self.scorers[key]


def reference_sha256(net: nn.Module, config: StudyConfig) -> tuple[str, ReferenceStats]:
    _, reference = resolve_metric_defaults(net, config.features, config.reference)
    return reference.sha256, reference


def open_studies(storage: optuna.storages.BaseStorage, names: list[str] | None) -> list[str]:
    """The named studies, or every skipsearch study whose budget is not yet met."""
    if names:
        return names
    pending = []
    for name, config in list_studies(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        if finished_count(study) < config.trials:
            pending.append(name)
    return pending


def fail_orphaned_trials(study: optuna.Study, storage: RDBStorage, settings: StorageSettings) -> list[int]:
    """Fail (and re-queue) RUNNING trials that never recorded a heartbeat and are older than the grace period.

    Optuna's stale-trial check skips trials without a heartbeat row, so a worker killed between
    asking for a trial and starting its heartbeat thread would leave that trial RUNNING forever.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    with storage.engine.connect() as conn:
        beating = {row[0] for row in conn.execute(sa.text("SELECT trial_id FROM trial_heartbeats"))}
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=settings.grace_period)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry)
    failed = []
    for trial in running:
        if trial._trial_id in beating or trial.datetime_start is None or trial.datetime_start > cutoff:
            continue
        if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            retry(study, storage.get_trial(trial._trial_id))
            failed.append(trial.number)
    return failed


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_worker(
    storage_url: str | None,
    study_names: list[str] | None = None,
    *,
    device: str = "cpu",
    worker_index: int = 0,
    overrides: dict[str, str | None] | None = None,
    settings: StorageSettings = StorageSettings(),
) -> int:
    """Run trials on each study until its budget is met; returns the number of trials this worker ran."""
    quiet_optuna()
    storage = open_storage(storage_url, settings)
    resources = Resources(device=device, features_weights=(overrides or {}).get("features_weights"))
    ran = 0
    for name in open_studies(storage, study_names):
        study, config = load_study(storage, name)
        config = config.with_overrides(**{k: v for k, v in (overrides or {}).items() if k in ("checkpoint", "reference")})
        net, sites = resources.network(config)
        expected_sites = study.user_attrs.get(SITES_ATTR)
        if expected_sites is not None and expected_sites != len(sites):
            raise StudyError(f"study {name!r} expects {expected_sites} skip sites, this network has {len(sites)}")
        scorer = resources.scorer(config, net)
        if finished_count(study) >= config.trials:
            continue
        fail_orphaned_trials(study, storage, settings)
        study.sampler = make_sampler(config, worker_index)
        study.pruner = make_pruner(config)
        store = FileSystemArtifactStore(_artifact_dir(config))
        objective = Objective(config, net, sites, scorer, store, device)
        before = len(study.get_trials(deepcopy=False))
        study.optimize(
            objective,
            callbacks=[MaxTrialsCallback(config.trials, states=budget_states())],
            catch=(),
            gc_after_trial=False,
        )
        ran += len(study.get_trials(deepcopy=False)) - before
    return ran


def _artifact_dir(config: StudyConfig) -> str:
    path = Path(config.artifacts)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def main(argv: list[str] | None = None) -> None:
    """Entry point for worker processes spawned by `skipsearch launch` (storage URL from the environment)."""
    parser = argparse.ArgumentParser(prog="skipsearch-worker")
    parser.add_argument("--study", action="append", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--heartbeat", type=int, default=StorageSettings.heartbeat_interval)
    parser.add_argument("--grace", type=int, default=StorageSettings.grace_period)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    settings = StorageSettings(heartbeat_interval=args.heartbeat, grace_period=args.grace)
    try:
        run_worker(os.environ.get("SKIPSEARCH_STORAGE"), args.study, device=args.device, worker_index=args.index,
                   settings=settings)
    except KeyboardInterrupt:
        sys.exit(130)
    except ValueError as e:  # our user-facing errors are ValueErrors with one-line messages
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
