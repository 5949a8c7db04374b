"""The search service end to end on SQLite and the real PostgreSQL: studies, workers, export."""

from __future__ import annotations

import datetime
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
from skipsearch.errors import StudyError
from skipsearch.search import StorageSettings, StudyConfig, prepare_studies, run_worker, spawn_workers
from skipsearch.search.attrs import KIND_ATTR
from skipsearch.search._study import load_study
from skipsearch.search.storage import mask_url, open_storage, resolve_url

runner = CliRunner()


def _config(checkpoint: Path, tmp_path: Path, **kw) -> StudyConfig:
    base = dict(model="edm", model_name="edm-tiny", checkpoint=str(checkpoint), solver="euler", nfe=2, samples=24,
                fidelity=[0.5, 1.0], features="skipsearch-digits", reference="builtin:edm-digits", batch_size=8,
                trials=6, sampler="random", artifacts=str(tmp_path / "artifacts"), confirm_top=0)
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
    assert resolve_url("postgresql://u:secret@db/x").render_as_string(hide_password=False) == \
        "postgresql+psycopg2://u:secret@db/x"
    assert str(resolve_url("postgres://u@db/x")) == "postgresql+psycopg2://u@db/x"
    assert mask_url("postgresql+psycopg2://u:secret@db:5432/x") == "postgresql+psycopg2://u:***@db:5432/x"
    assert "secret" not in mask_url("postgresql://u:s3cr@t:secret@db/x")


@pytest.mark.slow
def test_two_worker_processes_share_a_study(storage_url: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    [prepared] = prepare_studies(storage_url, [_config(tiny_checkpoint, tmp_path)])
    config = prepared.config
    assert config.checkpoint_sha256 and config.reference_sha256
    workers = spawn_workers(storage_url, [config.study_name], ["cpu", "cpu"], tmp_path / "logs")
    for w in workers:
        assert w.process.wait(timeout=240) == 0, w.log.read_text()
    study = optuna.load_study(study_name=config.study_name, storage=open_storage(storage_url))
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == config.trials  # the budget exactly, with any number of workers
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)]
    assert len({t.number for t in trials}) == len(trials)
    kinds = [t.user_attrs.get(KIND_ATTR) for t in trials]
    assert kinds.count("baseline") == 1 and kinds.count("paper") == 1
    baseline = next(t for t in trials if t.user_attrs.get(KIND_ATTR) == "baseline")
    assert baseline.params == {"rho_top": 1.0, "rho_bottom": 1.0, "curve": 0.0}
    assert set(baseline.user_attrs["fid_steps"]) == {"12", "24"}
    assert {"rho", "samples", "seconds", "images_per_s", "device"} <= set(baseline.user_attrs)
    # Both processes did work: each trial records the host, pid and device that ran it, and each
    # worker counts its own trials.
    assert len({t.user_attrs["worker"] for t in finished}) == 2
    import re

    counts = [int(re.search(r"worker done: (\d+) trial", w.log.read_text()).group(1)) for w in workers]
    assert sum(counts) == config.trials and min(counts) >= 1


def test_refuses_a_different_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    [prepared] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path)])
    config = prepared.config
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


@pytest.mark.slow
def test_killed_worker_trial_is_retried(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    [prepared] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, samples=4000, batch_size=100, trials=2,
                                               fidelity=[1.0])])
    config = prepared.config
    settings = StorageSettings(heartbeat_interval=1, grace_period=2)
    [victim] = spawn_workers(url, [config.study_name], ["cpu"], tmp_path / "logs", settings)
    storage = open_storage(url, settings)
    study = optuna.load_study(study_name=config.study_name, storage=storage)
    def mid_trial() -> bool:  # running for a second (its first heartbeats sent), not a fixed sleep after a look
        now = datetime.datetime.now()
        return any(t.state == TrialState.RUNNING and t.datetime_start is not None
                   and (now - t.datetime_start).total_seconds() >= 1.0 for t in study.get_trials(deepcopy=False))

    _wait(mid_trial, 120, "a trial running for a second")
    assert victim.process.poll() is None, "the trial finished before it could be killed"
    assert any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait(timeout=30)
    threading.Event().wait(3)  # let the heartbeat go stale
    run_worker(url, [config.study_name], settings=settings, log=lambda m: None)
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "worker lost" in failed[0].user_attrs["fail_reason"]
    retried = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert retried and retried[0].params == failed[0].params


