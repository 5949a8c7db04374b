"""EDM2-era sampling without EDM2 weights: autoguidance, latent networks decoded by a VAE, the
dataset-ref .pkl read as plain data, FD_DINOv2's preprocessing."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_NET
from torch.nn import functional as F

import skipsearch as ss
from skipsearch.errors import CheckpointError, ConfigError, MetricError
from skipsearch.metrics import load_reference, load_references
from skipsearch.metrics.dinov2 import preprocess
from skipsearch.models.edm import EDMPrecond
from skipsearch.models.vae import LatentCodec, LatentDecoder, load_vae
from skipsearch.recipe import SamplingRecipe
from skipsearch.scoring import make_scorer
from skipsearch.search import StudyConfig
from skipsearch.target import Target


def _net(seed: int, **kw: object) -> EDMPrecond:
    torch.manual_seed(seed)
    return EDMPrecond(**{**TINY_NET, **kw}).eval().requires_grad_(False)


def test_autoguidance_is_the_interpolation_of_two_networks() -> None:
    main, guide = _net(0), _net(1)
    seeds = range(3)
    alone = ss.sample(main, seeds, solver="euler", nfe=1)
    assert torch.equal(ss.sample(main, seeds, solver="euler", nfe=1, guide=guide, guidance=1.0), alone)
    # With one Euler step from σ_max to 0 the sample is D̃(x; σ_max) itself: check the formula there.
    latents, _ = ss.sampling.seed_latents(list(seeds), [1, 8, 8])
    x = latents.to(torch.float64) * 80.0
    with torch.no_grad():
        d_main = main(x.float(), 80.0).double()
        d_guide = guide(x.float(), 80.0).double()
    guided = ss.sample(main, seeds, solver="euler", nfe=1, guide=guide, guidance=1.7)
    assert torch.allclose(guided, d_guide + 1.7 * (d_main - d_guide), atol=1e-5)
    # The schedule reaches the main network only, unless the guide is tuned too.
    sites = len(ss.skip_sites(main))
    schedule = ss.SkipSchedule.linear(sites, 0.4, 1.0)
    tuned_main = ss.sample(main, seeds, solver="euler", nfe=2, schedule=schedule, guide=guide, guidance=1.7)
    tuned_both = ss.sample(main, seeds, solver="euler", nfe=2, schedule=schedule, guide=guide, guidance=1.7,
                           guide_schedule=schedule)
    assert not torch.allclose(tuned_main, tuned_both)
    with pytest.raises(ConfigError, match="--guidance needs --guide"):
        StudyConfig(guidance=1.4)


def _tiny_vae(folder: Path) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(folder)
    return folder


def test_a_latent_network_is_scored_through_its_vae(tmp_path: Path) -> None:
    folder = _tiny_vae(tmp_path / "vae")
    net = _net(2, img_channels=4)
    codec = SimpleNamespace(kind="vae", vae_name="stabilityai/sd-vae-ft-mse", scale=(0.12, 0.11, 0.13, 0.15),
                            bias=(-0.7, -0.35, -0.02, 0.33))
    net.__dict__["skipsearch_encoder"] = codec
    target = Target("latent.pt", net, ss.skip_sites(net))
    assert target.latent and LatentCodec.of(net).scale == codec.scale
    with pytest.raises(CheckpointError, match="give --vae"):
        target.decoder(None)
    decode = target.decoder(str(folder))
    x = ss.sample(net, range(5), solver="euler", nfe=2, batch_size=5)
    images = decode(x)
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 16, 16)  # 8x8 latents, 2x upsampling VAE
    vae = load_vae(folder)
    scale, bias = torch.tensor(codec.scale).view(1, 4, 1, 1), torch.tensor(codec.bias).view(1, 4, 1, 1)
    with torch.no_grad():
        manual = (vae.decode((x.float() - bias) / scale).sample.clamp(0, 1) * 255).to(torch.uint8)
    assert torch.equal(images, manual)
    scorer = make_scorer(net, "skipsearch-digits", "builtin:edm-digits")  # RGB digits features
    recipe = SamplingRecipe(solver="euler", nfe=2, batch_size=3).with_networks(decode=decode)
    fid = list(scorer.iter_fid(net, range(6), recipe))[-1][1]
    assert np.isfinite(fid)
    with pytest.raises(CheckpointError, match="not a saved VAE"):
        load_vae(tmp_path)
    with pytest.raises(CheckpointError, match="not VAE latents"):
        LatentDecoder(vae, LatentCodec())


def _write_dataset_ref(path: Path, rng: np.random.Generator) -> None:
    a, b = rng.normal(size=(60, 5)), rng.normal(size=(60, 3))
    data = {"num_images": 60, "fid": {"mu": a.mean(0), "sigma": np.cov(a, rowvar=False)},
            "fd_dinov2": {"mu": b.mean(0), "sigma": np.cov(b, rowvar=False)}}
    path.write_bytes(pickle.dumps(data, protocol=4))


def test_edm2_dataset_ref_is_read_as_plain_data(tmp_path: Path) -> None:
    _write_dataset_ref(tmp_path / "img64.pkl", np.random.default_rng(0))
    refs = load_references(tmp_path / "img64.pkl")
    assert {k: (v.dim, v.count) for k, v in refs.items()} == {"inception-v3-compat": (5, 60),
                                                               "dinov2-vit-l-14-edm2": (3, 60)}
    assert load_reference(tmp_path / "img64.pkl", "dinov2-vit-l-14-edm2").dim == 3
    with pytest.raises(MetricError, match="not for features 'skipsearch-digits'"):
        load_reference(tmp_path / "img64.pkl", "skipsearch-digits")
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"fid": Hostile()}))
    with pytest.raises(MetricError, match="refers to posix.system"):
        load_references(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "objects.pkl").write_bytes(pickle.dumps({"fid": {"mu": np.array([1, "x"], dtype=object),
                                                                 "sigma": np.eye(2)}}))
    with pytest.raises(MetricError, match="only plain numbers"):
        load_references(tmp_path / "objects.pkl")


def test_fd_dinov2_preprocessing_and_offline_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    x = preprocess(images)
    expected = F.interpolate(images.float() / 255, size=(224, 224), mode="bicubic", antialias=True)
    expected = (expected - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert x.shape == (2, 3, 224, 224) and torch.allclose(x, expected)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MetricError, match="DINOv2 loads through torch.hub"):
        ss.metrics.make_extractor("dinov2-vit-l-14-edm2")
    repo = tmp_path / "hub" / "facebookresearch_dinov2_main"  # the code cached, the weights not:
    repo.mkdir(parents=True)                                    # torch.hub would download them
    (repo / "hubconf.py").write_text("raise SystemExit('torch.hub ran the repo')\n")
    with pytest.raises(MetricError, match="DINOv2 weights are not in"):
        ss.metrics.make_extractor("dinov2-vit-l-14-edm2")
    with pytest.raises(MetricError, match="uint8 images"):
        preprocess(images.float())


@pytest.mark.slow
def test_an_edm2_snapshot_is_searched_with_autoguidance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`launch` on EDM2-format pickles written here (main and guide), then export: the exported
    entry records the guide and the EDM2 sites in the network's own terms."""
    import json

    from edm_pickle_writer import write_edm2_snapshot
    from typer.testing import CliRunner

    from skipsearch.cli import app
    from skipsearch.models.edm2 import EDM2Precond

    ref = torch.load(Path(__file__).parent / "data" / "edm2-ref-small.pt", weights_only=True)
    kwargs = ref["constructor_kwargs"]
    paths = []
    for name, seed in (("edm2-small-main.pkl", 0), ("edm2-small-guide.pkl", 1)):
        torch.manual_seed(seed)
        net = EDM2Precond(**kwargs).eval()
        if seed == 0:
            net.load_state_dict(ref["state_dict"])
        paths.append(write_edm2_snapshot(net, kwargs, tmp_path / name, tmp_path / "executed"))
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    runner = CliRunner()
    result = runner.invoke(app, ["launch", "--model", "edm2", "--checkpoint", str(paths[0]), "--guide", str(paths[1]),
                                 "--guidance", "1.5", "--solver", "heun", "--nfe", "3", "--samples", "12",
                                 "--batch-size", "6", "--trials", "3", "--features", "skipsearch-digits",
                                 "--ref", "builtin:edm-digits", "--storage", url, "--confirm-top", "0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", "--storage", url, "--output", str(tmp_path / "schedules.json")])
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "schedules.json").read_text())["schedules"][0]
    assert entry["model"]["family"] == "edm2" and entry["model"]["name"] == "edm2-small-main"
    assert entry["sites"][0]["block"].startswith("unet.dec.") and entry["sites"][0]["encoder"].startswith("unet.enc.")
    assert not (tmp_path / "executed").exists()
    guided = ss.load_schedules(tmp_path / "schedules.json").entries[0].solver_params
    assert guided is not None and guided["guide"] == "edm2-small-guide" and guided["guidance"] == 1.5
    assert guided["guide_sha256"] == ss.models.loading.checkpoint_sha256(str(paths[1])) and not guided["guide_tuned"]
