"""The exported schedules file (`skipsearch.schedules/v1`): validation, round trip, atomic writes."""

from __future__ import annotations

import fnmatch
import json
import os
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest

from skipsearch.schedule import SkipSchedule, linear_rho
from skipsearch.schedule_file import (
    FORMAT,
    SCHEMA_RESOURCE,
    ScheduleDocument,
    ScheduleEntry,
    ScheduleFileError,
    dump_schedules,
    entry_from_schedule,
    load_schedules,
    validate_document,
)

SHA_A = "a" * 64
SHA_REF = "0123456789abcdef" * 4


def _entry(model: str = "edm-a", solver: str = "heun", nfe: int = 19, value: float | None = 2.0, k: int = 4, **kw):
    score = None if value is None else {"metric": "proxy-fid", "value": value, "samples": 5000}
    return entry_from_schedule(
        SkipSchedule.linear(k, 1.0, 0.5), model_name=model, solver=solver, nfe=nfe, score=score, **kw
    )


def _doc_dict(**entry_overrides) -> dict:
    """The DESIGN.md §5 example with concrete values."""
    entry = {
        "model": {"family": "edm", "name": "edm-imagenet-64x64-cond-adm", "sha256": SHA_A},
        "solver": {"name": "heun", "nfe": 19, "sigma_min": 0.002, "sigma_max": 80, "time_exponent": 7},
        "skips": {"count": 16, "order": "outermost-first"},
        "rho": linear_rho(16, 1.0, 0.5),
        "sigma_range": None,
        "params": {"rho_top": 1.0, "rho_bottom": 0.5, "curve": 0.0},
        "score": {"metric": "proxy-fid", "value": 2.1, "samples": 5000,
                  "features": "inception-v3-compat", "reference_sha256": SHA_REF},
        "baseline": {"value": 4.0},
        "study": {"name": "edm-imagenet-64x64-cond-adm/heun/nfe19", "trial": 17, "trials_complete": 100},
    }
    entry.update(entry_overrides)
    return {"format": FORMAT, "created": "2026-11-27T12:00:00Z", "schedules": [entry]}


def _write(tmp_path: Path, data: dict | str, name: str = "s.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _error(data) -> str:
    with pytest.raises(ScheduleFileError) as info:
        validate_document(data)
    return str(info.value)


# ---------------------------------------------------------------------------- schema


def test_schema_ships_in_package_and_is_a_valid_draft_2020_12_schema():
    text = files("skipsearch").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # ... and setuptools' package-data patterns include it, so a wheel carries it too.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["skipsearch"]
    assert any(fnmatch.fnmatch(SCHEMA_RESOURCE, p) for p in patterns)


def test_design_example_is_valid_and_parses():
    doc = ScheduleDocument.from_json(_doc_dict())
    (entry,) = doc.entries
    assert (entry.model_name, entry.solver, entry.nfe) == ("edm-imagenet-64x64-cond-adm", "heun", 19)
    assert entry.num_skips == 16 and entry.model_sha256 == SHA_A and entry.time_exponent == 7.0
    assert entry.score["features"] == "inception-v3-compat"
    assert doc.created == "2026-11-27T12:00:00Z"


def test_the_schema_alone_rejects_what_v1_forbids():
    """Other tools validate with the schema only; it must enforce the format and shapes itself."""
    validator = jsonschema.Draft202012Validator(json.loads(files("skipsearch").joinpath(SCHEMA_RESOURCE).read_text()))
    assert validator.is_valid(_doc_dict())
    bad = [
        {**_doc_dict(), "format": "skipsearch.schedules/v2"},
        {**_doc_dict(), "created": "yesterday"},
        _doc_dict(rho=[]),
        _doc_dict(rho=[1.0, -0.5]),
        _doc_dict(skips={"count": 16, "order": "innermost-first"}),
        _doc_dict(sigma_range=[1.0]),
        _doc_dict(solver={"name": "heun", "nfe": 0}),
    ]
    for data in bad:
        assert not validator.is_valid(data), data


# ---------------------------------------------------------------------------- versions


def test_unknown_major_version_is_rejected_with_upgrade_message(tmp_path):
    data = {**_doc_dict(), "format": "skipsearch.schedules/v2", "schedules": "a v2 layout we cannot know"}
    with pytest.raises(ScheduleFileError) as info:
        load_schedules(_write(tmp_path, data))
    assert str(info.value).endswith(
        "schedules file format 'skipsearch.schedules/v2' is newer than this skipsearch understands (v1); "
        "upgrade skipsearch"
    )


def test_minor_version_and_unknown_keys_are_accepted(tmp_path):
    data = _doc_dict(new_in_v1_3={"anything": [1, 2]})
    data["format"] = "skipsearch.schedules/v1.3"
    data["producer"] = "skipsearch 1.9"
    data["schedules"][0]["score"]["ci95"] = [2.0, 2.2]
    doc = load_schedules(_write(tmp_path, data))
    assert doc.best(nfe=19).rho == tuple(linear_rho(16, 1.0, 0.5))


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"schedules": []}, "not a skipsearch schedules file (no \"format\" key"),
        ({"format": "optuna.export/v1"}, "not a skipsearch schedules file (format 'optuna.export/v1'"),
        ([1, 2], "not a skipsearch schedules file: the top level is a list"),
        ({"format": "skipsearch.schedules/version-one"}, "has an unrecognised version"),
    ],
)
def test_not_a_schedules_file(data, expected):
    assert expected in _error(data)


