"""The built-in demo model, its training recipe, and the score() API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import skipsearch as ss
from skipsearch.cli import app
from skipsearch.metrics import StreamingFID, builtin_reference, load_reference, make_extractor
from skipsearch.models.builtin import builtin_info
from skipsearch.demo.data import digits_images
from skipsearch.demo.model import DIGITS_NETWORK, TrainConfig, train

runner = CliRunner()


def test_training_recipe_smoke_and_determinism() -> None:
    cfg = TrainConfig(steps=3, batch_size=8, warmup_steps=2, network=dict(DIGITS_NETWORK, model_channels=8))
    logs: list[str] = []
    net_a, hist_a = train(cfg, log_every=1, log=logs.append)
    net_b, hist_b = train(cfg, log_every=1, log=lambda _: None)
    assert len(hist_a) == 3 and all(np.isfinite(h["loss"]) for h in hist_a)
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]
    for a, b in zip(net_a.state_dict().values(), net_b.state_dict().values()):
        assert torch.equal(a, b)
    assert not net_a.training and len(logs) == 3


def test_digits_data() -> None:
    x = digits_images()
    assert x.shape == (1797, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert x.mean() < -0.3  # mostly background


@pytest.fixture(scope="module")
def demo() -> torch.nn.Module:
    return ss.load_network("builtin:edm-digits")


def test_builtin_model_loads_with_its_metric(demo: torch.nn.Module) -> None:
    info = builtin_info(demo)
    assert info is not None and info.features == "skipsearch-digits"
    assert demo.img_resolution == 16 and demo.img_channels == 1
    assert 250_000 < sum(p.numel() for p in demo.parameters()) < 3_000_000
    assert len(ss.skip_sites(demo)) == 6


def test_score_equals_streaming_fid_on_the_same_images(demo: torch.nn.Module) -> None:
    seeds = range(96)
    steps = ss.score_steps(demo, seeds, solver="euler", nfe=4, steps=[32], batch_size=40)
    assert [n for n, _ in steps] == [32, 96]
    images = ss.to_uint8(ss.sample(demo, seeds, solver="euler", nfe=4))
    stream = StreamingFID(make_extractor("skipsearch-digits"), builtin_reference(), [32, 96])
    expected = stream.add(images)
    assert np.allclose([f for _, f in steps], [f for _, f in expected], rtol=1e-9)
    tuned = ss.score(demo, seeds, solver="euler", nfe=4, schedule=ss.SkipSchedule.linear(6, 0.5, 1.0, curve=-2))
    assert tuned != steps[-1][1]


def test_score_needs_a_reference_for_foreign_networks() -> None:
    ref = torch.load(Path(__file__).parent / "data" / "edm-ref-ddpmpp-small.pt", weights_only=True)
    net = ss.load_network(Path(__file__).parent / "data" / "edm-ref-ddpmpp-small.pt")
    assert ref["constructor_kwargs"]["img_channels"] == net.img_channels
    with pytest.raises(ss.metrics.MetricError, match="no default"):
        ss.score(net, range(4), solver="euler", nfe=2)


def test_reference_command_from_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    pixels = ss.to_uint8(digits_images()[:200])
    for i, img in enumerate(pixels):
        Image.fromarray(img[0].numpy(), mode="L").save(folder / f"{i:03d}.png")
    out = tmp_path / "ref.npz"
    result = runner.invoke(app, ["reference", str(folder), "-o", str(out), "--features", "skipsearch-digits"])
    assert result.exit_code == 0, result.output
    stats = load_reference(out)
    stream = StreamingFID(make_extractor("skipsearch-digits"), stats, [200])
    assert stream.add(pixels)[-1][1] == pytest.approx(0.0, abs=0.05)
    bad = runner.invoke(app, ["reference", str(tmp_path / "empty"), "-o", str(out)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
