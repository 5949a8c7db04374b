"""Seeded sampling: EDM generate.py's latents/labels, batch invariance, schedules and σ windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skipsearch import SkipSchedule, sample, skip_sites, to_uint8
from skipsearch.models.edm import EDMPrecond
from skipsearch.sampling import iter_samples, make_sigmas, seed_latents
from skipsearch.solvers import SolverError

DATA = Path(__file__).parent / "data"


def _reference_net(name: str) -> EDMPrecond:
    ref = torch.load(DATA / name, weights_only=True)
    net = EDMPrecond(**ref["constructor_kwargs"]).eval().requires_grad_(False)
    net.load_state_dict(ref["state_dict"])
    return net


@pytest.fixture(scope="module")
def cond_net() -> EDMPrecond:
    return _reference_net("edm-ref-adm-small-cond.pt")


@pytest.fixture(scope="module")
def uncond_net() -> EDMPrecond:
    return _reference_net("edm-ref-ddpmpp-small.pt")


def _edm_generate_reference(net: EDMPrecond, seeds: list[int], num_steps: int) -> torch.Tensor:
    """generate.py as ARCHITECTURE.md §7 describes it: per-seed generators, then EDM's Heun loop."""
    gens = [torch.Generator().manual_seed(s % (1 << 32)) for s in seeds]
    latents = torch.stack([torch.randn([net.img_channels, net.img_resolution, net.img_resolution], generator=g) for g in gens])
    labels = None
    if net.label_dim:
        idx = torch.stack([torch.randint(net.label_dim, size=[], generator=g) for g in gens])
        labels = torch.eye(net.label_dim)[idx]
    i = torch.arange(num_steps, dtype=torch.float64)
    lo, hi, e = 0.002, 80.0, 7.0
    t = (hi ** (1 / e) + i / (num_steps - 1) * (lo ** (1 / e) - hi ** (1 / e))) ** e
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    x = latents.to(torch.float64) * t[0]
    for k in range(num_steps):
        d = (x - net(x, t[k], labels).to(torch.float64)) / t[k]
        x_next = x + (t[k + 1] - t[k]) * d
        if k < num_steps - 1:
            d2 = (x_next - net(x_next, t[k + 1], labels).to(torch.float64)) / t[k + 1]
            x_next = x + (t[k + 1] - t[k]) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


@pytest.mark.parametrize("fixture", ["cond_net", "uncond_net"])
def test_heun_matches_edm_generate(fixture: str, request: pytest.FixtureRequest) -> None:
    net = request.getfixturevalue(fixture)
    seeds = [0, 1, 7, 2**32 + 5]
    with torch.inference_mode():
        expected = _edm_generate_reference(net, seeds, num_steps=4)
    got = sample(net, seeds, solver="heun", nfe=7, batch_size=4)
    assert got.dtype == torch.float64
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert torch.equal(to_uint8(got), to_uint8(expected))


def test_seed_wraps_modulo_2_32_and_labels_follow_latents() -> None:
    a, la = seed_latents([3], [1, 4, 4], label_dim=10)
    b, lb = seed_latents([3 + 2**32], [1, 4, 4], label_dim=10)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert la.shape == (1, 10) and la.sum() == 1


def test_batch_size_does_not_change_images(cond_net: EDMPrecond) -> None:
    seeds = list(range(5))
    one = sample(cond_net, seeds, solver="euler", nfe=3, batch_size=1)
    all_ = sample(cond_net, seeds, solver="euler", nfe=3, batch_size=5)
    two = sample(cond_net, seeds, solver="euler", nfe=3, batch_size=2)
    assert torch.allclose(one, all_, atol=1e-5, rtol=0) and torch.allclose(two, all_, atol=1e-5, rtol=0)
    assert (to_uint8(one) != to_uint8(all_)).float().mean() < 1e-3
    batches = [s for s, _ in iter_samples(cond_net, seeds, solver="euler", nfe=3, batch_size=2)]
    assert batches == [[0, 1], [2, 3], [4]]


def test_schedule_changes_images_and_identity_does_not(uncond_net: EDMPrecond) -> None:
    k = len(skip_sites(uncond_net))
    seeds = [10, 11]
    base = sample(uncond_net, seeds, solver="dpmpp_2m", nfe=4)
    same = sample(uncond_net, seeds, solver="dpmpp_2m", nfe=4, schedule=SkipSchedule.identity(k))
    tuned = sample(uncond_net, seeds, solver="dpmpp_2m", nfe=4, schedule=SkipSchedule.linear(k, 0.5, 1.0))
    assert torch.equal(base, same)
    assert (tuned - base).abs().max() > 1e-3


def test_sigma_window_follows_the_solver_sigma(uncond_net: EDMPrecond) -> None:
    """A window that covers no solver σ is the untuned sampler; one covering all σ is the plain schedule."""
    k = len(skip_sites(uncond_net))
    seeds = [1, 2]
    sigmas = make_sigmas(uncond_net, "euler", 3)
    base = sample(uncond_net, seeds, solver="euler", nfe=3)
    plain = sample(uncond_net, seeds, solver="euler", nfe=3, schedule=SkipSchedule.linear(k, 0.5, 0.7))
    outside = sample(uncond_net, seeds, solver="euler", nfe=3, schedule=SkipSchedule.linear(k, 0.5, 0.7, sigma_range=(100, 200)))
    inside = sample(uncond_net, seeds, solver="euler", nfe=3, schedule=SkipSchedule.linear(k, 0.5, 0.7, sigma_range=(0.001, 100)))
    partial = sample(
        uncond_net, seeds, solver="euler", nfe=3,
        schedule=SkipSchedule.linear(k, 0.5, 0.7, sigma_range=(float(sigmas[1]) * 0.99, float(sigmas[0]) * 1.01)),
    )
    assert torch.equal(outside, base)
    assert torch.equal(inside, plain)
    assert not torch.equal(partial, base) and not torch.equal(partial, plain)


def test_per_sample_sigma_window(uncond_net: EDMPrecond) -> None:
    """Within one batch, only samples whose σ lies in the window are tuned."""
    k = len(skip_sites(uncond_net))
    from skipsearch import skip_tuned

    x = torch.randn(2, 3, 16, 16)
    sigma = torch.tensor([0.5, 20.0])
    with torch.inference_mode():
        plain = uncond_net(x, sigma)
        with skip_tuned(uncond_net, SkipSchedule.linear(k, 0.4, 0.6)):
            tuned = uncond_net(x, sigma)
        with skip_tuned(uncond_net, SkipSchedule.linear(k, 0.4, 0.6, sigma_range=(1.0, 50.0))):
            mixed = uncond_net(x, sigma)
    assert torch.allclose(mixed[0], plain[0]) and torch.allclose(mixed[1], tuned[1])


def test_fixed_class_labels(cond_net: EDMPrecond) -> None:
    a = sample(cond_net, [0, 1], solver="euler", nfe=2, class_labels=3)
    b = sample(cond_net, [0, 1], solver="euler", nfe=2, class_labels=[3, 3])
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="class labels"):
        sample(cond_net, [0], solver="euler", nfe=2, class_labels=10)


def test_impossible_nfe_is_a_clear_error(uncond_net: EDMPrecond) -> None:
    with pytest.raises(SolverError, match="9.*11|11.*9"):
        sample(uncond_net, [0], solver="heun", nfe=10)