# ---------------------------------------------------------------------------- content checks


def test_rho_length_must_match_skips_count():
    data = _doc_dict(rho=linear_rho(15, 1.0, 0.5))
    data["schedules"][0]["model"]["name"] = "X"
    data["schedules"][0]["solver"]["nfe"] = 10
    data["schedules"].insert(0, _doc_dict()["schedules"][0])
    assert "$.schedules[1] (model X, solver heun, nfe 10): rho has 15 values but skips.count is 16" in _error(data)


def test_schema_errors_name_the_json_path():
    data = _doc_dict()
    data["schedules"][0]["solver"]["nfe"] = 0
    message = _error(data)
    assert message.startswith("$.schedules[0].solver.nfe: 0 is less than the minimum of 1")
    assert "\n" not in message


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"rho": [1.0, float("nan")] + [1.0] * 14},
            "$.schedules[0] (model edm-imagenet-64x64-cond-adm, solver heun, nfe 19): "
            "rho[1] is nan; every number must be finite",
        ),
        ({"rho": [float("inf")] + [1.0] * 15}, ": rho[0] is inf"),
        ({"sigma_range": [5.0, 1.0]}, "sigma_range [5.0, 1.0] is empty"),
        ({"params": {"curve": float("nan")}}, ": params.curve is nan"),
    ],
)
def test_semantic_checks(overrides, expected):
    assert expected in _error(_doc_dict(**overrides))


def test_created_must_be_a_real_timestamp():
    assert "$.created: '2026-13-45T12:00:00Z' is not an RFC 3339 date-time" in _error(
        {**_doc_dict(), "created": "2026-13-45T12:00:00Z"}
    )


def test_nan_literal_in_file_is_reported_by_path(tmp_path):
    text = json.dumps(_doc_dict()).replace('"rho": [1.0,', '"rho": [NaN,')
    with pytest.raises(ScheduleFileError, match=r": rho\[0\] is nan"):
        load_schedules(_write(tmp_path, text))


def test_invalid_json_names_line_and_column(tmp_path):
    path = _write(tmp_path, '{\n  "format": "skipsearch.schedules/v1",\n  "created": ,\n}')
    with pytest.raises(ScheduleFileError) as info:
        load_schedules(path)
    assert str(info.value) == f"{path} is not valid JSON: line 3 column 14: Expecting value"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ScheduleFileError, match=r"schedules file .*nope\.json does not exist; create it with"):
        load_schedules(tmp_path / "nope.json")


def test_wrong_rho_length_for_the_model(tmp_path):
    path = dump_schedules([_entry(k=15)], tmp_path / "s.json").source
    entry = load_schedules(path).entry(model="edm-a")
    entry.check_num_skips(15)
    message = "wrong rho length for the model: schedule edm-a/heun/nfe19 has 15 coefficients, network has 16 skip sites"
    with pytest.raises(ScheduleFileError, match=message):
        entry.check_num_skips(16)
    with pytest.raises(ScheduleFileError, match=message):
        load_schedules(path, num_skips=16)
    assert load_schedules(path, num_skips=15).best().num_skips == 15


