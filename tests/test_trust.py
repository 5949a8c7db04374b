"""Nothing rewritten, nothing lost, nothing exhausted (issue 19): each case as an operator meets it,
with real processes, real signals, the real dashboard over HTTP and private PostgreSQL servers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
from helpers import free_port, own_postgres, tiny_config, trials_of, wait_for
from optuna.trial import TrialState
from typer.testing import CliRunner

from skipsearch.cli import app
from skipsearch.search import StorageSettings, export_schedules, prepare_studies, run_worker, spawn_workers
from skipsearch.search._confirm import confirm_name
from skipsearch.search.attrs import KIND_ATTR, VERSION_ATTR
from skipsearch.search.storage import open_storage

runner = CliRunner()
FAST = StorageSettings(heartbeat_interval=1, grace_period=3)


def _env(url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SKIPSEARCH_STORAGE"}
    if url:
        env["SKIPSEARCH_STORAGE"] = url
    return env


# -- the dashboard -------------------------------------------------------------------------------


def _request(method: str, url: str, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except urllib.error.URLError:
        return 0  # not listening (yet)


@pytest.mark.slow
@pytest.mark.parametrize("allow_writes", [False, True], ids=["read-only", "allow-writes"])
def test_the_dashboard_cannot_rewrite_results(allow_writes: bool, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The two POSTs that once made any schedule 'the best': refused by the real server unless it
    was started with --allow-writes, and even then the trial they forge is never a candidate."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    [p] = prepare_studies(url, [tiny_config(tiny_checkpoint, tmp_path, trials=4)])
    run_worker(url, None, log=lambda m: None)
    study = optuna.load_study(study_name=p.config.study_name, storage=open_storage(url))
    honest = export_schedules(url, tmp_path / "honest.json")[0].entries[0]
    study.enqueue_trial({"rho_top": 0.31, "rho_bottom": 0.31, "curve": 0.0})  # a slot a worker would run
    target = study.get_trials(deepcopy=False)[-1]._trial_id
    port = free_port()
    args = [sys.executable, "-m", "skipsearch", "dashboard", "--port", str(port)] + (["--allow-writes"] * allow_writes)
    server = subprocess.Popen(args, cwd=tmp_path, env=_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _request("GET", f"{base}/api/meta") == 200, 120, "the dashboard")
        assert _request("GET", f"{base}/api/studies") == 200  # reading works either way
        attrs = _request("POST", f"{base}/api/trials/{target}/user-attrs", {"user_attrs": {"rho": [0.01] * 4}})
        tell = _request("POST", f"{base}/api/trials/{target}/tell", {"state": "Complete", "values": [0.005]})
        delete = None if allow_writes else _request("DELETE", f"{base}/api/studies/{study._study_id}")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # never leave a server behind, whatever failed
            server.kill()
            server.communicate()
            raise
    if not allow_writes:
        assert (attrs, tell, delete) == (405, 405, 405)
        assert study.get_trials(deepcopy=False)[-1].state == TrialState.WAITING
    else:
        assert attrs in (200, 204) and tell in (200, 204)
        assert study.get_trials(deepcopy=False)[-1].value == 0.005  # the dashboard did complete it
    doc, _ = export_schedules(url, tmp_path / "after.json")
    [entry] = doc.entries  # the forged 0.005 is no candidate: the worker's best is still the export's
    assert entry.rho == honest.rho and entry.score["value"] == honest.score["value"] != 0.005
    status = runner.invoke(app, ["status", "--json", "--storage", url])
    assert json.loads(status.output)["studies"][0]["best_fid"] == honest.score["value"]


def test_the_dashboard_binds_loopback_by_default() -> None:
    import inspect

    from skipsearch.cli.studies import dashboard

    assert inspect.signature(dashboard).parameters["host"].default == "127.0.0.1"


# -- the baseline first, never pruned -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_preempted_baseline_runs_next_and_is_never_pruned(sig: int, tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    config = tiny_config(tiny_checkpoint, tmp_path, trials=4, samples=2000, batch_size=100, fidelity=[0.1, 1.0],
                         pruner="median")
    [p] = prepare_studies(url, [config])
    name = p.config.study_name
    [victim] = spawn_workers(url, [name], ["cpu"], tmp_path / "logs", FAST)
    baseline_running = lambda: [t for t in trials_of(url, name)  # noqa: E731
                                if t.state == TrialState.RUNNING and t.user_attrs.get(KIND_ATTR) == "baseline"]
    wait_for(baseline_running, 120, "the baseline to run")
    victim.process.send_signal(sig)
    victim.process.wait(timeout=60)
    if sig == signal.SIGKILL:
        threading.Event().wait(4)  # its heartbeat goes stale
    run_worker(url, [name], settings=FAST, log=lambda m: None)
    trials = sorted(trials_of(url, name), key=lambda t: t.datetime_start or t.datetime_complete)
    [lost] = [t for t in trials if t.state == TrialState.FAIL]
    assert lost.user_attrs.get(KIND_ATTR) == "baseline", "the signal landed after the baseline: not tested"
    retried = [t for t in trials if t.user_attrs.get(KIND_ATTR) == "baseline" and t.state != TrialState.FAIL]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE  # never pruned
    after_loss = [t for t in trials if t.state != TrialState.FAIL]
    assert after_loss[0].user_attrs.get(KIND_ATTR) == "baseline", "the lost baseline must run next"
    status = json.loads(runner.invoke(app, ["status", "--json", "--storage", url]).output)["studies"][0]
    assert status["baseline_fid"] is not None and status["baseline_note"] is None


def test_a_study_without_its_baseline_says_so(tmp_path: Path, tiny_checkpoint: Path) -> None:
    url = f"sqlite:///{tmp_path / 'n.db'}"
    prepare_studies(url, [tiny_config(tiny_checkpoint, tmp_path, trials=3)])
    result = runner.invoke(app, ["status", "--storage", url])
    assert result.exit_code == 0
    from skipsearch.search import study_summaries

    [summary] = study_summaries(open_storage(url))
    assert summary.baseline is None and "has not finished yet" in summary.baseline_note


# -- confirmation survives interruption ---------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_confirmation_is_resumed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`launch … --confirm-top`, Ctrl-C while a confirmation job runs: nothing says 'running', a second
    launch finishes it, and the export carries the confirmed block with the right trials."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    args = [sys.executable, "-m", "skipsearch", "launch", "--storage", url, "--checkpoint", str(tiny_checkpoint),
            "--study", "edm-tiny", "--solver", "euler", "--nfe", "2", "--samples", "300", "--batch-size", "100",
            "--trials", "3", "--ref", "builtin:edm-digits", "--features", "skipsearch-digits", "--device", "cpu",
            "--confirm-top", "1", "--confirm-samples", "3000"]
    with open(tmp_path / "first.out", "w") as out:
        launch = subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    name = "edm-tiny/euler/nfe2"
    try:
        wait_for(lambda: any(t.state == TrialState.RUNNING for t in trials_of(url, confirm_name(name))), 240,
                 "a confirmation job to run")
        launch.send_signal(signal.SIGINT)
        assert launch.wait(timeout=60) == 128 + signal.SIGINT
    finally:
        if launch.poll() is None:
            launch.kill()
    jobs = trials_of(url, confirm_name(name))
    assert not [t for t in jobs if t.state == TrialState.RUNNING]
    requeued = [t for t in jobs if t.state == TrialState.WAITING and "retry_of" in t.user_attrs]
    assert requeued and all("source_trial" in t.user_attrs and "rho" in t.user_attrs for t in requeued)
    status = runner.invoke(app, ["status", "--storage", url])
    text = " ".join(status.output.split())
    assert "waiting for a worker" in text and "confirmation running" not in text
    again = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "is complete" not in again.stdout  # it resumed the confirmation
    doc, [summary] = export_schedules(url, tmp_path / "s.json")
    assert summary.confirmation.done and doc.entries[0].confirmed is not None
    rows = summary.confirmation.rows
    assert all(r.source_trial >= 0 for r in rows) and sorted(r.kind for r in rows).count("baseline") == 1
    text = " ".join(runner.invoke(app, ["status", "--storage", url]).output.split())
    assert "trial -1" not in text and "(trial None)" not in text


# -- bounded loading and bounded schedules ------------------------------------------------------


def _peak(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float, float]:
    """Run the CLI in a child: its result, its own peak resident memory (GB) and wall time (s)."""
    start = time.monotonic()
    with open(cwd / "out.txt", "w+") as out, open(cwd / "err.txt", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "skipsearch", *args], cwd=cwd, env=_env(), stdout=out,
                                stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (RUSAGE_CHILDREN is all of them)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read())
    return result, usage.ru_maxrss / 2**20, time.monotonic() - start


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    from hostile_files import write_hostile_files

    return write_hostile_files(tmp_path_factory.mktemp("hostile"), tiny_checkpoint)


HOSTILE = [
    ("stride-0 pickle", ["sites", "--checkpoint", "stride0.pkl"], "expanded or overlapping view"),
    ("3 GiB BYTEARRAY8 in 12 bytes", ["sites", "--checkpoint", "bytearray8.pkl"], "declares 3,221,225,472 bytes but"),
    ("num_blocks 100000", ["sites", "--checkpoint", "blocks.pkl"], "num_blocks=100000 is outside"),
    ("oversized state dict config", ["sites", "--checkpoint", "sd.pt"], "describe a network of"),
    ("NFE 10^9", ["validate", "nfe-huge.json"], "1000000000 is greater than the maximum of 1000"),
    ("big-integer NFE", ["validate", "nfe-bigint.json"], "is greater than the maximum of 1000"),
    ("sample at NFE 10^9", ["sample", "--schedule", "nfe-huge.json", "-o", "g.png"], "greater than the maximum"),
    ("rho 1e30", ["score", "--schedule", "rho-huge.json", "--samples", "4"], "is greater than the maximum of 10"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, needle", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_hostile_files_end_in_one_line_in_bounded_memory_and_time(args: list[str], needle: str, hostile: Path) -> None:
    result, peak_gb, seconds = _peak(args, hostile)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert peak_gb < 2.0 and seconds < 30, (peak_gb, seconds)


@pytest.mark.slow
def test_fuzzed_pickles_end_in_one_error(tmp_path: Path) -> None:
    """300 mutants of a real snapshot (byte flips, opcode swaps, truncations), in a child whose peak
    memory is measured: each loads or fails with a CheckpointError, never anything else, and no
    library warning gets in front of that one line. The mutants are the same on every machine."""
    script = Path(__file__).with_name("fuzz_pickles.py")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "300"], capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["other"] == [], report["other"][:5]
    assert report["warned"] == [], report["warned"][:5]
    assert report["mutants"] == 300 and report["refused"] > 100 and not report["executed"]
    assert report["peak_gb"] < 2.0


# -- start-up is an outage like any other -------------------------------------------------------


def _worker_processes(url: str, n: int, cwd: Path, limit: float = 120) -> list[subprocess.Popen[str]]:
    cmd = [sys.executable, "-m", "skipsearch", "worker", "--device", "cpu", "--heartbeat", "2", "--grace", "30",
           "--outage-limit", str(limit)]
    env = dict(_env(url), OMP_NUM_THREADS="1")
    return [subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(n)]


@pytest.mark.slow
def test_six_workers_share_eight_connections(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """max_connections 8 and 6 workers that could want 12 (as 12 workers met 10, or hundreds meet
    PostgreSQL's default 100): those without a slot wait for one instead of exiting; the budget is
    met exactly, and no worker ever holds more than its 2 connections."""
    with own_postgres(max_connections=8) as server:
        url = server.url
        [p] = prepare_studies(url, [tiny_config(tiny_checkpoint, tmp_path, trials=8, samples=24)])
        procs = _worker_processes(url, 6, tmp_path)
        most = 0
        while any(proc.poll() is None for proc in procs):
            most = max(most, server.connections_per_process())
            threading.Event().wait(0.5)
        outputs = [proc.communicate()[0] for proc in procs]
        assert all(proc.returncode == 0 for proc in procs), "\n---\n".join(outputs)
        trials = trials_of(url, p.config.study_name)
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 8
        assert most <= 2, most
        assert any("storage unreachable" in out for out in outputs), "no worker met a full server: not tested"


@pytest.mark.slow
def test_a_worker_started_before_its_database_waits(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with own_postgres() as server:
        url = server.url
        [p] = prepare_studies(url, [tiny_config(tiny_checkpoint, tmp_path, trials=3)])
        server.stop()
        [worker] = _worker_processes(url, 1, tmp_path)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(worker.stdout), daemon=True)  # type: ignore[arg-type]
        reader.start()
        # the server comes back only once the worker has met the outage (its start-up takes seconds)
        wait_for(lambda: any("storage unreachable" in line for line in lines) or worker.poll() is not None, 180,
                 "the worker to meet the outage")
        assert worker.poll() is None, "".join(lines)  # waiting, not gone
        server.start()
        worker.wait(timeout=300)
        reader.join(timeout=30)
        output = "".join(lines)
        assert worker.returncode == 0, output
        assert "storage unreachable" in output and "reachable again" in output
        done = [t for t in trials_of(url, p.config.study_name) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(done) == 3


@pytest.mark.slow
def test_workers_through_pgbouncer_transaction_pooling(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The README's recipe for hundreds of workers: PgBouncer in transaction pooling in front of a
    server with few connections; studies are created once, and the budget is met."""
    from helpers import pgbouncer

    with own_postgres(max_connections=8) as server, pgbouncer(server, pool_size=4) as bouncer:
        url = bouncer.url
        configs = [tiny_config(tiny_checkpoint, tmp_path, trials=5, samples=24)]
        launches = [subprocess.Popen([sys.executable, "-c", "import sys; from helpers import tiny_config; "
                                      "from skipsearch.search import prepare_studies; from pathlib import Path; "
                                      f"prepare_studies({url!r}, [tiny_config(Path({str(tiny_checkpoint)!r}), "
                                      f"Path({str(tmp_path)!r}), trials=5, samples=24)])"],
                                     cwd=Path(__file__).parent, env=_env()) for _ in range(3)]
        assert all(proc.wait(timeout=120) == 0 for proc in launches)
        procs = _worker_processes(url, 6, tmp_path)
        outputs = [proc.communicate(timeout=600)[0] for proc in procs]
        assert all(proc.returncode == 0 for proc in procs), "\n---\n".join(outputs)
        trials = trials_of(url, configs[0].study_name)
        kinds = [t.user_attrs.get(KIND_ATTR) for t in trials]
        assert kinds.count("baseline") == 1 and len(trials) == 5
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 5


# -- finite or refused; one check for every consumer ---------------------------------------------


def test_a_schedule_for_another_checkpoint_is_refused_by_the_python_api(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import skipsearch as ss
    from conftest import TINY_NET

    from skipsearch.models.edm import EDMPrecond

    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save(EDMPrecond(**TINY_NET).state_dict(), other)
    shutil.copy(tiny_checkpoint.with_suffix(".json"), other.with_suffix(".json"))
    mine = ss.load_network(tiny_checkpoint)
    theirs = ss.load_network(other)
    from skipsearch.models.loading import checkpoint_sha256

    entry = {"model": {"family": "edm", "name": "edm-tiny", "sha256": checkpoint_sha256(str(tiny_checkpoint))},
             "solver": {"name": "euler", "nfe": 2}, "skips": {"count": 4, "order": "outermost-first"},
             "rho": [0.5, 1, 1, 1], "sigma_range": None, "params": {}, "score": None, "baseline": None, "study": None}
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format": "skipsearch.schedules/v1", "created": "2026-12-01T00:00:00Z",
                                "schedules": [entry]}))
    best = ss.load_schedules(path).best(model="edm-tiny")
    with ss.skip_tuned(mine, best):
        pass
    with pytest.raises(ss.ScheduleError, match="exported for checkpoint edm-tiny.*check_model=False"):
        with ss.skip_tuned(theirs, best):
            pass
    with ss.skip_tuned(theirs, best, check_model=False):
        pass
    with pytest.raises(ss.ScheduleError, match="exported for checkpoint"):
        ss.sample(theirs, range(2), schedule=ss.load_schedules(path).entry())


