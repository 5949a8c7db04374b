"""A storage password never shows: not in output, errors, logs, exports or the process list.

The shared test server trusts every local login, so any password works against it: the tests use
passwords with `/`, `:` and `@` typed raw, as users do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import wait_for

SECRET = "Xy9-secret-Qz"
PASSWORDS = [f"p/w:{SECRET}", f"a@b:{SECRET}", f"{SECRET}:@/x"]


def _with_password(pg_url: str, password: str) -> str:
    host_and_db = pg_url.split("@", 1)[1]
    return f"postgresql://postgres:{password}@{host_and_db}"


def _family(root: int) -> list[int]:
    """`root` and every process descended from it (read from each process's parent pid), so the
    test looks only at the processes it started, never at another user's skipsearch on the host."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _cmdlines(root: int) -> str:
    out = []
    for pid in _family(root):
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return "\n".join(out)


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "SKIPSEARCH_STORAGE"} | env
    return subprocess.run([sys.executable, "-m", "skipsearch", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=600)


def _watch_process_list(proc: subprocess.Popen[str], needle: str = " -m skipsearch ") -> list[str]:
    """Every listing of `proc`'s processes taken while it runs (4 a second) once it shows `needle`.

    The command as typed is visible for the few milliseconds before it re-executes itself; the
    listings that count are those taken while the work runs."""
    seen = []
    while proc.poll() is None:
        listing = _cmdlines(proc.pid)
        if needle in listing:
            seen.append(listing)
        threading.Event().wait(0.25)
    return seen


@pytest.mark.parametrize("password", PASSWORDS, ids=["slash", "at", "colon-at-slash"])
def test_errors_mask_every_password(password: str, pg_url: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from skipsearch.cli import app

    url = _with_password(pg_url, password)
    runner = CliRunner()
    empty = runner.invoke(app, ["status", "--storage", url])  # reachable, but holds no studies
    unreachable = runner.invoke(app, ["status", "--storage", url.replace(":5432/", ":1/")])
    for result, needle in ((empty, "no skipsearch studies"), (unreachable, "cannot open storage")):
        assert result.exit_code == 2 and needle in result.stderr, result.stderr
        assert SECRET not in result.output and "postgres:***@" in result.stderr


@pytest.mark.slow
def test_password_never_printed_or_listed(pg_url: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = _with_password(pg_url, PASSWORDS[2])
    launch = [sys.executable, "-m", "skipsearch", "launch", "--storage", url, "--checkpoint", str(tiny_checkpoint),
              "--study", "edm-tiny", "--solver", "euler", "--nfe", "2", "--samples", "600", "--batch-size", "50",
              "--trials", "3", "--ref", "builtin:edm-digits", "--features", "skipsearch-digits", "--device", "cpu",
              "--confirm-top", "0"]
    env = {k: v for k, v in os.environ.items() if k != "SKIPSEARCH_STORAGE"}
    proc = subprocess.Popen(launch, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = _watch_process_list(proc, needle=" -m skipsearch worker ")
        output = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "***" in output and SECRET not in output
    assert any(" -m skipsearch worker " in listing for listing in seen), "no listing caught a worker"
    assert not any(SECRET in listing for listing in seen), "the password was visible in the process list"
    logs = "".join(p.read_text() for p in (tmp_path / "skipsearch-artifacts" / "logs").glob("*.log"))
    assert SECRET not in logs and "trial 0 complete" in logs

    status = _run(["status", "--storage", url], tmp_path)
    assert status.returncode == 0 and SECRET not in status.stdout + status.stderr and "edm-tiny" in status.stdout
    export = _run(["export", "-o", "s.json", "--storage", url], tmp_path)
    assert export.returncode == 0 and SECRET not in (tmp_path / "s.json").read_text()


@pytest.mark.slow
def test_worker_and_dashboard_move_the_password_out_of_ps(pg_url: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`--storage URL` typed on the command line moves into the environment before any work starts."""
    from helpers import free_port, tiny_config

    from skipsearch.search import prepare_studies

    url = _with_password(pg_url, PASSWORDS[1])
    prepare_studies(url, [tiny_config(tiny_checkpoint, tmp_path, samples=600, batch_size=50, trials=2)])
    env = {k: v for k, v in os.environ.items() if k != "SKIPSEARCH_STORAGE"}
    worker = subprocess.Popen([sys.executable, "-m", "skipsearch", "worker", "--storage", url, "--device", "cpu"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: _running_trials(url), 120, "the worker's first trial")
        cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().decode()
        environ = Path(f"/proc/{worker.pid}/environ").read_bytes().decode(errors="replace")
    finally:
        output = worker.communicate(timeout=300)[0]
    assert "worker" in cmdline and SECRET not in cmdline and SECRET in environ  # moved, not lost
    assert worker.returncode == 0 and "worker done: 2 trial(s)" in output and SECRET not in output

    port = free_port()
    dashboard = subprocess.Popen([sys.executable, "-m", "skipsearch", "dashboard", "--storage", url, "--port",
                                  str(port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    try:

        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/api/meta"), 120, "the dashboard")
        listing = _cmdlines(dashboard.pid)
        assert " -m skipsearch dashboard" in listing and SECRET not in listing
    finally:
        dashboard.send_signal(signal.SIGINT)
        output = dashboard.communicate(timeout=60)[0]
    assert SECRET not in output and "***" in output


def _running_trials(url: str) -> bool:
    from helpers import trials_of

    return any(t.state.name == "RUNNING" for t in trials_of(url, "edm-tiny/euler/nfe2"))


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
