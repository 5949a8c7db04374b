"""Local worker processes: one `python -m skipsearch worker` per device, started, watched, stopped.

Each worker gets the storage URL through its environment, never on a command line where `ps`
would show its password, is pinned to its GPU with CUDA_VISIBLE_DEVICES, and dies with its
launcher (PR_SET_PDEATHSIG), so a killed launch or supervisor orphans nothing. Stopping asks a
worker to hand its running trial back (SIGTERM) and kills only one that does not.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ._signals import Interrupted, signals_interrupt
from .storage import StorageSettings, StudyStore

__all__ = ["WorkerProcess", "worker_devices", "spawn_workers", "stop_workers", "supervise_workers"]


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

    def last_line(self) -> str:
        """The last line of its log: what a failed worker said last."""
        if self.log is None or not self.log.exists():
            return ""
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the launcher dies, however it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawn_workers(
    store: StudyStore | str | None,
    study_names: Sequence[str],
    devices: Sequence[str],
    log_dir: Path | None,
    settings: StorageSettings | None = None,
    extra_args: Sequence[str] = (),
    compile: bool = False,
) -> list[WorkerProcess]:
    """One `python -m skipsearch worker` per device, with `settings` (default: the store's); output
    to `log_dir/worker-N.log`, or (None) to this process's own output, each line prefixed by its GPU."""
    store = StudyStore.of(store)
    settings = settings or store.settings
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    cpu_workers = sum(1 for d in devices if d == "cpu")
    for index, device in enumerate(devices):
        env = dict(os.environ, **store.child_env(), PYTHONUNBUFFERED="1")
        worker_device = device
        if device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1] if ":" in device else "0"
            worker_device = "cuda:0"
        if device == "cpu":  # share the cores: oversubscribed OpenMP threads spin and stall each other
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
        cmd = [sys.executable, "-m", "skipsearch", "worker", "--device", worker_device,
               "--heartbeat", str(settings.heartbeat_interval), "--grace", str(settings.grace_period),
               "--outage-limit", str(settings.outage_limit), "--pool-size", str(settings.pool_size)]
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


def supervise_workers(store: StudyStore, study_names: Sequence[str], devices: Sequence[str],
                      extra_args: Sequence[str] = (), compile: bool = False) -> list[int]:
    """One worker process per device of this node, their output this process's own; a signal
    reaches all of them. Returns their exit codes."""
    procs = spawn_workers(store, study_names, devices, None, extra_args=extra_args, compile=compile)
    with signals_interrupt():
        try:
            return [p.process.wait() for p in procs]
        except Interrupted as stop:
            stop_workers(procs)
            raise stop.noted(f"{stop}: stopped workers; their running trials are re-queued") from None
        finally:
            stop_workers(procs)
