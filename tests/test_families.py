"""Families: one schedule for every NFE, fitted in ln(NFE), written in v1.2 files, read by consumers;
and the steps spaces end to end in real CLI processes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import run_cli, trials_of
from optuna.trial import TrialState

from skipsearch import load_schedules
from skipsearch.errors import ScheduleFileError
from skipsearch.family import ScheduleFamily, fit_line
from skipsearch.schedule_file import (
    FORMAT,
    FORMAT_V1_1,
    FORMAT_V1_2,
    ScheduleDocument,
    ScheduleEntry,
    dump_schedules,
    validate_document,
    validate_entry,
)
from skipsearch.solvers import get_solver
from skipsearch.steps import TimeSteps, edm_sigma_list

SITES = [{"index": i, "resolution": r, "channels": 8, "block": f"b{i}", "encoder": f"e{i}"}
         for i, r in enumerate([16, 16, 8, 8])]


def family(**kw: object) -> ScheduleFamily:
    base = dict(
        model_name="net", solver="euler", space="linear+steps", nfe_range=(6, 14),
        fit={"rho_top": (0.2, 0.2), "rho_bottom": (1.0, 0.0), "curve": (-1.0, 0.0),
             "steps.exponent": (2.0, 2.0), "steps.crowd_high": (0.5, -0.1), "steps.crowd_low": (0.0, 0.1)},
        bounds={"rho_top": (0.3, 1.1), "rho_bottom": (0.3, 1.1), "curve": (-2.0, 2.0), "steps.exponent": (2.0, 20.0),
                "steps.crowd_high": (-2.0, 2.0), "steps.crowd_low": (-2.0, 2.0)},
        studies=[{"name": f"net/euler/nfe{n}", "nfe": n, "params": {}, "confirmed": True, "residuals": {}}
                 for n in (6, 10, 14)],
        sites=SITES,
    )
    base.update(kw)
    return ScheduleFamily(**base)  # type: ignore[arg-type]


def entry(nfe: int, **kw: object) -> ScheduleEntry:
    fields = dict(model_name="net", solver="euler", nfe=nfe, rho=[0.5, 0.6, 0.7, 0.8],
                  score={"metric": "proxy-fid", "value": 10.0, "samples": 100})
    fields.update(kw)
    return ScheduleEntry(**fields)  # type: ignore[arg-type]


# -- the fit ---------------------------------------------------------------------------------------


def test_fit_line_recovers_a_line_in_log_nfe() -> None:
    nfes = [6, 10, 14]
    a, b = fit_line(nfes, [0.3 + 0.25 * math.log(n) for n in nfes])
    assert a == pytest.approx(0.3) and b == pytest.approx(0.25)
    assert fit_line([8, 8], [1.0, 3.0]) == (2.0, 0.0), "one NFE: the mean, flat"


def test_family_evaluates_clamped_within_range_and_refuses_outside() -> None:
    fam = family()
    p = fam.params_at(8)
    assert p["rho_top"] == pytest.approx(max(0.3, 0.2 + 0.2 * math.log(8)))
    assert p["steps.exponent"] == pytest.approx(2.0 + 2.0 * math.log(8))
    assert family(fit={**fam.fit, "rho_top": (5.0, 0.0)}).params_at(8)["rho_top"] == 1.1, "clamped to the search's bounds"
    for nfe in (5, 15):
        with pytest.raises(ScheduleFileError) as err:
            fam.params_at(nfe)
        assert "\n" not in str(err.value) and "6..14" in str(err.value) and f"NFE {nfe}" in str(err.value)


@pytest.mark.parametrize("solver, nfe", [("euler", 8), ("euler", 12), ("heun", 9), ("dpmpp_2m", 7)])
def test_family_entry_is_a_concrete_valid_schedule(solver: str, nfe: int) -> None:
    fam = family(solver=solver)
    e = ScheduleEntry(**fam.entry_fields(nfe))
    validate_entry(e.to_json())
    p = fam.params_at(nfe)
    steps = TimeSteps(time_exponent=p["steps.exponent"], warp=(p["steps.crowd_high"], p["steps.crowd_low"]))
    assert list(e.sigmas) == steps.sigma_list(get_solver(solver).steps_for_nfe(nfe))
    assert e.recipe().nfe == nfe and e.recipe().steps.sigma_list(get_solver(solver).steps_for_nfe(nfe)) == list(e.sigmas)
    assert len(e.rho) == len(SITES) and e.study["family"] == "linear-in-log-nfe"
    # its baseline is the studies': ρ = 1 on the grid's own steps, so `score`'s change is the whole gain
    n = get_solver(solver).steps_for_nfe(nfe)
    assert e.baseline_recipe().steps.sigma_list(n) == edm_sigma_list(n) != list(e.sigmas)


def test_a_rho_only_family_keeps_the_studies_steps() -> None:
    fam = family(space="linear", fit={"rho_top": (0.5, 0.0), "rho_bottom": (0.9, 0.0), "curve": (0.0, 0.0)},
                 time_exponent=5.0)
    e = ScheduleEntry(**fam.entry_fields(10))
    assert list(e.sigmas) == edm_sigma_list(10, time_exponent=5.0) and e.warp is None
    assert e.baseline is None and e.baseline_recipe() == e.recipe()


# -- the file ----------------------------------------------------------------------------------


def test_document_with_families_round_trips_as_v1_2(tmp_path: Path) -> None:
    doc = ScheduleDocument([entry(6), entry(14)], "2026-12-01T00:00:00Z", families=[family()])
    dump_schedules(doc, tmp_path / "f.json")
    raw = json.loads((tmp_path / "f.json").read_text())
    assert raw["format"] == FORMAT_V1_2
    validate_document(raw)
    back = load_schedules(tmp_path / "f.json")
    assert back.families == [family()] and back.entries == doc.entries
    # an NFE with an entry gives the entry; one between gives the family there
    assert back.entry(nfe=6) == doc.entries[0]
    at10 = back.entry(nfe=10)
    assert at10.study["family"] and at10.nfe == 10 and len(at10.sigmas) == 11
    assert list(back.best(nfe=10).rho) == list(at10.rho)
    with pytest.raises(ScheduleFileError) as err:
        back.entry(nfe=20)
    assert "\n" not in str(err.value) and "outside" in str(err.value)


def test_old_v1_and_v1_1_files_still_load_and_keep_their_format(tmp_path: Path) -> None:
    v1 = {"format": FORMAT, "created": "2024-01-01T00:00:00Z", "schedules": [entry(10).to_json()]}
    v11 = dict(v1, format=FORMAT_V1_1, schedules=[entry(10, sigmas=edm_sigma_list(10), sites=SITES).to_json()])
    for data, fmt in ((v1, FORMAT), (v11, FORMAT_V1_1)):
        path = tmp_path / "old.json"
        path.write_text(json.dumps(data))
        doc = load_schedules(path)
        assert doc.format == fmt and doc.families == [] and doc.entry(nfe=10).nfe == 10
        dump_schedules(doc, tmp_path / "again.json")
        assert json.loads((tmp_path / "again.json").read_text())["format"] == fmt, "no needless version bump"


@pytest.mark.parametrize("change, expected", [
    (lambda f: f.update(nfe_range=[14, 6]), "reversed"),
    (lambda f: f.update(space="spiral+steps"), "unknown space"),
    (lambda f: f["fit"]["params"]["rho_top"].update(slope=float("inf")), "finite"),
    (lambda f: f.update(sites=f["sites"][1:]), "indices"),
    (lambda f: f.pop("fit"), "fit"),
])
def test_bad_family_is_refused_in_one_line(tmp_path: Path, change, expected: str) -> None:
    raw = ScheduleDocument([entry(6)], "2026-12-01T00:00:00Z", families=[family()]).to_json()
    change(raw["families"][0])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ScheduleFileError) as err:
        load_schedules(path)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_python_api_takes_a_family_and_an_nfe() -> None:
    """`sample(net, seeds, schedule=doc, nfe=...)`, `skip_tuned(net, doc.best(nfe=...))` and `score` all
    evaluate the family at that NFE: the same ρ and σ steps as its concrete entry."""
    import torch

    import skipsearch as ss

    net = ss.load_network("builtin:edm-digits")
    sites = [{"index": s.index, "resolution": s.resolution, "channels": s.channels, "block": f"b{s.index}",
              "encoder": f"e{s.index}"} for s in ss.skip_sites(net)]
    fam = family(model_name="edm-digits", sites=sites)
    doc = ScheduleDocument([], "2026-12-01T00:00:00Z", families=[fam])
    seeds = range(3)
    by_doc = ss.sample(net, seeds, schedule=doc, nfe=8)
    concrete = ScheduleEntry(**fam.entry_fields(8))
    assert torch.equal(by_doc, ss.sample(net, seeds, schedule=concrete))
    with ss.skip_tuned(net, doc.best(nfe=8)):
        by_hand = ss.sample(net, seeds, solver="euler", nfe=8, sigmas=concrete.sigmas)
    assert torch.equal(by_doc, by_hand)
    assert not torch.equal(by_doc, ss.sample(net, seeds, solver="euler", nfe=8)), "the family changed something"
    with pytest.raises(ScheduleFileError, match="outside"):
        ss.sample(net, seeds, schedule=doc, nfe=20)


# -- end to end: a steps search, a family, its consumers (real CLI processes) -----------------------


@pytest.mark.slow
def test_steps_search_exports_a_family_that_score_and_sample_use(tiny_checkpoint: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    common = ["--checkpoint", str(tiny_checkpoint), "--ref", "builtin:edm-digits", "--features", "skipsearch-digits"]
    launch = run_cli("launch", "--storage", url, *common, "--study", "edm-tiny", "--solver", "euler", "--nfe", "3", "5",
                  "--space", "linear+steps", "--samples", "40", "--batch-size", "20", "--trials", "5",
                  "--confirm-top", "1", "--confirm-samples", "60", "--device", "cpu", cwd=tmp_path)
    assert launch.returncode == 0, launch.stdout + launch.stderr
    for nfe in (3, 5):
        trials = [t for t in trials_of(url, f"edm-tiny/euler/nfe{nfe}") if t.state == TrialState.COMPLETE]
        kinds = {t.user_attrs["skipsearch_trial_kind"]: t for t in trials}
        base = kinds["baseline"]
        assert base.user_attrs["sigmas"] == pytest.approx(edm_sigma_list(nfe)), "the baseline is on EDM's steps"
        assert base.params["steps.exponent"] == 7.0 and base.params["rho_top"] == 1.0
        for t in trials:  # every trial sampled on the steps its parameters give, with exactly `nfe` steps
            steps = TimeSteps(time_exponent=t.params["steps.exponent"],
                              warp=(t.params["steps.crowd_high"], t.params["steps.crowd_low"]))
            assert t.user_attrs["sigmas"] == pytest.approx(steps.sigma_list(nfe)), t.number
    status = run_cli("status", "--storage", url, cwd=tmp_path)
    assert status.returncode == 0 and "steps.exponent" in status.stdout, status.stdout
    assert "σ 80" in status.stdout, "the confirmed table shows the σ list's extremes"

    out = tmp_path / "fam.json"
    export = run_cli("export", "--storage", url, "--family", "-o", str(out), cwd=tmp_path)
    assert export.returncode == 0 and "1 family" in export.stdout, export.stdout + export.stderr
    raw = json.loads(out.read_text())
    validate_document(raw)
    [fam] = raw["families"]
    assert raw["format"] == FORMAT_V1_2 and fam["nfe_range"] == [3, 5] and fam["space"] == "linear+steps"
    assert [s["nfe"] for s in fam["studies"]] == [3, 5] and all(s["confirmed"] for s in fam["studies"])
    assert set(fam["studies"][0]["residuals"]) == set(fam["fit"]["params"])
    assert run_cli("validate", str(out), cwd=tmp_path).returncode == 0

    sigmas = run_cli("export", "--storage", url, "--family", "--sigmas", cwd=tmp_path)
    lines = sigmas.stdout.splitlines()
    assert sigmas.returncode == 0 and any(line.startswith("edm-tiny/euler/nfe4 (family): 80") for line in lines), lines
    four = [line for line in lines if line.startswith("edm-tiny/euler/nfe4")][0]
    assert len(four.split(":", 1)[1].split(",")) == 5, "4 steps: 5 σ ending in 0"

    score = run_cli("score", *common, "--schedule", str(out), "--nfe", "4", "--samples", "60", "--batch-size", "20",
                 "--json", cwd=tmp_path)
    assert score.returncode == 0, score.stderr
    [row] = [json.loads(line) for line in score.stdout.splitlines()]
    assert row["solver"] == "euler" and row["nfe"] == 4
    assert all(math.isfinite(row[k]) for k in ("baseline_fid", "schedule_fid", "change"))
    outside = run_cli("score", *common, "--schedule", str(out), "--nfe", "9", "--samples", "60", cwd=tmp_path)
    assert outside.returncode == 2 and len(outside.stderr.strip().splitlines()) == 1 and "outside" in outside.stderr
    png = tmp_path / "four.png"
    sample = run_cli("sample", "--checkpoint", str(tiny_checkpoint), "--schedule", str(out), "--nfe", "4", "--count", "4",
                  "-o", str(png), cwd=tmp_path)
    assert sample.returncode == 0 and png.stat().st_size > 0, sample.stderr
