"""Workers as an operator meets them: real processes, real signals, a database that goes away.

Every test runs `python -m skipsearch worker` processes against a real storage and checks the
study afterwards: exactly the budget finished, nothing RUNNING or queued, nothing computed twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from helpers import finished, own_postgres, param_key, running_pid, tiny_config, trials_of, wait_for
from optuna.trial import TrialState

from skipsearch.search import StorageSettings, prepare_studies, spawn_workers
from skipsearch.search.attrs import KIND_ATTR

FAST = StorageSettings(heartbeat_interval=1, grace_period=3, outage_limit=120)


SLOW_SAMPLES = 3000


def _slow_config(checkpoint: Path, tmp_path: Path, **kw):
    """Trials of a few seconds: long enough to be killed in the middle of one."""
    kw = {"samples": SLOW_SAMPLES, "batch_size": 100, "fidelity": [1.0], "pruner": "none", **kw}
    return tiny_config(checkpoint, tmp_path, **kw)


def _check_study(url: str, name: str, budget: int) -> list:
    trials = trials_of(url, name)
    done = finished(trials)
    assert len(done) == budget, [(t.number, t.state.name) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    keys = Counter(param_key(t) for t in done if t.state == TrialState.COMPLETE)
    assert max(keys.values()) == 1, "a schedule was computed twice"
    kinds = Counter(t.user_attrs.get(KIND_ATTR) for t in done)
    assert kinds["baseline"] == 1 and kinds["paper"] == 1
    return trials


def _stop_one_worker(url: str, name: str, procs: list, sig: int, when: int) -> int:
    """Send `sig` to a worker that is in the middle of a trial once `when` trials have finished.

    "In the middle": it has reported progress below a third of its samples, so most of its work is
    ahead when the signal lands, on a fast machine or a loaded one."""
    def ready() -> int | None:
        trials = trials_of(url, name)
        if len(finished(trials)) < when:
            return None
        return running_pid(trials, below_progress=SLOW_SAMPLES // 3)

    pid = wait_for(ready, 240, f"a trial just started after {when} finished", every=0.1)
    [victim] = [p for p in procs if p.process.pid == pid]
    victim.process.send_signal(sig)
    return victim.process.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_three_workers_lose_two_and_the_budget_is_exact(sig: int, tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    [p] = prepare_studies(url, [_slow_config(tiny_checkpoint, tmp_path, trials=10)])
    name = p.config.study_name
    procs = spawn_workers(url, [name], ["cpu"] * 3, tmp_path / "logs", FAST)
    try:
        codes = [_stop_one_worker(url, name, procs, sig, when=2), _stop_one_worker(url, name, procs, sig, when=8)]
        survivors = [w for w in procs if w.process.returncode is None]
        for w in survivors:
            assert w.process.wait(timeout=240) == 0, w.log.read_text()
    finally:
        for w in procs:
            if w.process.poll() is None:
                w.process.kill()
    trials = _check_study(url, name, budget=10)
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert len(lost) == 2
    for t in lost:  # each lost trial was re-run once, with its parameters
        [retry] = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        assert t.params and param_key(retry) == param_key(t)
    if sig == signal.SIGTERM:
        assert codes == [128 + signal.SIGTERM] * 2
        assert all("interrupted by SIGTERM" in t.user_attrs["fail_reason"] for t in lost)
        log = "".join(w.log.read_text() for w in procs)
        assert "Traceback" not in log
    else:
        assert codes == [-signal.SIGKILL] * 2
        assert all("worker lost" in t.user_attrs["fail_reason"] for t in lost)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_worker_within_seconds(sig: int, tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    [p] = prepare_studies(url, [_slow_config(tiny_checkpoint, tmp_path, trials=6, samples=4000)])
    name = p.config.study_name
    [w] = spawn_workers(url, [name], ["cpu"], tmp_path / "logs", FAST)
    try:
        wait_for(lambda: running_pid(trials_of(url, name)), 120, "a running trial")
        import time

        start = time.monotonic()
        w.process.send_signal(sig)
        assert w.process.wait(timeout=30) == 128 + sig
        assert time.monotonic() - start < 10
    finally:
        if w.process.poll() is None:
            w.process.kill()
    trials = trials_of(url, name)
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # failed and re-queued, not left behind
    [lost] = [t for t in trials if t.state == TrialState.FAIL]
    assert lost.user_attrs["fail_reason"] == f"interrupted by {signal.Signals(sig).name}"
    assert [t.state for t in trials if t.user_attrs.get("retry_of") == lost.number] == [TrialState.WAITING]
    log = w.log.read_text()
    assert "Traceback" not in log and f"worker stopped by {signal.Signals(sig).name}" in log


@pytest.mark.slow
def test_four_workers_run_exactly_the_budget_without_repeats(pg_url: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    [p] = prepare_studies(pg_url, [tiny_config(tiny_checkpoint, tmp_path, trials=14, samples=60, batch_size=30)])
    name = p.config.study_name
    procs = spawn_workers(pg_url, [name], ["cpu"] * 4, tmp_path / "logs", FAST)
    for w in procs:
        assert w.process.wait(timeout=300) == 0, w.log.read_text()
    trials = _check_study(pg_url, name, budget=14)
    assert len(trials) == 14  # no trial failed, none created beyond the queue
    assert len({param_key(t) for t in trials}) == 14  # no two trials, finished or pruned, share parameters
    assert len({t.user_attrs["worker"] for t in trials}) >= 2


@pytest.mark.slow
def test_a_database_restart_is_waited_out(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """PostgreSQL stops for 10 s while two workers run: both continue, nothing is lost or re-run."""
    with own_postgres() as server:
        url = server.url
        [p] = prepare_studies(url, [_slow_config(tiny_checkpoint, tmp_path, trials=8)])
        name = p.config.study_name
        procs = spawn_workers(url, [name], ["cpu"] * 2, tmp_path / "logs", FAST)
        try:
            wait_for(lambda: len(finished(trials_of(url, name))) >= 2 and running_pid(trials_of(url, name)), 180,
                     "work in progress")
            server.stop()
            threading.Event().wait(10)
            assert all(w.process.poll() is None for w in procs), "a worker died with the database"
            server.start()
            for w in procs:
                assert w.process.wait(timeout=300) == 0, w.log.read_text()
        finally:
            for w in procs:
                if w.process.poll() is None:
                    w.process.kill()
        trials = _check_study(url, name, budget=8)
        assert not [t for t in trials if t.state == TrialState.FAIL], "a live trial was failed as lost"
        log = "".join(w.log.read_text() for w in procs)
        assert "storage unreachable" in log and "reachable again" in log and "Traceback" not in log


def _launch(url: str, checkpoint: Path, tmp_path: Path, index: int) -> subprocess.Popen[str]:
    env = dict(os.environ, SKIPSEARCH_STORAGE=url)
    cmd = [sys.executable, "-m", "skipsearch", "launch", "--checkpoint", str(checkpoint), "--study", "edm-tiny",
           "--solver", "euler", "--nfe", "2", "--samples", "24", "--trials", "6", "--ref", "builtin:edm-digits",
           "--features", "skipsearch-digits", "--no-workers"]
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_ten_concurrent_launches_make_one_study(backend: str, tiny_checkpoint: Path, tmp_path: Path,
                                                request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    launches = [_launch(url, tiny_checkpoint, tmp_path, i) for i in range(10)]
    outputs = [p.communicate(timeout=300)[0] for p in launches]
    assert [p.returncode for p in launches] == [0] * 10, outputs
    assert sum("created study" in o for o in outputs) == 1
    trials = trials_of(url, "edm-tiny/euler/nfe2")
    kinds = Counter(t.user_attrs.get(KIND_ATTR) for t in trials)
    assert kinds == {"baseline": 1, "paper": 1, "probe": 2, "search": 2}
    assert all(t.state == TrialState.WAITING for t in trials)


def test_non_finite_samples_fail_the_trial_and_the_study_goes_on(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A study whose network yields NaN (made by the library directly, skipping launch's check)."""
    import shutil

    import torch

    from skipsearch.search import StudyStore, run_worker
    from skipsearch.search._study import prepare_study
    from skipsearch.search.storage import resolve_url
    from skipsearch.target import load_target

    state = torch.load(tiny_checkpoint, weights_only=True)
    state[next(k for k in state if k.endswith("weight"))].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    shutil.copy(tiny_checkpoint.with_suffix(".json"), tmp_path / "nan.json")
    url = resolve_url(f"sqlite:///{tmp_path / 'n.db'}")
    config = tiny_config(tmp_path / "nan.pt", tmp_path, trials=4)
    prepare_study(StudyStore.open(url, create=True), config, load_target(config.checkpoint).sites)
    report = run_worker(url, None, log=lambda m: None)
    assert report.outcomes == {"failed": 4}
    trials = trials_of(str(url), config.study_name)
    assert len(trials) == 4 and all(t.state == TrialState.FAIL for t in trials)
    assert all(t.user_attrs["fail_reason"].startswith("non-finite samples: 8/8 NaN") for t in trials)
    from typer.testing import CliRunner

    from skipsearch.cli import app

    status = CliRunner().invoke(app, ["status", "--storage", str(url)])
    assert status.exit_code == 0 and "4 failed trial(s): non-finite samples" in " ".join(status.output.split())
    export = CliRunner().invoke(app, ["export", "-o", str(tmp_path / "s.json"), "--storage", str(url)])
    assert export.exit_code == 2 and "no studies with a completed trial" in export.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_launch_never_orphans_its_workers(sig: int, tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    env = {k: v for k, v in os.environ.items() if k != "SKIPSEARCH_STORAGE"}
    cmd = [sys.executable, "-m", "skipsearch", "launch", "--storage", url, "--checkpoint", str(tiny_checkpoint),
           "--study", "edm-tiny", "--solver", "euler", "--nfe", "2", "--samples", "4000", "--batch-size", "100",
           "--trials", "4", "--ref", "builtin:edm-digits", "--features", "skipsearch-digits", "--device", "cpu",
           "--heartbeat", "1", "--grace", "3"]
    # Output to a file, not a pipe: an unread pipe that fills would stall launch, and on failure
    # the file (and the worker's log) say what launch was doing.
    out_path = tmp_path / "launch.out"
    with open(out_path, "w") as out:
        launch = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)

    def said() -> str:
        logs = sorted((tmp_path / "skipsearch-artifacts" / "logs").glob("*"))
        return out_path.read_text() + "".join(f"\n--- {f.name}\n{f.read_text()[-3000:]}" for f in logs)

    def running_or_launch_gone() -> int | None:
        if launch.poll() is not None:
            raise AssertionError(f"launch exited ({launch.returncode}) before a trial ran")
        return running_pid(trials_of(url, "edm-tiny/euler/nfe2"))

    try:
        try:
            worker_pid = wait_for(running_or_launch_gone, 180, "a running trial")
        except AssertionError as e:
            raise AssertionError(f"{e}\nlaunch said:\n{said()}") from None
        launch.send_signal(sig)
        launch.wait(timeout=60)
        wait_for(lambda: not Path(f"/proc/{worker_pid}").exists() or _zombie(worker_pid), 30, "the worker to exit")
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait()
    output = out_path.read_text()
    if sig == signal.SIGTERM:
        assert launch.returncode == 128 + signal.SIGTERM and "Traceback" not in output
    trials = trials_of(url, "edm-tiny/euler/nfe2")
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # the worker handed its trial back
    [lost] = [t for t in trials if t.state == TrialState.FAIL]
    assert lost.user_attrs["fail_reason"] == "interrupted by SIGTERM"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
