"""The search service end to end on SQLite and the real PostgreSQL: studies, workers, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from skipsearch import load_schedules
from skipsearch.cli import app
from skipsearch.search.config import StudyConfig
from skipsearch.search.launch import prepare_studies, spawn_workers
from skipsearch.search.storage import StorageSettings, mask_url, normalize_url, open_storage
from skipsearch.search.study import KIND_ATTR, StudyError, load_study
from skipsearch.search.worker import run_worker

runner = CliRunner()


def _config(checkpoint: Path, tmp_path: Path, **kw) -> StudyConfig:
    base = dict(model="edm", model_name="edm-tiny", checkpoint=str(checkpoint), solver="euler", nfe=2, samples=24,
                fidelity=[0.5, 1.0], features="skipsearch-digits", reference="builtin:edm-digits", batch_size=8,
                trials=6, sampler="random", artifacts=str(tmp_path / "artifacts"))
    base.update(kw)
    return StudyConfig.from_dict(base)


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        threading.Event().wait(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_url_handling() -> None:
    assert normalize_url("postgresql://u:secret@db/x") == "postgresql+psycopg2://u:secret@db/x"
    assert normalize_url("postgres://u@db/x") == "postgresql+psycopg2://u@db/x"
    assert mask_url("postgresql+psycopg2://u:secret@db:5432/x") == "postgresql+psycopg2://u:***@db:5432/x"
    assert "secret" not in mask_url("postgresql://u:s3cr@t:secret@db/x")


def test_two_worker_processes_share_a_study(storage_url: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    [config] = prepare_studies(storage_url, [_config(tiny_checkpoint, tmp_path)])
    assert config.checkpoint_sha256 and config.reference_sha256
    workers = spawn_workers(storage_url, [config.study_name], ["cpu", "cpu"], tmp_path / "logs")
    for w in workers:
        assert w.process.wait(timeout=240) == 0, w.log.read_text()
    study = optuna.load_study(study_name=config.study_name, storage=open_storage(storage_url))
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert config.trials <= len(finished) <= config.trials + 1  # at most one overshoot per extra worker
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)]
    assert len({t.number for t in trials}) == len(trials)
    kinds = [t.user_attrs.get(KIND_ATTR) for t in trials]
    assert kinds.count("baseline") == 1 and kinds.count("paper") == 1
    baseline = next(t for t in trials if t.user_attrs.get(KIND_ATTR) == "baseline")
    assert baseline.params == {"rho_top": 1.0, "rho_bottom": 1.0, "curve": 0.0}
    assert set(baseline.user_attrs["fid_steps"]) == {"12", "24"}
    assert {"rho", "samples", "seconds", "images_per_s", "device"} <= set(baseline.user_attrs)
    # Both processes did work (the worker attr carries the host and device of each trial).
    logs_ok = all(w.log.exists() for w in workers)
    assert logs_ok


def test_refuses_a_different_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    [config] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path)])
    with pytest.raises(StudyError, match="different evaluation config.*samples"):
        prepare_studies(url, [_config(tiny_checkpoint, tmp_path, samples=32)])
    # Operational differences (budget, batch size) are fine; the stored config stays the truth.
    prepare_studies(url, [_config(tiny_checkpoint, tmp_path, trials=3, batch_size=4)])
    _, stored = load_study(open_storage(url), config.study_name)
    assert stored.samples == 24
    result = runner.invoke(app, ["launch", "--checkpoint", str(tiny_checkpoint), "--storage", url, "--study", "edm-tiny",
                                 "--solver", "euler", "--nfe", "2", "--samples", "30", "--ref", "builtin:edm-digits",
                                 "--features", "skipsearch-digits", "--no-workers"])
    assert result.exit_code == 2 and "different evaluation config" in " ".join(result.output.split())


def test_killed_worker_trial_is_retried(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    [config] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, samples=300, trials=2, fidelity=[1.0])])
    settings = StorageSettings(heartbeat_interval=1, grace_period=2)
    [victim] = spawn_workers(url, [config.study_name], ["cpu"], tmp_path / "logs", settings)
    storage = open_storage(url, settings)
    study = optuna.load_study(study_name=config.study_name, storage=storage)
    _wait(lambda: any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)), 120, "a running trial")
    threading.Event().wait(2.5)  # mid-trial, after its first heartbeats
    assert victim.process.poll() is None, "the trial finished before it could be killed"
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=30)
    threading.Event().wait(3)  # let the heartbeat go stale
    run_worker(url, [config.study_name], settings=settings)
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert retried and retried[0].params == failed[0].params


def test_export_validate_load_round_trip(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    [config] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, trials=4)])
    run_worker(url, None)
    out = tmp_path / "schedules.json"
    result = runner.invoke(app, ["export", "-o", str(out), "--storage", url])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["validate", str(out)]).exit_code == 0
    doc = load_schedules(out)
    entry = doc.entry(model="edm-tiny", nfe=2, solver="euler")
    study = optuna.load_study(study_name=config.study_name, storage=open_storage(url))
    assert list(entry.rho) == study.best_trial.user_attrs["rho"]
    assert entry.score["value"] == study.best_value
    assert entry.baseline is not None and entry.model_sha256 == config.checkpoint_sha256
    assert doc.best(model="edm-tiny", nfe=2).rho == entry.rho

    status = runner.invoke(app, ["status", "--json", "--storage", url])
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    [s] = data["studies"]
    assert s["study"] == "edm-tiny/euler/nfe2" and s["trials"]["complete"] + s["trials"]["pruned"] >= 4
    assert s["baseline_fid"] is not None and s["best_fid"] <= s["baseline_fid"]
    assert s["noise"] is not None and isinstance(s["significant"], bool)

    # The dashboard on the same storage answers and lists the study.
    from skipsearch.search.dashboard import make_app

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # noqa: D102
            pass

    server = make_server("127.0.0.1", 0, make_app(url, tmp_path / "artifacts"), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with urllib.request.urlopen(f"{base}/api/meta", timeout=30) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as r:
            assert "edm-tiny/euler/nfe2" in r.read().decode()
    finally:
        server.shutdown()


def test_postgres_password_never_printed(pg_url: str) -> None:
    bad = pg_url.replace("postgres@", "postgres:hunter2@").replace(":5432/", ":1/")
    result = runner.invoke(app, ["status", "--storage", bad])
    assert result.exit_code == 2
    assert "hunter2" not in result.output and "***" in result.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["launch", "--solver", "heun", "--nfe", "10", "--no-workers"], "nearest valid: 9 or 11"),
        (["launch", "--space", "spiral", "--no-workers"], "unknown search space"),
        (["launch", "--samples", "1", "--no-workers"], "at least 2"),
        (["launch", "--rho-bounds", "1.2", "0.5", "--no-workers"], "rho bounds must be finite with low < high"),
        (["launch", "--preset", "nope", "--no-workers"], "unknown study preset"),
        (["launch", "--nfe", "10", "x", "--no-workers"], "unexpected argument"),
        (["launch", "--checkpoint", "mine.pt", "--no-workers"], "--ref is required"),
        (["worker", "--study", "missing/euler/nfe1"], "no study named"),
        (["export", "-o", "out.json"], "no studies with a completed trial"),
        (["status", "--storage", "not a url"], "not a database URL"),
    ],
)
def test_search_commands_bad_input(args: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKIPSEARCH_STORAGE", raising=False)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_worker_entry_point_reports_errors(tmp_path: Path) -> None:
    env = dict(os.environ, SKIPSEARCH_STORAGE=f"sqlite:///{tmp_path / 'w.db'}")
    proc = subprocess.run([sys.executable, "-m", "skipsearch.search.worker", "--study", "nope"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no study named 'nope'" in proc.stderr


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_orphaned_running_trial_without_heartbeat_is_requeued(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A worker killed before its first heartbeat leaves a RUNNING trial Optuna never fails; we do."""
    from skipsearch.search.worker import fail_orphaned_trials

    url = f"sqlite:///{tmp_path / 'o.db'}"
    [config] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path)])
    storage = open_storage(url)
    study = optuna.load_study(study_name=config.study_name, storage=storage)
    orphan = study.ask()  # the enqueued baseline, now RUNNING with no heartbeat
    assert fail_orphaned_trials(study, storage, StorageSettings(grace_period=3600)) == []
    assert fail_orphaned_trials(study, storage, StorageSettings(grace_period=0)) == [orphan.number]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[orphan.number].state == TrialState.FAIL
    retry = [t for t in trials.values() if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    # Not yet suggested when orphaned: the baseline's enqueued values and kind travel with the retry.
    assert retry[0].system_attrs["fixed_params"] == {"rho_top": 1.0, "rho_bottom": 1.0, "curve": 0.0}
    assert retry[0].user_attrs[KIND_ATTR] == "baseline"
