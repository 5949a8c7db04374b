"""The GPU speed path's mechanisms, checked on the CPU: precision choice, half precision scoped
to the network call and within the proxy's noise, per-block compilation with skip-tuning intact."""

from __future__ import annotations

import pytest

import torch
from conftest import TINY_NET

import skipsearch as ss
from skipsearch.models.edm import EDMPrecond
from skipsearch.sampling import resolve_precision
from skipsearch.recipe import SamplingRecipe
from skipsearch.scoring import SampleWatch, make_scorer
from skipsearch.target import Target


def test_auto_precision_is_half_on_a_gpu_only() -> None:
    net = EDMPrecond(**TINY_NET)
    assert resolve_precision("auto", net, "cpu") == "fp32"
    assert resolve_precision("auto", net, "cuda:0") == "fp16"  # EDM's own fp16 path
    assert resolve_precision("auto", torch.nn.Linear(2, 2), "cuda") == "bf16"  # no fp16 path: autocast
    assert resolve_precision("bf16", net, "cpu") == "bf16"


def test_bf16_scores_within_the_proxy_noise_and_features_stay_fp32() -> None:
    torch.set_num_threads(2)
    demo = ss.load_network("builtin:edm-digits")
    scorer = make_scorer(demo)
    seeds, other = range(0, 80), range(1_000_000, 1_000_080)

    kept: list[torch.Tensor] = []

    def fid(precision: str, s: range = seeds) -> float:
        keep = kept.append if precision == "bf16" else None
        recipe = SamplingRecipe(solver="euler", nfe=3, batch_size=40, precision=precision)
        return list(scorer.iter_fid(demo, s, recipe, watch=SampleWatch(on_images=keep)))[-1][1]

    full, half = fid("fp32"), fid("bf16")
    noise = abs(fid("fp32", other) - full)
    assert half != full  # bf16 really ran
    assert abs(half - full) < noise, (full, half, noise)
    # Autocast wraps each network call only: the features of the same images come out identical.
    images = torch.cat(kept)
    from skipsearch.metrics import StreamingFID

    stream = StreamingFID(scorer.extractor, scorer.reference, [len(seeds)])
    assert abs(stream.add(images)[-1][1] - half) < 1e-9 * half  # bf16 features would differ by ~1e-3


@pytest.mark.slow
def test_compiled_blocks_keep_skip_tuning() -> None:
    torch.manual_seed(0)
    net = EDMPrecond(**TINY_NET).eval().requires_grad_(False)
    x, sigma = torch.randn(3, 1, 8, 8), torch.full([3], 1.3)
    sites = ss.skip_sites(net)
    schedules = [ss.SkipSchedule.linear(len(sites), 0.5, 0.9), ss.SkipSchedule.linear(len(sites), 0.7, 1.0, curve=-2)]
    expected = [net(x, sigma)]
    for schedule in schedules:
        with ss.skip_tuned(net, schedule):
            expected.append(net(x, sigma))
    Target("tiny", net, sites).compile(backend="aot_eager")  # graph capture as inductor sees it, no codegen
    with torch.inference_mode():
        got = [net(x, sigma)]
        for schedule in schedules:
            with ss.skip_tuned(net, schedule):
                got.append(net(x, sigma))
    for want, have in zip(expected, got):
        assert torch.allclose(want, have, atol=1e-5)
    assert not torch.allclose(got[0], got[1])  # the schedules still act
    assert all(getattr(b, "_skipsearch_compiled", False) for b in ss.skiptune.find_unet(net).dec.values())
