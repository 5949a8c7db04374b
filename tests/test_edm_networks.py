"""Our EDM networks against NVlabs EDM: key/shape layout of released configs, reference outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from skipsearch import SkipSchedule, skip_sites, skip_tuned
from skipsearch.models.edm import EDMPrecond

DATA = Path(__file__).parent / "data"
ARCHS = json.loads((DATA / "edm-architectures.json").read_text())
REFS = ["edm-ref-ddpmpp-small.pt", "edm-ref-adm-small-cond.pt"]


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_released_configuration_layout(name: str) -> None:
    arch = ARCHS[name]
    with torch.device("meta"):
        net = EDMPrecond(**arch["constructor_kwargs"])
    shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert list(shapes) == list(arch["state_dict"]), "key order differs"
    assert shapes == arch["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == arch["num_parameters"]
    assert list(net.model.enc) == arch["encoder_entries"]
    assert list(net.model.dec) == arch["decoder_entries"]
    sites = skip_sites(net)
    assert len(sites) == arch["num_skips"]
    assert [s.index for s in sites] == list(range(len(sites)))
    non_aux = [e for e in arch["encoder_entries"] if "aux" not in e]
    assert [s.producer for s in sites] == non_aux
    res = arch["constructor_kwargs"]["img_resolution"]
    assert sites[0].resolution == res and sites[-1].resolution < res


def _reference(name: str) -> tuple[EDMPrecond, dict]:
    ref = torch.load(DATA / name, weights_only=True)
    net = EDMPrecond(**ref["constructor_kwargs"]).eval()
    net.load_state_dict(ref["state_dict"], strict=True)
    return net, ref


@pytest.mark.parametrize("name", REFS)
def test_reference_outputs_plain_and_skip_tuned(name: str) -> None:
    net, ref = _reference(name)
    inputs = ref["inputs"]
    assert len(skip_sites(net)) == ref["num_skips"]
    with torch.inference_mode():
        out = net(inputs["x"], inputs["sigma"], inputs["class_labels"])
        assert (out - ref["outputs"]).abs().max().item() < 1e-4
        for case in ("rho_linear", "rho_random"):
            with skip_tuned(net, SkipSchedule(ref[case])):
                tuned = net(inputs["x"], inputs["sigma"], inputs["class_labels"])
            assert (tuned - ref[f"outputs_{case}"]).abs().max().item() < 1e-4
            assert (tuned - ref["outputs"]).abs().max().item() > 1e-3  # the schedule really acts
        again = net(inputs["x"], inputs["sigma"], inputs["class_labels"])
    assert torch.equal(again, out), "skip_tuned must restore the network on exit"


def test_song_unet_variants_run() -> None:
    """NCSN++ (fourier/residual) and the 'skip' encoder/decoder variants build, run and expose sites."""
    base = dict(img_resolution=16, img_channels=3, model_type="SongUNet", model_channels=16, channel_mult=[1, 2],
                num_blocks=1, attn_resolutions=[8], dropout=0.0)
    variants = [
        dict(embedding_type="fourier", encoder_type="residual", channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
        dict(encoder_type="skip", decoder_type="skip"),
    ]
    x = torch.randn(2, 3, 16, 16)
    for extra in variants:
        net = EDMPrecond(**base, **extra).eval()
        with torch.inference_mode():
            out = net(x, torch.tensor([0.5, 2.0]))
            with skip_tuned(net, SkipSchedule.linear(len(skip_sites(net)), 0.5, 0.9)):
                tuned = net(x, torch.tensor([0.5, 2.0]))
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, tuned)
