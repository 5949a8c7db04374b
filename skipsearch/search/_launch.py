"""`launch`: validate, create the studies, then run one local worker process per device.

Everything a launch needs (checkpoint, skip sites, features, reference and their dimensions) is
checked before the storage is touched, so a bad launch leaves nothing behind. Workers are
separate `python -m skipsearch worker` processes (one per visible GPU, pinned with
CUDA_VISIBLE_DEVICES, or one on the CPU) that get the storage URL through the environment, never
on a command line where `ps` would show its password. They die with their launcher
(PR_SET_PDEATHSIG), so a killed launch orphans nothing.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL

from ..errors import UsageError
from ..scoring import make_scorer
from ..target import Target, load_target
from ._config import StudyConfig
from ._confirm import warm_points
from ._storage import ENV_VAR, Retrying, StorageSettings, open_storage, resolve_url
from ._study import (
    REASON_ATTR,
    SIGMAS_ATTR,
    SITE_INFO_ATTR,
    Prepared,
    counts_toward_budget,
    load_study,
    prepare_study,
)
from ._summary import StudySummary, summarize

__all__ = [
    "prepare_studies",
    "worker_devices",
    "spawn_workers",
    "watch",
    "stop_workers",
    "WorkerProcess",
    "WatchState",
    "TrialEvent",
    "finished_trial_events",
]


def prepare_studies(
    storage_url: str | URL | None,
    configs: Sequence[StudyConfig],
    settings: StorageSettings = StorageSettings(),
) -> list[Prepared]:
    """Check each config against its network and reference, then create (or extend) its study."""
    url = resolve_url(storage_url)
    targets: dict[str, Target] = {}

    def target_of(source: str) -> Target:
        if source not in targets:
            targets[source] = load_target(source)
            targets[source].check_finite()
        return targets[source]

    ready = []
    for config in configs:
        target = target_of(config.checkpoint)
        overrides: dict[str, object] = {"checkpoint_sha256": target.sha256}
        if config.guide:
            guide = target_of(config.guide)
            if config.tune_guide and len(guide.sites) != len(target.sites):
                raise UsageError(f"--tune-guide needs the guide to have the main network's {len(target.sites)} skip "
                                 f"sites; {config.guide} has {len(guide.sites)}")
            overrides["guide_sha256"] = guide.sha256
        if target.latent or config.vae:
            target.decoder(config.vae)  # the VAE a latent network needs (and only one): found and loadable, before anything is written
        scorer = make_scorer(target.net, config.features, config.reference, features_weights=config.features_weights,
                             report=config.report_features)
        overrides["reference_sha256"] = scorer.reference.sha256
        ready.append((config.with_overrides(**overrides), target))
    storage = open_storage(url, settings, create=True)
    db = Retrying(url, settings)
    prepared = []
    for config, target in ready:
        describe = {SITE_INFO_ATTR: target.site_info(),
                    SIGMAS_ATTR: target.sigmas(config.solver, config.nfe, config.time_exponent)}
        warm = db(warm_points, storage, config)
        prepared.append(db(prepare_study, storage, url, config, target.sites, describe, warm))
    return prepared


def worker_devices(device: str | None = "auto", gpus: str | None = None) -> list[str]:
    """`auto`: one worker per visible GPU (or those listed in `gpus`), else one on the CPU."""
    import torch

    if device not in (None, "auto"):
        if gpus:
            raise UsageError("--gpus goes with --device auto (or cuda); drop --device or --gpus")
        return [device]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus in (None, "all"):
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    try:
        wanted = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise UsageError(f"--gpus takes 'all' or GPU indices like 0,1; got {gpus!r}") from None
    missing = [g for g in wanted if not 0 <= g < count]
    if missing or not wanted:
        raise UsageError(f"--gpus {gpus}: this machine has {count} visible GPU(s)")
    return [f"cuda:{g}" for g in wanted]


@dataclass
class WorkerProcess:
    index: int
    device: str
    process: subprocess.Popen[bytes]
    log: Path | None  # None: its output is its parent's


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, however it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn_workers(
    storage_url: str | URL | None,
    study_names: Sequence[str],
    devices: Sequence[str],
    log_dir: Path | None,
    settings: StorageSettings = StorageSettings(),
    extra_args: Sequence[str] = (),
    compile: bool = False,
) -> list[WorkerProcess]:
    """One `python -m skipsearch worker` per device; output to `log_dir/worker-N.log`, or (None)
    to this process's own output, each line prefixed by the worker's GPU."""
    url = resolve_url(storage_url)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    cpu_workers = sum(1 for d in devices if d == "cpu")
    for index, device in enumerate(devices):
        env = dict(os.environ, **{ENV_VAR: url.render_as_string(hide_password=False)}, PYTHONUNBUFFERED="1")
        worker_device = device
        if device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1] if ":" in device else "0"
            worker_device = "cuda:0"
        if device == "cpu":  # share the cores: oversubscribed OpenMP threads spin and stall each other
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
        cmd = [sys.executable, "-m", "skipsearch", "worker", "--device", worker_device,
               "--heartbeat", str(settings.heartbeat_interval), "--grace", str(settings.grace_period),
               "--outage-limit", str(settings.outage_limit)]
        for name in study_names:
            cmd += ["--study", name]
        cmd += list(extra_args) + (["--compile"] if compile else [])
        if log_dir is None:
            env["SKIPSEARCH_LOG_PREFIX"] = f"[{device}] "
            proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)
            workers.append(WorkerProcess(index, device, proc, None))
            continue
        log = log_dir / f"worker-{index}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        workers.append(WorkerProcess(index, device, proc, log))
    return workers


@dataclass(frozen=True)
class TrialEvent:
    """A trial that finished since the last look."""

    study: str
    number: int
    outcome: str  # complete, pruned, failed
    value: float | None
    best: float | None
    params: dict[str, float]
    seconds: float | None
    samples: int | None
    reason: str | None

    def line(self) -> str:
        if self.outcome == "failed":
            return f"{self.study} trial {self.number} failed: {self.reason or 'no reason recorded'}"
        best = f" (best {self.best:.2f})" if self.best is not None else ""
        params = " ".join(f"{k}={v:.3g}" for k, v in self.params.items())
        seconds = f" {self.seconds:.0f} s" if self.seconds is not None else ""
        at = f" at {self.samples} samples" if self.outcome == "pruned" and self.samples else ""
        value = f"FID {self.value:.2f}{at}" if self.value is not None else "no value"
        return f"{self.study} trial {self.number} {self.outcome}: {value}{best} {params}{seconds}"


@dataclass(frozen=True)
class WatchState:
    summaries: list[StudySummary]
    exit_codes: list[int | None]  # None: still running
    events: list[TrialEvent]
    elapsed: float


def _events(study_name: str, trials: Sequence[FrozenTrial], seen: set[tuple[str, int]]) -> list[TrialEvent]:
    events = []
    best: float | None = None
    for t in sorted(trials, key=lambda t: (t.datetime_complete or datetime.datetime.max, t.number)):
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = t.value if best is None else min(best, t.value)
        if (study_name, t.number) in seen or not counts_toward_budget(t):
            continue
        seen.add((study_name, t.number))
        outcome = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(t.state, "failed")
        value = t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        events.append(TrialEvent(study_name, t.number, outcome, value, best, dict(t.params),
                                 t.user_attrs.get("seconds"), t.user_attrs.get("samples"), t.user_attrs.get(REASON_ATTR)))
    return events


def watch(
    storage_url: str | URL | None,
    names: Sequence[str],
    workers: Sequence[WorkerProcess],
    interval: float = 2.0,
    settings: StorageSettings = StorageSettings(),
    log: Callable[[str], None] | None = None,
) -> Iterator[WatchState]:
    """Every `interval` seconds: the studies' summaries, the workers' exit codes and the trials
    that finished since the last look. Ends once every worker has exited. An unreachable database
    is waited out (and said once through `log`)."""
    url = resolve_url(storage_url)
    db = Retrying(url, settings, log)
    storage = db(open_storage, url, settings)
    seen: set[tuple[str, int]] = set()
    start = time.monotonic()

    def look(name: str) -> tuple[StudySummary, list[TrialEvent]]:
        study, config = load_study(storage, name)
        trials = study.get_trials(deepcopy=False)
        return summarize(study, config, trials), _events(name, trials, seen)

    while True:
        summaries, events = [], []
        for name in names:
            summary, new = db(look, name)
            summaries.append(summary)
            events.extend(new)
        codes = [w.process.poll() for w in workers]
        yield WatchState(summaries, codes, events, time.monotonic() - start)
        if all(code is not None for code in codes):
            return
        _wait_for_exit(workers, interval)


def _wait_for_exit(workers: Sequence[WorkerProcess], seconds: float) -> None:
    """Sleep `seconds`, but wake as soon as the last worker exits (the final table comes at once)."""
    deadline = time.monotonic() + seconds
    for w in workers:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            w.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            return


def finished_trial_events(storage_url: str | URL | None, names: Sequence[str]) -> list[TrialEvent]:
    """Every finished trial of the named studies, oldest first (what a plain log of a launch shows)."""
    storage = open_storage(resolve_url(storage_url))
    seen: set[tuple[str, int]] = set()
    out = []
    for name in names:
        study, _ = load_study(storage, name)
        out.extend(_events(name, study.get_trials(deepcopy=False), seen))
    return out


def stop_workers(workers: Sequence[WorkerProcess], timeout: float = 30.0) -> None:
    """Ask workers to fail and re-queue their running trial and exit; kill those that do not."""
    for w in workers:
        if w.process.poll() is None:
            w.process.terminate()
    deadline = time.monotonic() + timeout
    for w in workers:
        try:
            w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.process.kill()
            w.process.wait()
