"""Shared test tools: tiny study configs, waiting on conditions, a PostgreSQL server of our own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from skipsearch.search import StorageSettings, StudyConfig
from skipsearch.search.storage import open_storage


def tiny_config(checkpoint: Path, tmp_path: Path, **overrides: Any) -> StudyConfig:
    """A study on the 8×8 test network: a trial takes a second or two on one core. No confirmation
    unless asked for (tests of the confirmation turn it on)."""
    base = dict(model="edm", model_name="edm-tiny", checkpoint=str(checkpoint), solver="euler", nfe=2, samples=24,
                fidelity=[0.5, 1.0], features="skipsearch-digits", reference="builtin:edm-digits", batch_size=8,
                trials=6, sampler="random", artifacts=str(tmp_path / "artifacts"), confirm_top=0)
    base.update(overrides)
    return StudyConfig.from_dict(base)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        threading.Event().wait(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def trials_of(url: str, name: str) -> list[FrozenTrial]:
    """The study's trials; none while the storage or the study does not exist yet."""
    from skipsearch.errors import StorageError

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, StorageSettings()))
    except (StorageError, KeyError):
        return []
    return study.get_trials(deepcopy=False)


def finished(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    from skipsearch.search._study import counts_toward_budget

    return [t for t in trials if counts_toward_budget(t)]


def running_pid(trials: list[FrozenTrial], started_within: float | None = None) -> int | None:
    """The pid of a worker that is running a trial now (from the trial's `worker` attribute);
    with `started_within`, only a trial that started that recently (so it is mid-way for a while)."""
    import datetime

    now = datetime.datetime.now()
    for t in trials:
        if t.state != TrialState.RUNNING or "worker" not in t.user_attrs:
            continue
        if started_within is not None and (t.datetime_start is None
                                           or (now - t.datetime_start).total_seconds() > started_within):
            continue
        return int(t.user_attrs["worker"].split(":")[1])
    return None


def param_key(trial: FrozenTrial) -> tuple[float, ...]:
    return tuple(round(v, 12) for _, v in sorted(trial.params.items()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unprivileged_prefix() -> list[str]:
    """How to run a command as a user file permissions apply to (root ignores them)."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return []
    return ["runuser", "-u", "postgres", "--"]


class OwnPostgres:
    """A PostgreSQL server of the test's own (initdb + pg_ctl on a free port), safe to stop and restart."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.prefix = unprivileged_prefix()
        self.log = root / "server.log"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        if self.prefix:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        import pytest

        if os.environ.get("CI"):
            pytest.fail("initdb and pg_ctl are required in CI")
        pytest.skip("initdb/pg_ctl not installed")
    root = Path(tempfile.mkdtemp(prefix="skipsearch-pg-"))
    server = OwnPostgres(root)
    server.init()
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(root, ignore_errors=True)
