"""Apply a skip schedule to an EDM-structured network without editing its code.

Works by structure, so NVlabs EDM's own objects are handled exactly like ours: the UNet is the
module holding `enc` and `dec` ModuleDicts; a decoder block pops a skip when its `in_channels`
exceed the channels flowing into it, and the popped tensor is the trailing slice of that block's
input. A forward pre-hook scales that slice in place — the same values as scaling the skip before
`torch.cat`, with one elementwise kernel per tuned site and none at all for sites with ρ = 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ScheduleError, StructureError
from .schedule import SkipSchedule, SkipSite

__all__ = ["skip_sites", "skip_tuned", "find_unet", "StructureError"]

_RES_RE = re.compile(r"^(\d+)x(\d+)_")
_ACTIVE_ATTR = "_skipsearch_skip_tuned"


def find_unet(net: nn.Module) -> nn.Module:
    """The module that owns the `enc`/`dec` ModuleDicts (the precond's `.model`, or `net` itself)."""
    for module in net.modules():
        if isinstance(getattr(module, "enc", None), nn.ModuleDict) and isinstance(
            getattr(module, "dec", None), nn.ModuleDict
        ):
            return module
    raise StructureError(
        f"{type(net).__name__} has no EDM-style UNet (a module with 'enc' and 'dec' ModuleDicts); "
        "skip schedules apply to EDM networks"
    )


def _out_channels(module: nn.Module, name: str) -> int:
    channels = getattr(module, "out_channels", None)
    if not isinstance(channels, int):
        raise StructureError(f"encoder entry {name!r} has no integer out_channels")
    return channels


@dataclass(frozen=True)
class _Consumer:
    site: SkipSite
    block: nn.Module
    offset: int  # channel where the popped skip starts in the block's input


def _analyze(unet: nn.Module) -> list[_Consumer]:
    pushed: list[tuple[str, int]] = []
    for name, module in unet.enc.items():
        if "aux" not in name:
            pushed.append((name, _out_channels(module, name)))
    if not pushed:
        raise StructureError("the UNet's encoder pushes no skip tensors")
    stack = list(enumerate(pushed))
    running = pushed[-1][1]
    consumers: list[_Consumer] = []
    for name, block in unet.dec.items():
        if "aux" in name:
            continue
        in_channels = getattr(block, "in_channels", None)
        if not isinstance(in_channels, int):
            raise StructureError(f"decoder entry {name!r} has no integer in_channels")
        if in_channels != running:
            if not stack:
                raise StructureError(f"decoder block {name!r} expects a skip but none is left on the stack")
            index, (producer, channels) = stack.pop()
            if in_channels - running != channels:
                raise StructureError(
                    f"decoder block {name!r} takes {in_channels - running} skip channels, "
                    f"but encoder entry {producer!r} pushes {channels}"
                )
            match = _RES_RE.match(producer)
            site = SkipSite(index, int(match.group(1)) if match else None, channels, producer, name)
            consumers.append(_Consumer(site, block, running))
        running = _out_channels(block, name)
    if stack:
        raise StructureError(f"{len(stack)} encoder skips are never consumed by the decoder")
    consumers.sort(key=lambda c: c.site.index)
    return consumers


def skip_sites(net: nn.Module) -> list[SkipSite]:
    """The K skip sites of `net` in push order (0 = outermost, popped last)."""
    return [c.site for c in _analyze(find_unet(net))]


class _SigmaTracker:
    """Remembers the σ the denoiser was called with, for σ-windowed schedules."""

    def __init__(self) -> None:
        self.sigma: torch.Tensor | None = None

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sigma = kwargs.get("sigma", args[1] if len(args) > 1 else None)
        if sigma is None:
            raise ScheduleError("a σ-windowed schedule needs the denoiser to be called as net(x, sigma, ...)")
        self.sigma = torch.as_tensor(sigma).detach().reshape(-1)

    def after(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        self.sigma = None


def _window_factor(rho: float, sigma_range: tuple[float, float], tracker: _SigmaTracker) -> float | torch.Tensor | None:
    if tracker.sigma is None:
        raise ScheduleError("σ-windowed schedule used without a σ: call the denoiser, not its bare UNet")
    lo, hi = sigma_range
    sigma = tracker.sigma
    inside = (sigma >= lo) & (sigma <= hi)
    if bool(inside.all()):
        return rho
    if not bool(inside.any()):
        return None
    factor = torch.where(inside, torch.tensor(rho, dtype=torch.float32), torch.tensor(1.0))
    return factor.reshape(-1, 1, 1, 1)


def _make_hook(offset: int, rho: float, sigma_range: tuple[float, float] | None, tracker: _SigmaTracker):
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        factor: float | torch.Tensor | None = rho
        if sigma_range is not None:
            factor = _window_factor(rho, sigma_range, tracker)
            if factor is None:
                return
        x = args[0]
        if isinstance(factor, torch.Tensor):
            factor = factor.to(device=x.device, dtype=x.dtype)
        x[:, offset:].mul_(factor)  # the decoder's fresh torch.cat output: safe to scale in place

    return hook


@contextmanager
def skip_tuned(net: nn.Module, schedule: SkipSchedule | None) -> Iterator[nn.Module]:
    """Within the block, every popped skip i is multiplied by `schedule.rho[i]`.

    `net` is an EDM denoiser (ours or NVlabs') or its bare UNet; σ windows need the denoiser, whose
    σ argument decides per sample whether the coefficients apply. The network is restored on exit,
    also on error. `None` or an all-ones schedule changes nothing and adds no work.
    """
    unet = find_unet(net)
    consumers = _analyze(unet)
    if schedule is None:
        yield net
        return
    schedule.check_sites(len(consumers))
    if schedule.is_identity:
        yield net
        return
    if getattr(unet, _ACTIVE_ATTR, False):
        raise ScheduleError("this network is already inside skip_tuned(); nesting schedules is not supported")
    if schedule.sigma_range is not None and unet is net:
        raise ScheduleError("a σ-windowed schedule needs the denoiser (e.g. EDMPrecond), not its bare UNet")

    tracker = _SigmaTracker()
    handles = []
    try:
        unet.__dict__[_ACTIVE_ATTR] = True
        if schedule.sigma_range is not None:
            handles.append(net.register_forward_pre_hook(tracker.before, with_kwargs=True))
            handles.append(net.register_forward_hook(tracker.after, with_kwargs=True, always_call=True))
        for consumer in consumers:
            rho = schedule.rho[consumer.site.index]
            if rho != 1.0:
                hook = _make_hook(consumer.offset, rho, schedule.sigma_range, tracker)
                handles.append(consumer.block.register_forward_pre_hook(hook))
        yield net
    finally:
        for handle in handles:
            handle.remove()
        unet.__dict__.pop(_ACTIVE_ATTR, None)
