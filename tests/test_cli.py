"""CLI bad-input paths: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skipsearch.cli import app

DATA = Path(__file__).parent / "data"
REF = str(DATA / "edm-ref-ddpmpp-small.pt")
runner = CliRunner()


def _fails_cleanly(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert needle in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sample", "--checkpoint", REF, "--solver", "heun", "--nfe", "10"], "nearest valid: 9 or 11"),
        (["sample", "--checkpoint", REF, "--solver", "rk45", "--nfe", "4"], "unknown solver"),
        (["sample", "--checkpoint", "missing.pkl", "--nfe", "4"], "no such file"),
        (["sample", "--checkpoint", REF, "--nfe", "4", "--count", "0"], "--count must be at least 1"),
        (["sample", "--checkpoint", REF, "--nfe", "4", "--rho-top", "-1"], "finite and positive"),
        (["sample", "--model", "stylegan", "--nfe", "4"], "unknown model 'stylegan'"),
        (["sites", "--checkpoint", str(DATA / "edm-architectures.json")], "unknown checkpoint type"),
        (["validate", str(DATA / "edm-architectures.json")], "not a skipsearch schedules file"),
        (["validate", "nope.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_error(args: list[str], needle: str) -> None:
    _fails_cleanly(args, needle)


def test_sample_and_sites_work(tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["sample", "--checkpoint", REF, "--nfe", "3", "--count", "4", "--rho-top", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(app, ["sites", "--checkpoint", REF])
    assert result.exit_code == 0 and "9 skip sites" in result.output


def test_help_lists_commands_in_a_natural_order() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    order = ["launch", "worker", "status", "export", "confirm", "validate", "score", "sample", "dashboard", "presets", "sites",
             "reference"]
    positions = [result.output.index(f" {name} ") for name in order]
    assert positions == sorted(positions)
    assert " demo " not in result.output  # the build tooling is there, but hidden
    assert runner.invoke(app, ["demo", "--help"]).exit_code == 0


def test_presets_are_listed() -> None:
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0
    for name in ("demo", "edm-imagenet64-heun", "edm-imagenet64-multistep", "edm-afhqv2-64"):
        assert name in result.output


def _summary(name: str, baseline: float, best: float, noise: float):
    from skipsearch.search import StudyConfig, StudySummary

    config = StudyConfig()
    return StudySummary(name=name, config=config, budget=20, complete=14, running=1, pruned=5, failed=0, retried=0,
                        waiting=0, baseline=baseline, best=best, best_trial=7, best_params={"rho_top": 0.35},
                        best_rho=None, best_sigma_range=None, images_per_s=80.0, noise=noise, trial_seconds=8.0)


def test_the_fid_change_shows_at_80_columns() -> None:
    from rich.console import Console

    from skipsearch.cli._output import study_table

    rows = [_summary("edm-imagenet-64x64-cond-adm/dpmpp_2m/nfe10", 24.09, 13.30, 4.6),
            _summary("edm-digits/euler/nfe10", 24.09, 23.0, 4.6)]
    for width in (60, 80, 120):
        console = Console(width=width, record=True, force_terminal=False)
        console.print(study_table(rows, width=width))
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        assert "FID change" in text and "−44.8%" in text and "−4.5%*" in text, text
    wide = Console(width=120, record=True)
    wide.print(study_table(rows, width=120))
    assert "pruned" in wide.export_text()  # nothing dropped when there is room


def test_80_columns_keep_the_counts_and_every_digit() -> None:
    """At 80 columns `status` keeps the pruned and failed counts the README promises, and the
    confirmed table wraps intervals onto a second line rather than cutting a number ("124.…")."""
    import dataclasses

    from rich.console import Console

    from skipsearch.cli._output import confirmed_tables, study_table
    from skipsearch.search._confirm import Confirmation, ConfirmedRow

    rows = [ConfirmedRow(12, "search", {}, None, None, 118.25, 124.53, (120.11, 130.22), None, 0.451, (0.402, 0.498)),
            ConfirmedRow(0, "baseline", {}, None, None, 214.09, 226.80, (219.37, 233.12), None)]
    confirmation = Confirmation("edm-imagenet-64x64-cond-adm/dpmpp_2m/nfe10", (100_000_000, 100_003_999), 4000, 200,
                                2, rows, settled=True, passed_over=2)
    summary = dataclasses.replace(_summary("edm-imagenet-64x64-cond-adm/dpmpp_2m/nfe10", 24.09, 13.30, 4.6),
                                  confirmation=confirmation)
    for width in (60, 80, 120):
        console = Console(width=width, record=True, force_terminal=False)
        console.print(study_table([summary], width=width))
        for table in confirmed_tables([summary], width=width):
            console.print(table)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width, text
        assert "…" not in text, text
        for number in ("124.53", "120.11", "130.22", "226.80", "−45.1%"):
            assert number in text, (number, text)
        assert "2 more of the best by search score not confirmed" in " ".join(text.split()), text
        if width >= 80:
            assert "pruned" in text and "failed" in text, text


HEAVY = ("torch", "torchvision", "torch_fidelity", "optuna")
_PROBE = """
import resource, sys
sys.argv = ["skipsearch", *{args!r}]
from skipsearch.entry import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
usage = resource.getrusage(resource.RUSAGE_SELF)
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))
print("PROBE", code, usage.ru_utime + usage.ru_stime, ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["launch", "--help"], ["presets"], ["validate", "{good}"],
                                  ["validate", "missing.json"], ["lunch"], ["status", "--colour"]],
                         ids=["help", "launch-help", "presets", "validate", "validate-missing", "unknown-command",
                              "unknown-option"])
def test_the_light_commands_import_no_torch_or_optuna(args: list[str], tmp_path: Path) -> None:
    """`--help`, `presets`, `validate` and one-line usage errors cost well under a second of CPU:
    none of them imports torch, torchvision, torch-fidelity or Optuna."""
    import subprocess
    import sys

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"format": "skipsearch.schedules/v1.1", "created": "2026-12-01T00:00:00Z",
                                "schedules": []}))
    args = [a.format(good=good) for a in args]
    probe = subprocess.run([sys.executable, "-c", _PROBE.format(args=args, heavy=HEAVY)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"})
    line = next(line for line in probe.stderr.splitlines() if line.startswith("PROBE"))
    _, code, cpu, heavy = (line.split(" ") + [""])[:4]
    assert heavy == "", f"{args} imported {heavy}"
    assert float(cpu) < 1.0, f"{args} took {cpu} s of CPU"
    assert code in ("0", "2", "None"), probe.stderr


@pytest.mark.parametrize("command", ["status", "export"])
def test_reading_a_study_needs_no_feature_extractor(command: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`status` and `export` read scores back: they import neither torch-fidelity nor torchvision
    (2 of the 5 s a `status` took)."""
    import subprocess
    import sys

    from helpers import tiny_config

    from skipsearch.search import prepare_studies

    url = f"sqlite:///{tmp_path / 's.db'}"
    prepare_studies(url, [tiny_config(tiny_checkpoint, tmp_path, trials=2)])
    args = [command, "--storage", url, *(["-o", "s.json"] if command == "export" else [])]
    probe = subprocess.run([sys.executable, "-c", _PROBE.format(args=args, heavy=("torchvision", "torch_fidelity"))],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    line = next(line for line in probe.stderr.splitlines() if line.startswith("PROBE"))
    assert (line.split(" ") + [""])[3] == "", f"{command} imported {line.split(' ')[3]}"