@pytest.mark.slow
def test_export_validate_load_round_trip(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    [prepared] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, trials=4)])
    config = prepared.config
    run_worker(url, None, log=lambda m: None)
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
    from skipsearch.search._dashboard import dashboard_app as make_app

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
            listing = json.loads(r.read().decode())
        [entry] = [s for s in listing["study_summaries"] if s["study_name"] == "edm-tiny/euler/nfe2"]
        with urllib.request.urlopen(f"{base}/api/studies/{entry['study_id']}", timeout=30) as r:
            detail = json.loads(r.read().decode())
        # The dashboard names the metric and shows what the study searched and found.
        assert detail["objective_names"] == ["proxy FID (24 samples)"]
        note = detail["note"]["body"]
        assert "edm-tiny/euler/nfe2" in note and "baseline (ρ = 1): FID" in note and "best: trial" in note
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
        (["launch", "--checkpoint", "mine.pt", "--no-workers"], "--ref is required"),  # mine.pt exists (below)
        (["worker", "--study", "missing/euler/nfe1"], "no skipsearch storage at sqlite:///skipsearch.db"),
        (["export", "-o", "out.json"], "no skipsearch storage at sqlite:///skipsearch.db"),
        (["status", "--storage", "not a url"], "not a database URL"),
    ],
)
def test_search_commands_bad_input(args: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKIPSEARCH_STORAGE", raising=False)
    (tmp_path / "mine.pt").write_bytes(b"")  # an existing checkpoint: what is missing is its reference
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_worker_entry_point_reports_errors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    prepare_studies(url, [_config(tiny_checkpoint, tmp_path)])
    env = dict(os.environ, SKIPSEARCH_STORAGE=url)
    proc = subprocess.run([sys.executable, "-m", "skipsearch", "worker", "--study", "nope"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no study named 'nope'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_orphaned_running_trial_without_heartbeat_is_requeued(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A worker killed right after claiming a trial leaves it RUNNING without a heartbeat; we fail it."""
    from skipsearch.search._trials import claim, sweep

    url = f"sqlite:///{tmp_path / 'o.db'}"
    [prepared] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path)])
    config = prepared.config
    storage = open_storage(url, StorageSettings(heartbeat_interval=1, grace_period=3600))
    storage.heartbeat_interval, storage.grace_period = 1, 3600
    study = optuna.load_study(study_name=config.study_name, storage=storage)
    orphan = claim(study)  # the enqueued baseline, now RUNNING with no heartbeat
    number = storage.get_trial_number_from_id(orphan)
    assert sweep(study, grace_period=3600, max_retry=3) == []
    assert sweep(study, grace_period=0, max_retry=3) == [number]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert trials[number].state == TrialState.FAIL
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == number]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    # Not yet suggested when orphaned: the baseline's enqueued values and kind travel with the retry.
    assert retry[0].system_attrs["fixed_params"] == {"rho_top": 1.0, "rho_bottom": 1.0, "curve": 0.0}
    assert retry[0].user_attrs[KIND_ATTR] == "baseline"


def _half_failed(study: optuna.Study) -> int:
    """Claim a trial and make only the first of `fail`'s two writes: what a worker preempted
    between failing its trial and re-queuing it leaves behind. The trial's number."""
    from skipsearch.search._trials import claim

    storage = study._storage
    trial_id = claim(study)
    storage.set_trial_user_attr(trial_id, "fail_reason", "interrupted by SIGTERM")
    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    return storage.get_trial_number_from_id(trial_id)


def test_a_failed_trial_whose_requeue_never_landed_is_requeued_once(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from contextlib import nullcontext

    from skipsearch.search._trials import requeue_orphans

    url = f"sqlite:///{tmp_path / 'q.db'}"
    [prepared] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, trials=3)])
    study = optuna.load_study(study_name=prepared.config.study_name, storage=open_storage(url))
    number = _half_failed(study)
    retries = lambda: [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("retry_of") == number]  # noqa: E731
    assert requeue_orphans(study, None, nullcontext) is True and not retries()  # said, not touched
    assert requeue_orphans(study, 3600, nullcontext) is True and not retries()  # just failed: left to its worker
    assert requeue_orphans(study, 0, nullcontext) is True
    assert requeue_orphans(study, 0, nullcontext) is False  # the second look finds it re-queued
    [retry] = retries()
    assert retry.state == TrialState.WAITING and retry.user_attrs[KIND_ATTR] == "baseline"


def test_a_worker_does_not_end_a_study_while_a_failed_trial_awaits_its_requeue(storage_url: str, tiny_checkpoint: Path,
                                                                               tmp_path: Path) -> None:
    """Seen in a full test run: a worker that looked for work between another's two writes (trial failed, not yet
    re-queued) found nothing queued or running and ended the study one trial short, for good. On both
    backends: the re-queue takes the storage's lock (an advisory lock on PostgreSQL)."""
    url = storage_url
    [prepared] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, trials=3)])
    name = prepared.config.study_name
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    number = _half_failed(study)
    lines: list[str] = []
    run_worker(url, [name], settings=StorageSettings(heartbeat_interval=1, grace_period=2), log=lines.append)
    trials = study.get_trials(deepcopy=False)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3, "\n".join(lines)
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert retry.params == {"rho_top": 1.0, "rho_bottom": 1.0, "curve": 0.0}  # the baseline, run again


