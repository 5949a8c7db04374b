"""`skipsearch launch`: create the studies, then run one local worker process per device.

Workers are separate processes (one per visible CUDA device, pinned with CUDA_VISIBLE_DEVICES,
or one on CPU) that receive the storage URL through the environment — never on a command line,
where `ps` would show its password. The launcher only watches the storage and draws progress.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from ..models.loading import load_network
from ..skiptune import skip_sites
from .config import StudyConfig
from .storage import ENV_VAR, StorageSettings, open_storage, quiet_optuna, resolve_url
from .study import StudySummary, create_study, summarize
from .worker import checkpoint_sha256, reference_sha256

__all__ = ["prepare_studies", "worker_devices", "spawn_workers", "watch", "WorkerProcess"]


def prepare_studies(storage_url: str | None, configs: Sequence[StudyConfig]) -> list[StudyConfig]:
    """Fill in content hashes and create each study once (workers then only load)."""
    quiet_optuna()
    storage = open_storage(storage_url)
    done: list[StudyConfig] = []
    nets: dict[str, tuple] = {}
    for config in configs:
        if config.checkpoint not in nets:
            net = load_network(config.checkpoint)
            nets[config.checkpoint] = (net, skip_sites(net), checkpoint_sha256(config.checkpoint))
        net, sites, sha = nets[config.checkpoint]
        ref_sha, _ = reference_sha256(net, config)
        config = config.with_overrides(checkpoint_sha256=sha, reference_sha256=ref_sha)
        create_study(storage, config, sites)
        done.append(config)
    return done


def worker_devices(device: str | None = None) -> list[str]:
    """Explicit device, else one per visible CUDA device, else the CPU."""
    if device:
        return [device]
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


@dataclass
class WorkerProcess:
    index: int
    device: str
    process: subprocess.Popen
    log: Path


def spawn_workers(
    storage_url: str | None,
    study_names: Sequence[str],
    devices: Sequence[str],
    log_dir: Path,
    settings: StorageSettings = StorageSettings(),
) -> list[WorkerProcess]:
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    cpu_workers = sum(1 for d in devices if d == "cpu")
    for index, device in enumerate(devices):
        env = dict(os.environ, **{ENV_VAR: resolve_url(storage_url)})
        worker_device = device
        if device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1] if ":" in device else "0"
            worker_device = "cuda:0"
        if device == "cpu":  # share the cores: oversubscribed OpenMP threads spin and stall each other
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
        cmd = [sys.executable, "-m", "skipsearch.search.worker", "--device", worker_device, "--index", str(index),
               "--heartbeat", str(settings.heartbeat_interval), "--grace", str(settings.grace_period)]
        for name in study_names:
            cmd += ["--study", name]
        log = log_dir / f"worker-{index}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=False)
        workers.append(WorkerProcess(index, device, proc, log))
    return workers


def watch(
    storage_url: str | None,
    configs: Sequence[StudyConfig],
    workers: Sequence[WorkerProcess],
    draw: Callable[[list[StudySummary], float], None],
    interval: float = 2.0,
) -> list[int]:
    """Redraw progress until every worker exits; returns their exit codes."""
    storage = open_storage(storage_url)
    start = time.time()
    while True:
        summaries = [summarize(optuna.load_study(study_name=c.study_name, storage=storage), c) for c in configs]
        draw(summaries, time.time() - start)
        codes = [w.process.poll() for w in workers]
        if all(code is not None for code in codes):
            return [int(c) for c in codes]  # type: ignore[arg-type]
        time.sleep(interval)


def stop_workers(workers: Sequence[WorkerProcess], timeout: float = 30.0) -> None:
    """Ask workers to fail their running trial and exit; kill those that do not."""
    for w in workers:
        if w.process.poll() is None:
            w.process.terminate()
    deadline = time.time() + timeout
    for w in workers:
        try:
            w.process.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            w.process.kill()
