"""CLI bad-input paths: one clear line, exit code 2, no traceback."""

from __future__ import annotations

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