@pytest.mark.slow
def test_a_finished_study_says_so_and_can_be_extended(tiny_checkpoint: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["launch", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--checkpoint", str(tiny_checkpoint),
            "--study", "edm-tiny", "--solver", "euler", "--nfe", "2", "--samples", "24", "--batch-size", "8",
            "--ref", "builtin:edm-digits", "--features", "skipsearch-digits", "--device", "cpu", "--confirm-top", "0"]
    first = runner.invoke(app, [*args, "--trials", "3"])
    assert first.exit_code == 0, first.output
    assert "created study edm-tiny/euler/nfe2 (3 trials)" in first.output
    # Without a terminal, one plain line per finished trial (a log shows what happened, and when).
    assert "edm-tiny/euler/nfe2 trial 0 complete: FID" in first.output
    again = runner.invoke(app, [*args, "--trials", "3"])
    assert again.exit_code == 0 and "is complete (3/3 trials)" in again.output and "--trials 6" in again.output
    more = runner.invoke(app, [*args, "--trials", "5"])
    assert more.exit_code == 0, more.output
    assert "budget raised from 3 to 5 trials" in more.output
    trials = optuna.load_study(study_name="edm-tiny/euler/nfe2", storage=open_storage(f"sqlite:///{tmp_path / 'x.db'}"))
    states = [t.state for t in trials.get_trials(deepcopy=False)]
    assert len(states) == 5 and set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert "5/5" in " ".join(more.output.split())


def test_score_reports_progress_without_a_terminal(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["score", "--checkpoint", str(tiny_checkpoint), "--ref", "builtin:edm-digits",
                                 "--features", "skipsearch-digits", "--nfe", "2", "--samples", "20", "--batch-size", "10"])
    assert result.exit_code == 0, result.output
    assert "euler NFE 2 baseline: 20/20 samples" in result.output
    assert "proxy FID on seeds 100000..100019" in result.output


def test_the_paper_point_only_inside_the_bounds(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    [inside] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, model_name="a")])
    [outside] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, model_name="b", rho_bounds=[0.85, 1.1])])
    kinds = lambda p: [t.user_attrs[KIND_ATTR] for t in p.study.get_trials(deepcopy=False)]  # noqa: E731
    assert kinds(inside) == ["baseline", "paper", "probe", "probe"] + ["search"] * 2
    # ρ_bottom 0.8 (the paper) lies outside [0.85, 1.1]; the probes are placed inside the bounds
    assert kinds(outside) == ["baseline", "probe", "probe"] + ["search"] * 3
    probes = [t.system_attrs["fixed_params"] for t in outside.study.get_trials(deepcopy=False)
              if t.user_attrs[KIND_ATTR] == "probe"]
    assert probes == [{"rho_top": 0.85, "rho_bottom": 1.0, "curve": -2.0}, {"rho_top": 1.1, "rho_bottom": 1.1, "curve": 0.0}]