# ---------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path):
    rho = [1.0, 0.1 + 0.2, 1 / 3, 0.7499999999999999, 1e-7]  # floats that must survive exactly
    sched = SkipSchedule(rho, sigma_range=(0.2, 12.5))
    entry = entry_from_schedule(
        sched, model_name="edm-cifar10-32x32-uncond-vp", model_sha256=SHA_A, solver="dpmpp_2m", nfe=10,
        params={"rho_top": 1.0, "rho_bottom": 1e-7, "curve": -0.5},
        score={"metric": "proxy-fid", "value": 3.25, "samples": 2000, "features": "inception-v3-compat",
               "reference_sha256": SHA_REF},
        baseline={"value": 5.5}, study={"name": "s", "trial": 3, "trials_complete": 40},
    )
    path = tmp_path / "out" / "schedules.json"
    path.parent.mkdir()
    dump_schedules([entry], path, created="2026-11-27T12:00:00Z")

    doc = load_schedules(path)
    assert doc.best(model="edm-cifar10-32x32-uncond-vp", nfe=10, solver="dpmpp_2m") == sched
    assert doc.entries == [entry]
    assert doc.created == "2026-11-27T12:00:00Z"
    text = path.read_text()
    assert text.startswith('{\n  "format": "skipsearch.schedules/v1",\n  "created": "2026-11-27T12:00:00Z",\n')
    assert text.endswith("}\n")
    assert json.loads(text)["schedules"][0]["skips"] == {"count": 5, "order": "outermost-first"}
    # Writing the loaded document again is byte-identical (stable key order, floats as-is).
    dump_schedules(doc, tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == text
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_dump_defaults_created_to_now_utc(tmp_path):
    doc = dump_schedules([_entry()], tmp_path / "s.json")
    assert doc.created.endswith("Z") and doc.created[:2] == "20"
    assert load_schedules(tmp_path / "s.json").created == doc.created


# ---------------------------------------------------------------------------- atomic writes


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_invalid_entry_is_refused_before_touching_the_existing_file(tmp_path):
    path = dump_schedules([_entry()], tmp_path / "s.json").source
    before = _snapshot(tmp_path)
    bad = ScheduleEntry(model_name="edm-a", solver="heun", nfe=19, rho=(1.0, float("nan"), 0.5))
    expected = r"^refusing to write .*s\.json: \$\.schedules\[1\] \(model edm-a, solver heun, nfe 19\): rho\[1\] is nan"
    with pytest.raises(ScheduleFileError, match=expected):
        dump_schedules([_entry(nfe=9), bad], path)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failure_mid_write_leaves_existing_file_untouched(tmp_path, monkeypatch, failing):
    path = dump_schedules([_entry()], tmp_path / "s.json").source
    before = _snapshot(tmp_path)
    written = []

    def boom(*args, **kwargs):
        written.extend(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="No space left"):
        dump_schedules([_entry(value=1.0), _entry(nfe=9)], path)
    monkeypatch.undo()
    assert written, "the new content should have been going to a temp file"
    assert _snapshot(tmp_path) == before  # old content intact, temp file removed
    assert load_schedules(path).entry().score_value == 2.0


# ---------------------------------------------------------------------------- selecting


@pytest.fixture
def doc() -> ScheduleDocument:
    return ScheduleDocument(
        [
            _entry("edm-a", "heun", 9, value=6.0, k=4, model_sha256=SHA_A),
            _entry("edm-a", "heun", 19, value=None, k=4, model_sha256=SHA_A),
            _entry("edm-a", "heun", 19, value=2.5, k=4, model_sha256=SHA_A, params={"id": "first 2.5"}),
            _entry("edm-a", "heun", 19, value=2.0, k=4, model_sha256=SHA_A, params={"id": "lowest"}),
            _entry("edm-a", "heun", 19, value=2.0, k=4, model_sha256=SHA_A, params={"id": "tie, later"}),
            _entry("edm-a", "dpmpp_2m", 10, value=3.0, k=4, model_sha256=SHA_A),
            _entry("edm-b", "heun", 19, value=1.0, k=6),
        ],
        created="2026-11-27T12:00:00Z",
    )


def test_best_filters_and_lowest_score_wins(doc):
    assert doc.entry(model="edm-a", nfe=19, solver="heun").params == {"id": "lowest"}
    assert doc.best(model="edm-a", nfe=19, solver="heun") == doc.entries[3].schedule
    assert doc.entry(model="edm-a", solver="dpmpp_2m") is doc.entries[5]
    assert doc.entry(model="edm-a", nfe=9) is doc.entries[0]
    assert doc.entry(model=SHA_A.upper(), nfe=10) is doc.entries[5]  # sha256 works as the model filter
    assert doc.entry(nfe=19) is doc.entries[6]  # across models too: edm-b scores 1.0
    assert doc.best(nfe=19).num_skips == 6
    assert doc.entry(solver="HEUN", model="edm-a") is doc.entries[3]
    assert [e.nfe for e in doc.select(model="edm-a", solver="heun")] == [9, 19, 19, 19, 19]


def test_unscored_entries_rank_last(doc):
    only_unscored = ScheduleDocument([doc.entries[1]], doc.created)
    assert only_unscored.entry(nfe=19) is doc.entries[1]
    doc.entries[1] = _entry("edm-a", "heun", 19, value=None, k=4)
    assert doc.entry(model="edm-a", nfe=19).score_value == 2.0


def test_best_without_match_lists_what_is_available(doc):
    with pytest.raises(ScheduleFileError) as info:
        doc.best(model="edm-a", nfe=11, solver="heun")
    assert str(info.value) == (
        "no schedule for model='edm-a', solver='heun', nfe=11; available (model/solver/nfe): "
        "edm-a/dpmpp_2m/nfe10, edm-a/heun/nfe19, edm-a/heun/nfe9, edm-b/heun/nfe19"
    )
    with pytest.raises(ScheduleFileError, match=r"available \(model/solver/nfe\): none \(the file has no schedules\)"):
        ScheduleDocument([], doc.created).best()


def test_best_refuses_to_rank_different_metrics(doc):
    doc.entries.append(
        entry_from_schedule(SkipSchedule.identity(4), model_name="edm-c", solver="heun", nfe=19,
                            score={"metric": "fid-50k", "value": 0.5})
    )
    with pytest.raises(ScheduleFileError, match=r"different metrics \(fid-50k, proxy-fid\)"):
        doc.best(nfe=19)
    assert doc.entry(model="edm-c").score_value == 0.5


def test_file_source_prefixes_lookup_errors(tmp_path):
    path = dump_schedules([_entry()], tmp_path / "s.json").source
    with pytest.raises(ScheduleFileError, match=rf"^{path}: no schedule for nfe=7; available"):
        load_schedules(path).best(nfe=7)
