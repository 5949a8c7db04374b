"""Bad input, as a user types it: one line that says what is wrong, exit code 2, no traceback,
and nothing created or changed on disk. Each row was a traceback, a silent acceptance or a
leaked password in an earlier version (issue 9) or is a long-standing case kept honest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from edm_pickle_writer import write_pickle
from helpers import tiny_config
from typer.testing import CliRunner

from skipsearch.cli import app
from skipsearch.search import prepare_studies

runner = CliRunner()
SECRET = "s3cret-Pa55"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """A folder with every kind of bad (and one good) input the rows below need."""
    root = tmp_path_factory.mktemp("bad-input")
    shutil.copy(tiny_checkpoint, root / "tiny.pt")
    shutil.copy(tiny_checkpoint.with_suffix(".json"), root / "tiny.json")
    prepare_studies(f"sqlite:///{root / 'studies.db'}", [tiny_config(root / "tiny.pt", root)])

    # A damaged database: a valid header, garbage where the tables are.
    shutil.copy(root / "studies.db", root / "corrupt.db")
    with open(root / "corrupt.db", "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(8192))
    (root / "garbage.db").write_bytes(b"this is not a database at all" * 10)

    state = torch.load(tiny_checkpoint, weights_only=True)
    state[next(k for k in state if k.endswith("weight"))].view(-1)[0] = float("nan")
    torch.save(state, root / "nan.pt")
    shutil.copy(tiny_checkpoint.with_suffix(".json"), root / "nan.json")

    # A pickle whose tensor storage is a deflated zip: 100 MB of zeros in a few hundred kB.
    blob = Path(root / "blob.zip")
    with zipfile.ZipFile(blob, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/0", bytes(100_000_000))

    class Bomb:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (blob.read_bytes(),))

    write_pickle({"ema": Bomb()}, root / "bomb.pkl")
    blob.unlink()
    (root / "trunc.pkl").write_bytes(b"\x80\x04\x95")

    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "notjson.json").write_text("{ not json")
    (root / "wrong.json").write_text(json.dumps({"format": "something/else"}))
    np.savez(root / "ref2048.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    entry = {"model": {"family": "edm", "name": "tiny", "sha256": "ab" * 32},
             "solver": {"name": "euler", "nfe": 2}, "skips": {"count": 4, "order": "outermost-first"},
             "rho": [0.5, 1, 1, 1], "sigma_range": None, "params": {}, "score": None, "baseline": None, "study": None}
    (root / "other-net.json").write_text(json.dumps({"format": "skipsearch.schedules/v1",
                                                      "created": "2026-11-28T00:00:00Z", "schedules": [entry]}))
    (root / "empty").mkdir()
    (root / "a-folder").mkdir()
    from hostile_files import write_hostile_files

    write_hostile_files(root, tiny_checkpoint)
    _family_files(root, entry)
    _pipeline_files(root, tiny_checkpoint)
    return root


def _pipeline_files(root: Path, tiny_checkpoint: Path) -> None:
    """A tiny Stable Diffusion folder and four damaged copies; a class-conditional EDM network."""
    from conftest import TINY_NET

    torch.manual_seed(1)
    cond = dict(TINY_NET, label_dim=10)
    from skipsearch.models.edm import EDMPrecond

    torch.save(EDMPrecond(**cond).state_dict(), root / "cond.pt")
    (root / "cond.json").write_text(json.dumps({"constructor_kwargs": cond}))
    (root / "prompts.txt").write_text("a red cat\na tree\n")
    (root / "no-prompts.txt").write_text("\n  \n")
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return
    import pickle

    from sd_pipeline import write_tiny_sd

    sd = write_tiny_sd(root / "sd")
    shutil.copytree(sd, root / "sd-no-index")
    (root / "sd-no-index" / "model_index.json").unlink()
    shutil.copytree(sd, root / "sd3")
    index = json.loads((sd / "model_index.json").read_text())
    (root / "sd3" / "model_index.json").write_text(json.dumps(dict(index, _class_name="StableDiffusion3Pipeline")))
    shutil.copytree(sd, root / "sd-pickle")
    next((root / "sd-pickle" / "text_encoder").glob("*.safetensors")).unlink()

    class Code:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (root / "sd-pickle" / "text_encoder" / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Code()}))


def _family_files(root: Path, entry: dict) -> None:
    """A study at one NFE only (nothing to fit a family to) and a family file fitted to NFE 4..8."""
    from skipsearch.family import ScheduleFamily
    from skipsearch.search import run_worker

    one = f"sqlite:///{root / 'one-nfe.db'}"
    prepare_studies(one, [tiny_config(root / "tiny.pt", root, trials=1, samples=8, fidelity=[1.0],
                                      artifacts=str(root / "one-artifacts"))])
    run_worker(one, None, log=lambda m: None)
    sites = [{"index": i, "resolution": 8, "channels": 1, "block": f"b{i}", "encoder": f"e{i}"} for i in range(4)]
    fam = ScheduleFamily(model_name="tiny", solver="euler", space="linear", nfe_range=(4, 8),
                         fit={"rho_top": (0.5, 0.0), "rho_bottom": (1.0, 0.0), "curve": (0.0, 0.0)},
                         bounds={}, studies=[], sites=sites)
    doc = {"format": "skipsearch.schedules/v1.2", "created": "2026-11-28T00:00:00Z", "schedules": [entry],
           "families": [fam.to_json()]}
    (root / "family.json").write_text(json.dumps(doc))
    doc["families"][0]["nfe_range"] = [8, 4]
    (root / "family-reversed.json").write_text(json.dumps(doc))


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[str(p.relative_to(root))] = (p.stat().st_mode, "dir")
    return out


DB = "sqlite:///studies.db"
MINE = ["--checkpoint", "tiny.pt", "--study", "edm-tiny", "--samples", "24", "--ref", "builtin:edm-digits",
        "--features", "skipsearch-digits", "--no-workers"]
TINY = [*MINE, "--solver", "euler", "--nfe", "2"]
COND = ["--checkpoint", "cond.pt", "--study", "cond", "--ref", "builtin:edm-digits", "--features", "skipsearch-digits",
        "--no-workers", "--nfe", "2"]
PIPE = ["--study", "sd", "--ref", "builtin:edm-digits", "--features", "skipsearch-digits", "--no-workers", "--nfe", "6",
        "--prompts", "prompts.txt"]

CASES: list[tuple[str, list[str], str]] = [
    # damaged or missing storage
    ("status on a damaged database", ["status", "--storage", "sqlite:///corrupt.db"], "damaged"),
    ("launch on a damaged database", ["launch", "--storage", "sqlite:///corrupt.db", *TINY], "damaged"),
    ("worker on a damaged database", ["worker", "--storage", "sqlite:///corrupt.db"], "damaged"),
    ("export from a damaged database", ["export", "-o", "out.json", "--storage", "sqlite:///corrupt.db"], "damaged"),
    ("status on a non-database file", ["status", "--storage", "sqlite:///garbage.db"], "is not an SQLite database"),
    ("status without storage", ["status", "--storage", "sqlite:///nothing.db"], "no skipsearch storage"),
    ("worker without storage", ["worker", "--storage", "sqlite:///nothing.db"], "no skipsearch storage"),
    ("export without storage", ["export", "-o", "out.json", "--storage", "sqlite:///nothing.db"], "no skipsearch storage"),
    ("dashboard without storage", ["dashboard", "--storage", "sqlite:///nothing.db"], "no skipsearch storage"),
    ("storage in a missing folder", ["launch", "--storage", "sqlite:///nowhere/s.db", *TINY], "does not exist"),
    ("storage that is a folder", ["status", "--storage", "sqlite:///a-folder"], "is a folder"),
    ("not a URL", ["status", "--storage", "not a url"], "not a database URL"),
    ("unsupported database", ["status", "--storage", "ftp://host/x"], "unsupported storage"),
    ("a URL without //, password inside", ["status", "--storage", f"postgresql:/user:{SECRET}@host/db"],
     "not a database URL"),
    ("unreachable server, password with /", ["status", "--storage", f"postgresql://u:p/w:{SECRET}@127.0.0.1:1/db"],
     "cannot open storage"),
    ("unreachable server, password with @", ["status", "--storage", f"postgresql://u:p@{SECRET}@127.0.0.1:1/db"],
     "cannot open storage"),
    ("unreachable server for launch", ["launch", "--storage", f"postgresql://u:{SECRET}:x@127.0.0.1:1/db", *TINY],
     "cannot open storage"),
    # launch options
    ("absurd rho bounds", ["launch", "--storage", DB, "--rho-bounds", "1", "1e30", *TINY], "rho bounds must satisfy"),
    ("zero rho bound", ["launch", "--storage", DB, "--rho-bounds", "0", "1", *TINY], "rho bounds must satisfy"),
    ("reversed rho bounds", ["launch", "--storage", DB, "--rho-bounds", "1.2", "0.5", *TINY], "low < high"),
    ("non-finite rho bound", ["launch", "--storage", DB, "--rho-bounds", "0.5", "inf", *TINY], "finite"),
    ("curve bounds too wide", ["launch", "--storage", DB, "--curve-bounds", "-10", "10", *TINY], "curve bounds"),
    ("heun at an even NFE", ["launch", "--storage", DB, *MINE, "--solver", "heun", "--nfe", "10"],
     "nearest valid: 9 or 11"),
    ("unknown solver", ["launch", "--storage", DB, *TINY, "--solver", "rk45"], "unknown solver 'rk45'"),
    ("unknown space", ["launch", "--storage", DB, *TINY, "--space", "spiral"], "unknown search space"),
    ("unknown sampler", ["launch", "--storage", DB, *TINY, "--sampler", "cma"], "unknown sampler"),
    ("unknown feature extractor", ["launch", "--storage", DB, *TINY, "--features", "nope"],
     "unknown feature extractor"),
    ("one sample", ["launch", "--storage", DB, *TINY, "--samples", "1"], "at least 2"),
    ("no trials", ["launch", "--storage", DB, *TINY, "--trials", "0"], "--trials must be at least 1"),
    ("batch size zero", ["launch", "--storage", DB, *TINY, "--batch-size", "0"], "--batch-size must be at least 1"),
    ("NFE list with a word", ["launch", "--storage", DB, *TINY, "--nfe", "3", "x"], "unexpected argument"),
    ("NFE given twice", ["launch", "--storage", DB, *TINY, "--nfe", "2", "2"], "lists a value twice"),
    ("unknown model", ["launch", "--storage", DB, "--model", "sdxl", "--no-workers"], "unknown model 'sdxl'"),
    ("missing checkpoint", ["launch", "--storage", DB, *TINY, "--checkpoint", "missing.pt"], "no such file"),
    ("checkpoint without --ref", ["launch", "--storage", DB, "--checkpoint", "tiny.pt", "--no-workers"],
     "--ref is required"),
    ("EDM2 without a checkpoint", ["launch", "--storage", DB, "--model", "edm2", "--no-workers"],
     "--model edm2 has no built-in network"),
    ("a folder that is not a diffusers one", ["sites", "--checkpoint", "."], "is a folder but not a diffusers one"),
    ("a guide that is not there", ["launch", "--storage", DB, *TINY, "--guide", "missing-guide.pt"],
     "missing-guide.pt: no such file"),
    ("guidance without a guide", ["launch", "--storage", DB, *TINY, "--guidance", "1.4"], "--guidance needs --guide"),
    ("a VAE for a pixel network", ["launch", "--storage", DB, *TINY, "--study", "vae", "--vae", "vae-folder"], "not VAE latents"),
    ("preset for another network", ["launch", "--storage", DB, "--preset", "edm-imagenet64-heun", "--no-workers"],
     "give --checkpoint FILE"),
    ("unknown preset", ["launch", "--storage", DB, "--preset", "nope", "--no-workers"], "unknown study preset"),
    ("reference of the wrong dimension", ["launch", "--storage", DB, *TINY, "--ref", "ref2048.npz"],
     "reference has 2048-dim statistics"),
    ("NaN checkpoint", ["launch", "--storage", DB, *TINY, "--checkpoint", "nan.pt", "--study", "nan"],
     "non-finite output"),
    ("decompression bomb", ["sites", "--checkpoint", "bomb.pkl"], "refusing a compressed tensor storage"),
    ("truncated pickle", ["sites", "--checkpoint", "trunc.pkl"], "not a readable EDM checkpoint"),
    ("GPUs that are not there", ["launch", "--storage", DB, *[a for a in TINY if a != "--no-workers"], "--gpus", "0,1"],
     "visible GPU"),
    ("an NFE that is not a number", ["launch", "--storage", DB, *MINE, "--nfe", "ten"], "Invalid value for '--nfe'"),
    ("an unknown option", ["status", "--colour"], "No such option"),
    ("an unknown command", ["lunch"], "No such command"),
    ("different config, same study", ["launch", "--storage", DB, *TINY, "--samples", "30"],
     "different evaluation config"),
    ("worker for a missing study", ["worker", "--storage", DB, "--study", "nope/euler/nfe1"], "no study named"),
    # exports and files
    ("export to a folder", ["export", "-o", "a-folder", "--storage", DB], "is a folder"),
    ("export into a missing folder", ["export", "-o", "nowhere/out.json", "--storage", DB], "does not exist"),
    ("export with nothing finished", ["export", "-o", "out.json", "--storage", DB], "no studies with a completed trial"),
    ("validate deeply nested JSON", ["validate", "deep.json"], "nested too deeply"),
    ("validate something else", ["validate", "wrong.json"], "not a skipsearch schedules file"),
    ("validate not JSON", ["validate", "notjson.json"], "is not valid JSON"),
    ("validate a missing file", ["validate", "nope.json"], "does not exist"),
    ("score a schedule of another checkpoint", ["score", "--checkpoint", "tiny.pt", "--schedule", "other-net.json",
                                                "--samples", "4"], "different checkpoint"),
    ("score with one sample", ["score", "--nfe", "4", "--samples", "1"], "--samples must be at least 2"),
    ("sample zero images", ["sample", "--nfe", "4", "--count", "0"], "--count must be at least 1"),
    ("sample at an impossible NFE", ["sample", "--solver", "heun", "--nfe", "10", "--count", "1"],
     "nearest valid"),
    ("sample into a folder", ["sample", "--nfe", "2", "--count", "1", "-o", "a-folder"], "is a folder"),
    ("reference of an empty folder", ["reference", "empty", "-o", "ref.npz", "--features", "skipsearch-digits"],
     "no images"),
    ("reference into a missing folder", ["reference", "empty", "-o", "nowhere/ref.npz"], "does not exist"),
    # hostile files (issue 19): small on disk, huge if believed; test_trust bounds their memory and time
    ("stride-0 pickle", ["sites", "--checkpoint", "stride0.pkl"], "expanded or overlapping view"),
    ("3 GiB BYTEARRAY8 in 12 bytes", ["sites", "--checkpoint", "bytearray8.pkl"], "declares 3,221,225,472 bytes but"),
    ("num_blocks 100000", ["sites", "--checkpoint", "blocks.pkl"], "num_blocks=100000 is outside"),
    ("oversized state dict config", ["sites", "--checkpoint", "sd.pt"], "describe a network of"),
    ("schedules file at NFE 10^9", ["validate", "nfe-huge.json"], "greater than the maximum of 1000"),
    ("schedules file at a big-integer NFE", ["validate", "nfe-bigint.json"], "greater than the maximum of 1000"),
    ("schedules file with rho 1e30", ["validate", "rho-huge.json"], "greater than the maximum of 10"),
    ("pickle weights with code in a diffusers folder", ["sites", "--checkpoint", "evil-diffusers"],
     "not a readable weight file"),
    # options added since
    ("pool size zero", ["worker", "--storage", DB, "--pool-size", "0"], "--pool-size must be at least 1"),
    ("rho above its cap", ["sample", "--nfe", "2", "--count", "1", "--rho-top", "20"], "at most 10"),
    ("sample at an NFE over the cap", ["sample", "--nfe", "5000", "--count", "1"], "at most 1000"),
    # steps spaces and families (issue 16)
    ("exponent bounds below 1", ["launch", "--storage", DB, *TINY, "--study", "st", "--space", "steps",
                                 "--exponent-bounds", "0.5", "7"], "exponent bounds must lie within [1, 100]"),
    ("crowd bounds too wide", ["launch", "--storage", DB, *TINY, "--study", "st", "--space", "linear+steps",
                               "--crowd-bounds", "-3", "3"], "crowd bounds must lie within ±2"),
    ("reversed crowd bounds", ["launch", "--storage", DB, *TINY, "--study", "st", "--space", "steps",
                               "--crowd-bounds", "1", "-1"], "low < high"),
    ("steps bounds for a ρ-only space", ["launch", "--storage", DB, *TINY, "--study", "st",
                                         "--exponent-bounds", "3", "9"], "does not search"),
    ("export neither to a file nor σ lists", ["export", "--storage", DB], "give -o FILE"),
    ("a family from one NFE", ["export", "--family", "-o", "fam.json", "--storage", "sqlite:///one-nfe.db"],
     "no family to fit"),
    ("a family outside its NFE range", ["sample", "--checkpoint", "tiny.pt", "--schedule", "family.json",
                                        "--nfe", "12", "--count", "1"], "outside it"),
    ("validate a family with a reversed range", ["validate", "family-reversed.json"], "reversed"),
    # text-to-image pipelines (issue 17)
    ("a pipeline folder without model_index.json", ["launch", "--storage", DB, *PIPE, "--checkpoint", "sd-no-index"],
     "a UNet2DConditionModel without its pipeline"),
    ("a pipeline class not supported", ["launch", "--storage", DB, *PIPE, "--checkpoint", "sd3"],
     "'StableDiffusion3Pipeline' pipeline"),
    ("a pickle weight file in a pipeline", ["launch", "--storage", DB, *PIPE, "--checkpoint", "sd-pickle"],
     "pytorch_model.bin"),
    ("an empty prompts file", ["launch", "--storage", DB, *PIPE[:-2], "--prompts", "no-prompts.txt", "--checkpoint",
                               "sd"], "holds no prompts"),
    ("a pipeline without prompts", ["launch", "--storage", DB, *PIPE[:-2], "--checkpoint", "sd"], "--prompts"),
    ("--cfg on an unconditional network", ["launch", "--storage", DB, *TINY, "--study", "st", "--cfg", "5"],
     "--cfg is for text-to-image pipelines"),
    ("prompts for a class-conditional EDM network", ["launch", "--storage", DB, *COND, "--prompts", "prompts.txt"],
     "--prompts is for text-to-image pipelines"),
    ("a negative prompt for an EDM network", ["launch", "--storage", DB, *TINY, "--study", "st",
                                              "--negative-prompt", "blurry"], "--negative-prompt is for"),
    ("a guidance scale out of range", ["launch", "--storage", DB, *PIPE, "--checkpoint", "sd", "--cfg", "500"],
     "cfg"),
]


@pytest.mark.parametrize("name, args, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name: str, args: list[str], needle: str, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work)
    monkeypatch.delenv("SKIPSEARCH_STORAGE", raising=False)
    if "--checkpoint" in args and args[args.index("--checkpoint") + 1].startswith("sd") and not (work / "sd").is_dir():
        pytest.skip("text-to-image rows need diffusers and transformers (the test extra)")
    before = _snapshot(work)
    result = runner.invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output and SECRET not in result.output
    assert _snapshot(work) == before, "a failed command changed the folder"


def test_matrix_is_large_enough() -> None:
    assert len(CASES) >= 40


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """A folder nobody can write, root included (root ignores permission bits: make it immutable)."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a folder read-only for root here (chattr +i failed)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        return
    os.chmod(folder, 0o555)
    try:
        yield
    finally:
        os.chmod(folder, 0o755)