@pytest.mark.parametrize("args, needle", [
    (["sample", "--checkpoint", "nan.pt", "--nfe", "2", "--count", "2", "-o", "g.png"], "non-finite samples: 2/2"),
    (["score", "--checkpoint", "nan.pt", "--nfe", "2", "--samples", "4", "--ref", "builtin:edm-digits",
      "--features", "skipsearch-digits"], "non-finite samples: 4/4"),
], ids=["sample", "score"])
def test_non_finite_samples_are_refused_with_the_count(args: list[str], needle: str, tiny_checkpoint: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = torch.load(tiny_checkpoint, weights_only=True)
    state[next(k for k in state if k.endswith("weight"))].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    shutil.copy(tiny_checkpoint.with_suffix(".json"), tmp_path / "nan.json")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert not (tmp_path / "g.png").exists()


# -- versions and settings -------------------------------------------------------------------------


def test_a_study_from_a_newer_version_is_listed_and_refused(tiny_checkpoint: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    [p] = prepare_studies(url, [tiny_config(tiny_checkpoint, tmp_path, trials=2)])
    assert p.study.user_attrs[VERSION_ATTR]  # every study says which release made it
    p.study.set_user_attr(VERSION_ATTR, "9.0.0")
    status = runner.invoke(app, ["status", "--storage", url])
    assert status.exit_code == 0 and "created by skipsearch 9.0.0" in " ".join(status.output.split())
    for args in (["worker", "--storage", url, "--device", "cpu"],
                 ["worker", "--storage", url, "--device", "cpu", "--study", p.config.study_name]):
        result = runner.invoke(app, args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and "upgrade skipsearch" in lines[0], result.output
    p.study.set_user_attr(VERSION_ATTR, "0.1.0")  # an older release, but a setting nobody knows yet
    raw = json.loads(p.study.user_attrs["skipsearch_config"])
    p.study.set_user_attr("skipsearch_config", json.dumps({**raw, "warp_spline": 3}))
    result = runner.invoke(app, ["worker", "--storage", url, "--device", "cpu"])
    assert result.exit_code == 2 and "warp_spline" in result.stderr and "upgrade" in result.stderr


def test_a_relaunch_says_which_settings_it_keeps(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    base = ["launch", "--storage", url, "--checkpoint", str(tiny_checkpoint), "--study", "edm-tiny", "--solver",
            "euler", "--nfe", "2", "--samples", "24", "--ref", "builtin:edm-digits", "--features", "skipsearch-digits",
            "--no-workers"]
    assert runner.invoke(app, [*base, "--batch-size", "8"]).exit_code == 0
    again = runner.invoke(app, [*base, "--batch-size", "4", "--confirm-top", "1"])
    text = " ".join(again.output.split())
    assert again.exit_code == 0
    assert "keeps its batch_size 8 (you gave 4)" in text and "keeps its confirm_top 3 (you gave 1)" in text
