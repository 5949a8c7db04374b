"""SkipSchedule parameterizations and skip_tuned on our networks and on foreign EDM-shaped modules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from skipsearch import ScheduleError, SkipSchedule, skip_sites, skip_tuned
from skipsearch.models.edm import EDMPrecond
from skipsearch.schedule import linear_rho
from skipsearch.skiptune import StructureError


def test_linear_matches_design_formula() -> None:
    k = 16
    for top, bottom, curve in [(1.0, 0.5, 0.0), (0.4, 1.0, -1.5), (0.9, 0.3, 2.0)]:
        gamma = 4.0**curve
        expected = [top + (bottom - top) * (i / (k - 1)) ** gamma for i in range(k)]
        assert SkipSchedule.linear(k, top, bottom, curve).rho == pytest.approx(expected, abs=0)
    rho = linear_rho(5, 1.0, 0.8)
    assert rho == pytest.approx([1.0, 0.95, 0.9, 0.85, 0.8])
    low_outer = SkipSchedule.linear(10, 0.4, 1.0, curve=-2.0).rho
    assert low_outer[0] == 0.4 and all(r > 0.9 for r in low_outer[1:])
    assert SkipSchedule.linear(1, 0.7, 0.2).rho == (0.7,)


def test_stages_assign_one_rho_per_resolution() -> None:
    resolutions = [64, 64, 32, 32, 16]
    sched = SkipSchedule.stages(resolutions, [0.5, 0.8, 1.0])
    assert sched.rho == (0.5, 0.5, 0.8, 0.8, 1.0)
    with pytest.raises(ScheduleError, match="3 resolution stages"):
        SkipSchedule.stages(resolutions, [0.5, 0.8])


@pytest.mark.parametrize(
    "rho, match",
    [([], "empty"), ([1.0, float("nan")], r"rho\[1\]"), ([1.0, 0.0], r"rho\[1\]"), ([-0.5], r"rho\[0\]"),
     ([1.0, float("inf")], r"rho\[1\]"), ("abc", "numbers")],
)
def test_invalid_rho(rho: object, match: str) -> None:
    with pytest.raises(ScheduleError, match=match):
        SkipSchedule(rho)  # type: ignore[arg-type]


def test_invalid_sigma_range() -> None:
    for bad in [(2.0, 1.0), (-1.0, 1.0), (1.0,), (float("nan"), 2.0)]:
        with pytest.raises(ScheduleError, match="sigma_range"):
            SkipSchedule([1.0], sigma_range=bad)


# A foreign network with EDM's structure but its own code: blocks are plain convs, the UNet's own
# forward concatenates. skip_tuned must find the sites by channel counts and act like scaling the skip.
class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool = False, up: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.down, self.up = down, up

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = nn.functional.avg_pool2d(x, 2)
        if self.up:
            x = nn.functional.interpolate(x, scale_factor=2.0)
        return torch.tanh(self.conv(x)) + emb


class _ForeignUNet(nn.Module):
    def __init__(self, scale_skips: list[float] | None = None) -> None:
        super().__init__()
        self.scale_skips = scale_skips
        self.enc = nn.ModuleDict({"8x8_conv": _Block(2, 4), "8x8_block0": _Block(4, 6), "4x4_down": _Block(6, 6, down=True),
                                  "4x4_block0": _Block(6, 5)})
        self.dec = nn.ModuleDict({"4x4_in0": _Block(5, 5), "4x4_block0": _Block(10, 5), "4x4_block1": _Block(11, 6),
                                  "8x8_up": _Block(6, 6, up=True), "8x8_block0": _Block(12, 4), "8x8_block1": _Block(8, 2)})

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        emb = sigma.reshape(-1, 1, 1, 1)
        skips = []
        for block in self.enc.values():
            x = block(x, emb)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                skip = skips.pop()
                if self.scale_skips is not None:
                    skip = skip * self.scale_skips[len(skips)]
                x = torch.cat([x, skip], dim=1)
            x = block(x, emb)
        return x


class _ForeignPrecond(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.model = unet

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x + self.model(x, sigma)


def test_foreign_module_sites_and_tuning() -> None:
    torch.manual_seed(0)
    unet = _ForeignUNet()
    sites = skip_sites(unet)
    assert [(s.index, s.resolution, s.channels, s.producer, s.consumer) for s in sites] == [
        (0, 8, 4, "8x8_conv", "8x8_block1"),
        (1, 8, 6, "8x8_block0", "8x8_block0"),
        (2, 4, 6, "4x4_down", "4x4_block1"),
        (3, 4, 5, "4x4_block0", "4x4_block0"),
    ]
    rho = [0.3, 0.7, 1.0, 1.6]
    x, sigma = torch.randn(3, 2, 8, 8), torch.rand(3)
    expected = _ForeignUNet(rho)
    expected.load_state_dict(unet.state_dict())
    with torch.no_grad():
        plain = unet(x, sigma)
        with skip_tuned(unet, SkipSchedule(rho)):
            tuned = unet(x, sigma)
        assert torch.allclose(tuned, expected(x, sigma), atol=1e-6)
        assert not torch.allclose(tuned, plain)
        assert torch.equal(unet(x, sigma), plain)
    # Only sites with rho != 1 get a hook.
    with skip_tuned(unet, SkipSchedule(rho)):
        hooked = sum(len(b._forward_pre_hooks) for b in unet.dec.values())
    assert hooked == 3


def test_foreign_precond_sigma_window() -> None:
    torch.manual_seed(1)
    net = _ForeignPrecond(_ForeignUNet())
    x = torch.randn(2, 2, 8, 8)
    sched = SkipSchedule([0.5, 0.5, 0.5, 0.5], sigma_range=(0.0, 1.0))
    with torch.no_grad():
        plain = net(x, torch.tensor([2.0, 0.5]))
        with skip_tuned(net, SkipSchedule(sched.rho)):
            tuned = net(x, torch.tensor([2.0, 0.5]))
        with skip_tuned(net, sched):
            mixed = net(x, sigma=torch.tensor([2.0, 0.5]))
    assert torch.allclose(mixed[0], plain[0]) and torch.allclose(mixed[1], tuned[1])
    with pytest.raises(ScheduleError, match="bare UNet"):
        with skip_tuned(net.model, sched):
            pass


def test_identity_schedule_adds_no_hooks_and_errors_restore() -> None:
    net = EDMPrecond(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=8, channel_mult=[1, 2],
                     num_blocks=1, attn_resolutions=[], dropout=0.0).eval()
    k = len(skip_sites(net))
    all_hooks = lambda: sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in net.modules())  # noqa: E731
    with skip_tuned(net, SkipSchedule.identity(k)):
        assert all_hooks() == 0
    with skip_tuned(net, None):
        assert all_hooks() == 0
    with pytest.raises(RuntimeError, match="boom"):
        with skip_tuned(net, SkipSchedule.linear(k, 0.5, 0.5)):
            assert all_hooks() == k
            raise RuntimeError("boom")
    assert all_hooks() == 0
    with pytest.raises(ScheduleError, match=f"network has {k} skip sites"):
        with skip_tuned(net, SkipSchedule.linear(k + 1, 0.5, 0.5)):
            pass
    with skip_tuned(net, SkipSchedule.linear(k, 0.5, 0.5)):
        with pytest.raises(ScheduleError, match="already inside"):
            with skip_tuned(net, SkipSchedule.linear(k, 0.9, 0.9)):
                pass
        with skip_tuned(net, SkipSchedule([1.0] * k)):  # an identity schedule inside owns no guard...
            pass
        with pytest.raises(ScheduleError, match="already inside"):  # ...so leaving it keeps the outer one's
            with skip_tuned(net, SkipSchedule.linear(k, 0.9, 0.9)):
                pass
        assert all_hooks() == k
    assert all_hooks() == 0


def test_not_an_edm_network() -> None:
    with pytest.raises(StructureError, match="no EDM-style UNet"):
        skip_sites(nn.Linear(2, 2))


def test_rho_acts_through_the_block() -> None:
    """Scaling a skip changes the output smoothly: ρ → 1 converges to the untuned output."""
    torch.manual_seed(0)
    unet = _ForeignUNet()
    x, sigma = torch.randn(1, 2, 8, 8), torch.rand(1)
    with torch.no_grad():
        plain = unet(x, sigma)
        diffs = []
        for r in (0.5, 0.9, 0.99):
            with skip_tuned(unet, SkipSchedule([r] * 4)):
                diffs.append((unet(x, sigma) - plain).abs().max().item())
    assert diffs[0] > diffs[1] > diffs[2] > 0 and math.isfinite(diffs[0])
