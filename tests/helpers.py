"""Shared test tools: tiny study configs, waiting on conditions, a PostgreSQL server of our own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
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


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`skipsearch ARGS` as its own process (as a user runs it), at 100 columns, with no storage from the
    environment."""
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("SKIPSEARCH_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "skipsearch", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


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


def running_pid(trials: list[FrozenTrial], below_progress: int | None = None) -> int | None:
    """The pid of a worker that is running a trial now (from the trial's `worker` attribute);
    with `below_progress`, only a trial that has reported fewer samples done than that: one that is
    sampling and has most of its work ahead, whatever the machine's pace (a clock-based "started
    recently" let a kill land after a slow machine's trial had finished)."""
    for t in trials:
        if t.state != TrialState.RUNNING or "worker" not in t.user_attrs:
            continue
        if below_progress is not None and not 0 < int(t.user_attrs.get("progress", 0)) < below_progress:
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

    def __init__(self, root: Path, max_connections: int = 100) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.prefix = unprivileged_prefix()
        self.log = root / "server.log"
        self.max_connections = max_connections

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        if self.prefix:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                  f"-c max_connections={self.max_connections} -c superuser_reserved_connections=0")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def connections_per_process(self) -> int:
        """The most connections one skipsearch process holds now (its application_name names its pid)."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("SELECT application_name, count(*) FROM pg_stat_activity "
                                            "WHERE application_name LIKE 'skipsearch %' GROUP BY 1")).all()
        except Exception:  # noqa: BLE001 - every slot taken: this look is skipped, the next one counts
            return 0
        finally:
            engine.dispose()
        return max((n for _, n in rows), default=0)


@contextmanager
def own_postgres(max_connections: int = 100) -> Iterator[OwnPostgres]:
    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        import pytest

        if os.environ.get("CI"):
            pytest.fail("initdb and pg_ctl are required in CI")
        pytest.skip("initdb/pg_ctl not installed")
    root = Path(tempfile.mkdtemp(prefix="skipsearch-pg-"))
    server = OwnPostgres(root, max_connections)
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


class Bouncer:
    def __init__(self, port: int) -> None:
        self.port = port

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"


@contextmanager
def pgbouncer(server: OwnPostgres, pool_size: int = 4) -> Iterator[Bouncer]:
    """PgBouncer in transaction pooling in front of `server` (skipped where it is not installed)."""
    import pytest

    binary = shutil.which("pgbouncer") or next((p for p in ("/usr/sbin/pgbouncer",) if Path(p).exists()), None)
    if binary is None:
        pytest.skip("pgbouncer is not installed here")
    root = Path(tempfile.mkdtemp(prefix="skipsearch-pgb-"))
    port = free_port()
    (root / "users.txt").write_text('"postgres" ""\n')
    (root / "pgbouncer.ini").write_text(f"""[databases]
postgres = host=127.0.0.1 port={server.port} dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir = {root}
auth_type = trust
auth_file = {root}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits,options
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
""")
    prefix = server.prefix
    if prefix:
        shutil.chown(root, "postgres")
        for f in root.iterdir():
            shutil.chown(f, "postgres")
    subprocess.run([*prefix, binary, "-d", str(root / "pgbouncer.ini")], check=True, capture_output=True, timeout=60)
    try:
        wait_for(lambda: (root / "pgbouncer.pid").exists(), 30, "pgbouncer to start")
        yield Bouncer(port)
    finally:
        try:
            os.kill(int((root / "pgbouncer.pid").read_text().strip()), 15)
        except (OSError, ValueError):
            pass
        shutil.rmtree(root, ignore_errors=True)
