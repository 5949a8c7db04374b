"""The sampling recipe an exported entry records is the one `score`, `sample` and the Python API
use: every field of the file that decides the images changes what they compute (or, where two
fields must agree, an edit of one alone is refused), and the search records what it sampled."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_NET
from helpers import tiny_config

import skipsearch as ss
from skipsearch.errors import ScheduleFileError, UsageError
from skipsearch.models.edm import EDMPrecond
from skipsearch.recipe import SamplingRecipe
from skipsearch.schedule_file import ScheduleEntry
from skipsearch.scoring import make_scorer, score_schedules
from skipsearch.steps import edm_sigma_list

SEEDS = range(40)


def _net(seed: int) -> EDMPrecond:
    torch.manual_seed(seed)
    return EDMPrecond(**TINY_NET).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def net() -> EDMPrecond:
    return _net(0)


def _entry(**solver: object) -> dict:
    fields = {"name": "ipndm", "nfe": 3, "sigma_min": 0.002, "sigma_max": 80.0, "time_exponent": 7.0,
              "sigmas": edm_sigma_list(3), "params": {"max_order": 4}}
    fields.update(solver)
    return {"model": {"family": "edm", "name": "edm-tiny", "sha256": None}, "solver": fields,
            "skips": {"count": 4, "order": "outermost-first"}, "rho": [0.6, 1.0, 1.0, 0.9], "sigma_range": None,
            "params": {}, "score": None, "baseline": None, "study": None}


def _fid(net: EDMPrecond, data: dict, guide: torch.nn.Module | None = None) -> float:
    entry = ScheduleEntry.from_json(data)
    scorer = make_scorer(net, "skipsearch-digits", "builtin:edm-digits")
    settings = SamplingRecipe(batch_size=20).with_networks(guide=guide)
    [row] = score_schedules(scorer, net, [entry], SEEDS, settings=settings)
    return row.tuned  # type: ignore[return-value]


def _without(data: dict, *keys: str) -> dict:
    out = copy.deepcopy(data)
    for key in keys:
        out["solver"].pop(key)
    return out


EDITS = {
    "solver.name": lambda d: {**d, "solver": {**_without(d, "params")["solver"], "name": "dpmpp_2m"}},
    "solver.nfe": lambda d: {**d, "solver": {**_without(d, "sigmas")["solver"], "nfe": 5}},
    "solver.time_exponent": lambda d: {**d, "solver": {**_without(d, "sigmas")["solver"], "time_exponent": 3.0}},
    "solver.sigma_max": lambda d: {**d, "solver": {**_without(d, "sigmas")["solver"], "sigma_max": 20.0}},
    "solver.sigma_min": lambda d: {**d, "solver": {**_without(d, "sigmas")["solver"], "sigma_min": 0.05}},
    "solver.sigmas": lambda d: {**d, "solver": {**_without(d, "sigma_min", "sigma_max", "time_exponent")["solver"],
                                                "sigmas": [60.0, 5.0, 0.3, 0.0]}},
    "solver.params": lambda d: {**d, "solver": {**d["solver"], "params": {"max_order": 1}}},
    "rho": lambda d: {**d, "rho": [0.9, 1.0, 1.0, 0.6]},
    "sigma_range": lambda d: {**d, "sigma_range": [0.5, 10.0]},
}


@pytest.mark.parametrize("field", sorted(EDITS))
def test_each_recorded_field_changes_what_score_computes(field: str, net: EDMPrecond) -> None:
    base = _entry()
    edited = EDITS[field](base)
    assert edited != base
    assert abs(_fid(net, edited) - _fid(net, base)) > 1e-6, f"editing {field} changed nothing"


def test_guidance_recorded_in_the_file_is_applied(net: EDMPrecond) -> None:
    guided = _entry(params={"max_order": 4, "guide": "g", "guide_sha256": None, "guidance": 1.7, "guide_tuned": False})
    guide = _net(1)
    assert abs(_fid(net, guided, guide) - _fid(net, _entry())) > 1e-6
    with pytest.raises(UsageError, match="autoguidance"):
        _fid(net, guided)  # no guide given: refused, never sampled unguided


def test_a_sigma_list_that_disagrees_with_its_grid_is_refused(net: EDMPrecond) -> None:
    stale = _entry(time_exponent=3.0)  # the list is still the exponent-7 grid
    with pytest.raises(ScheduleFileError, match="do not follow from sigma_min"):
        _fid(net, stale)
    short = _without(_entry(sigmas=[80.0, 1.0, 0.0]), "sigma_min", "sigma_max", "time_exponent")
    with pytest.raises(ScheduleFileError, match="sigmas has 3 entries but ipndm at NFE 3 takes 3 steps: it needs 4"):
        _fid(net, short)


def test_the_python_api_samples_an_entry_with_its_recipe(net: EDMPrecond) -> None:
    data = _without(_entry(name="euler", nfe=2, sigmas=[80.0, 0.5, 0.0]), "params", "sigma_min", "sigma_max",
                    "time_exponent")
    entry = ScheduleEntry.from_json(data)
    by_entry = ss.sample(net, range(3), schedule=entry)
    by_hand = ss.sample(net, range(3), solver="euler", nfe=2, sigmas=[80.0, 0.5, 0.0], schedule=entry.schedule)
    assert torch.equal(by_entry, by_hand)
    default_steps = ss.sample(net, range(3), solver="euler", nfe=2, schedule=entry.schedule)
    assert not torch.equal(by_entry, default_steps)


@pytest.mark.slow
def test_an_export_records_what_its_search_sampled(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The σ list, grid and solver parameters in an export reproduce the study's own steps."""
    from skipsearch.search import export_schedules, prepare_studies, run_worker

    url = f"sqlite:///{tmp_path / 'r.db'}"
    prepare_studies(url, [tiny_config(tiny_checkpoint, tmp_path, solver="ipndm", nfe=3, trials=3, time_exponent=5.0)])
    run_worker(url, None, log=lambda m: None)
    doc, _ = export_schedules(url, tmp_path / "s.json")
    [entry] = doc.entries
    data = json.loads((tmp_path / "s.json").read_text())["schedules"][0]["solver"]
    assert data["time_exponent"] == 5.0 and data["params"] == {"max_order": 4}
    assert entry.recipe().steps.agrees_with_grid()
    assert list(entry.sigmas) == pytest.approx(edm_sigma_list(3, 0.002, 80.0, 5.0), rel=1e-12)
