"""Confirmation on held-out seeds: queued once, shared by workers, exported, reproducible by `score`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import optuna
import pytest
from helpers import tiny_config, trials_of
from optuna.trial import TrialState
from typer.testing import CliRunner

from skipsearch import load_schedules
from skipsearch.cli import app
from skipsearch.search import StorageSettings, export_schedules, prepare_studies, spawn_workers, study_summaries
from skipsearch.search._confirm import confirm_name
from skipsearch.search.attrs import KIND_ATTR
from skipsearch.search.storage import open_storage

runner = CliRunner()


def _config(checkpoint: Path, tmp_path: Path, **kw):
    return tiny_config(checkpoint, tmp_path, **{"trials": 6, "samples": 60, "batch_size": 30, "confirm_top": 2,
                                                "bootstrap": 50, **kw})


@pytest.mark.slow
def test_two_workers_confirm_each_schedule_once(storage_url: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    [p] = prepare_studies(storage_url, [_config(tiny_checkpoint, tmp_path)])
    procs = spawn_workers(storage_url, [p.config.study_name], ["cpu", "cpu"], tmp_path / "logs", StorageSettings())
    for w in procs:
        assert w.process.wait(timeout=300) == 0, w.log.read_text()
    jobs = trials_of(storage_url, confirm_name(p.config.study_name))
    sources = Counter(t.user_attrs["source_trial"] for t in jobs)
    assert all(t.state == TrialState.COMPLETE for t in jobs) and max(sources.values()) == 1
    kinds = sorted(t.user_attrs["skipsearch_trial_kind"] for t in jobs)
    assert kinds.count("baseline") == 1 and len(jobs) in (3, 4)  # baseline, the 2 best, the paper unless among them
    search = {t.number: t for t in trials_of(storage_url, p.config.study_name)}
    best_two = sorted((t for t in search.values() if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    best_two = [t for t in best_two if t.user_attrs["skipsearch_trial_kind"] != "baseline"][:2]
    assert {t.number for t in best_two} <= set(sources)
    for job in jobs:  # the same schedule, re-scored on the held-out seeds
        source = search[job.user_attrs["source_trial"]]
        assert job.params == source.params and job.user_attrs["samples"] == 240
        assert len(job.user_attrs["bootstrap"]) == 50
    [summary] = study_summaries(open_storage(storage_url))
    c = summary.confirmation
    assert c is not None and c.done and c.seeds == (100_000_000, 100_000_239)
    assert summary.confirmed and c.best is not None and c.best.gain_interval is not None
    workers = {job.user_attrs["worker"] for job in jobs}
    assert len(workers) >= 1


@pytest.mark.slow
def test_export_carries_the_confirmation_and_score_reproduces_it(tiny_checkpoint: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from skipsearch.search import run_worker

    url = f"sqlite:///{tmp_path / 'e.db'}"
    [p] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path)])
    run_worker(url, None, log=lambda m: None)
    doc, [summary] = export_schedules(url, tmp_path / "s.json")
    raw = json.loads((tmp_path / "s.json").read_text())
    assert raw["format"] == "skipsearch.schedules/v1.1"
    [entry] = doc.entries
    best = summary.confirmation.best
    assert entry.confirmed["value"] == best.value and entry.study["trial"] == best.source_trial
    assert entry.confirmed["seeds"] == [100_000_000, 100_000_239] and entry.confirmed["samples"] == 240
    lo, hi = entry.confirmed["gain_interval"]
    assert lo <= entry.confirmed["gain"] <= hi and entry.confirmed["significant"] == (lo > 0 or hi < 0)
    assert entry.sigmas[0] == pytest.approx(80.0) and entry.sigmas[-1] == 0.0 and len(entry.sigmas) == 3
    assert [s["block"] for s in entry.sites] == ["model.dec.8x8_block1", "model.dec.8x8_block0",
                                               "model.dec.4x4_block1", "model.dec.4x4_block0"]
    assert load_schedules(tmp_path / "s.json").entries == doc.entries
    # `score` on the same held-out seeds gives the same numbers: the confirmation is reproducible.
    result = runner.invoke(app, ["score", "--checkpoint", str(tiny_checkpoint), "--schedule", str(tmp_path / "s.json"),
                                 "--ref", "builtin:edm-digits", "--features", "skipsearch-digits", "--samples", "240",
                                 "--seeds", "100000000", "--batch-size", "30"])
    assert result.exit_code == 0, result.output
    assert f"{best.value:.3f}" in result.output and f"{summary.confirmation.baseline.value:.3f}" in result.output
    status = runner.invoke(app, ["status", "--storage", url])
    text = " ".join(status.output.split())
    assert "confirmed on held-out seeds 100000000..100000239" in text and "confirmed best trial" in text


@pytest.mark.slow
def test_confirm_on_demand(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    [p] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, confirm_top=0)])
    early = runner.invoke(app, ["confirm", "--storage", url])
    assert early.exit_code == 2 and "still searching (0/6 trials)" in early.stderr and "--now" in early.stderr
    from skipsearch.search import run_worker

    run_worker(url, None, log=lambda m: None)  # confirm_top 0: the workers do not confirm by themselves
    with pytest.raises(KeyError):
        optuna.load_study(study_name=confirm_name(p.config.study_name), storage=open_storage(url))
    done = runner.invoke(app, ["confirm", "--storage", url, "--top", "1", "--device", "cpu"])
    assert done.exit_code == 0, done.output
    jobs = trials_of(url, confirm_name(p.config.study_name))
    assert len(jobs) in (2, 3) and all(t.state == TrialState.COMPLETE for t in jobs)
    assert "confirmed best trial" in " ".join(done.output.split())


@pytest.mark.slow
def test_neighbouring_nfes_start_from_each_others_confirmed_best(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from skipsearch.search import run_worker
    from skipsearch.search._confirm import summarize_confirmation

    url = f"sqlite:///{tmp_path / 'w.db'}"
    # NFE 4 exists (searching) when NFE 2 finishes: it gets NFE 2's best in place of an empty slot.
    [two, four] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, nfe=2), _config(tiny_checkpoint, tmp_path, nfe=4)])
    run_worker(url, [two.config.study_name], log=lambda m: None)
    best = summarize_confirmation(open_storage(url), two.config.study_name, two.config).best
    warm = [t for t in trials_of(url, four.config.study_name) if t.user_attrs.get("skipsearch_trial_kind") == "warm"]
    assert [t.system_attrs["fixed_params"] for t in warm] == [best.params]
    assert warm[0].state == TrialState.WAITING and warm[0].user_attrs["warm_from"] == two.config.study_name
    assert len(trials_of(url, four.config.study_name)) == 6  # a slot was filled in, none added
    # NFE 3, created now, queues the confirmed best of its neighbour below (NFE 2) right after its baseline.
    [three] = prepare_studies(url, [_config(tiny_checkpoint, tmp_path, nfe=3)])
    kinds = [t.user_attrs["skipsearch_trial_kind"] for t in trials_of(url, three.config.study_name)]
    assert kinds[:2] == ["baseline", "warm"] and len(kinds) == 6
    # Idempotent: preparing again adds nothing.
    prepare_studies(url, [_config(tiny_checkpoint, tmp_path, nfe=3)])
    assert len(trials_of(url, three.config.study_name)) == 6


def _finished(number: int, value: float, kind: str = "search") -> optuna.trial.FrozenTrial:
    from optuna.distributions import FloatDistribution

    trial = optuna.trial.create_trial(value=value, params={"x": float(number)},
                                      distributions={"x": FloatDistribution(0, 100)}, user_attrs={KIND_ATTR: kind})
    trial.number = number
    return trial


def test_schedules_worse_than_the_baseline_beyond_its_noise_are_not_confirmed() -> None:
    """Confirming a schedule the search already found worse than the baseline (FID 1149 against 28,
    say) only confirms that it is worse: the top k stop at the baseline's score plus its noise."""
    from skipsearch.search._confirm import plan

    trials = [_finished(0, 100.0, "baseline"), _finished(1, 130.0, "paper"), _finished(2, 90.0),
              _finished(3, 103.0), _finished(4, 1149.0)]
    numbers = lambda jobs: [t.number for t in jobs]  # noqa: E731
    assert numbers(plan(trials, 3, sealed=False, noise=5.0)) == [0, 2, 3, 1]  # the paper's point always
    assert numbers(plan(trials, 3, sealed=False)) == [0, 2, 1]
    assert numbers(plan(trials, 3, sealed=False, noise=float("inf"))) == [0, 2, 3, 1]  # the paper among the best 3
    assert numbers(plan(trials[1:], 3, sealed=False)) == [2, 3, 1]  # no baseline: nothing to measure against