@pytest.mark.parametrize("args, needle", [
    (["launch", "--storage", "sqlite:///ro/studies.db", *TINY], "read-only folder"),
    (["status", "--storage", "sqlite:///ro/missing.db"], "no skipsearch storage"),
    (["export", "-o", "ro/out.json", "--storage", DB], "permission denied"),
    (["sample", "--nfe", "2", "--count", "1", "-o", "ro/grid.png"], "permission denied"),
    (["reference", "empty", "-o", "ro/ref.npz", "--features", "skipsearch-digits"], "permission denied"),
])
def test_read_only_folders(args: list[str], needle: str, work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = work / "ro"
    ro.mkdir(exist_ok=True)
    if not (ro / "studies.db").exists():
        shutil.copy(work / "studies.db", ro / "studies.db")
    monkeypatch.chdir(work)
    with read_only(ro):
        before = _snapshot(work)
        result = runner.invoke(app, args)
        after = _snapshot(work)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert after == before


def test_the_corrupt_database_really_is(work: Path) -> None:
    """Guards the fixture: the damaged file must fail in SQLite itself, or the rows above prove nothing."""
    with pytest.raises(sqlite3.DatabaseError):
        with sqlite3.connect(work / "corrupt.db") as conn:
            conn.execute("SELECT * FROM trials").fetchall()
            conn.execute("PRAGMA integrity_check").fetchall()


def test_dashboard_on_a_port_in_use(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One line, and no "Listening on …" before it: the port is bound before anything is said."""
    import socket

    monkeypatch.chdir(work)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["dashboard", "--storage", DB, "--port", str(port)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"error: port {port} on 127.0.0.1 is in use; give another --port"], result.output
