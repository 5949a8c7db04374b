"""Apply a skip schedule to a UNet without editing its code.

Works by structure, so NVlabs EDM/EDM2 objects are handled exactly like ours: the UNet is the
module holding `enc` and `dec` ModuleDicts (or a diffusers UNet's `down_blocks`/`up_blocks`); a
decoder block pops a skip when its `in_channels` exceed the channels flowing into it, and the
popped tensor is the trailing slice of that block's input. A forward pre-hook scales that slice in
place — the same values as scaling the skip before `torch.cat`, with one elementwise kernel per
tuned site and none at all for sites with ρ = 1.

FreeU rides on the same hooks: its stages are the decoder's two lowest resolutions (a diffusers
UNet's up blocks 0 and 1, as its `resolution_idx`), where the leading half of the backbone's
channels (the block input before the skip) is multiplied by b and the skip's lowest frequencies by s.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ScheduleError, StructureError
from .schedule import FreeU, SkipSchedule, SkipSite

__all__ = ["skip_sites", "site_paths", "skip_tuned", "SkipTuning", "find_unet", "denoiser_sigma", "check_origin",
           "decoder_stages", "low_frequency_scale", "IDENTITY_ATTR", "StructureError"]

_RES_RE = re.compile(r"^(\d+)x(\d+)_")
_ACTIVE_ATTR = "_skipsearch_skip_tuned"


def _is_edm(module: nn.Module) -> bool:
    return isinstance(getattr(module, "enc", None), nn.ModuleDict) and isinstance(getattr(module, "dec", None),
                                                                                   nn.ModuleDict)


def _is_diffusers(module: nn.Module) -> bool:
    return (isinstance(getattr(module, "down_blocks", None), nn.ModuleList)
            and isinstance(getattr(module, "up_blocks", None), nn.ModuleList)
            and isinstance(getattr(module, "conv_in", None), nn.Module))


def find_unet(net: nn.Module) -> nn.Module:
    """The UNet inside `net`: the module owning EDM's `enc`/`dec` ModuleDicts (EDM, EDM2: the
    precond's `.model`/`.unet`), or a diffusers UNet (`down_blocks`/`up_blocks`), or `net` itself."""
    for module in net.modules():
        if _is_edm(module) or _is_diffusers(module):
            return module
    raise StructureError(
        f"{type(net).__name__} has no EDM-style UNet (a module with 'enc' and 'dec' ModuleDicts) and no diffusers "
        "UNet (down_blocks/up_blocks); skip schedules apply to EDM, EDM2 and diffusers UNets"
    )


def _out_channels(module: nn.Module, name: str) -> int:
    channels = getattr(module, "out_channels", None)
    if channels is None and hasattr(module, "channels"):  # diffusers' Downsample2D
        channels = module.channels
    if not isinstance(channels, int):
        raise StructureError(f"encoder entry {name!r} has no integer out_channels")
    return channels


@dataclass(frozen=True)
class _Consumer:
    site: SkipSite
    block: nn.Module
    offset: int  # channel where the popped skip starts in the block's input


def _analyze(unet: nn.Module) -> list[_Consumer]:
    return _analyze_edm(unet) if _is_edm(unet) else _analyze_diffusers(unet)


def _analyze_diffusers(unet: nn.Module) -> list[_Consumer]:
    """diffusers UNets push conv_in's output, each down block resnet's (after its attention) and each
    downsampler's; every up-block resnet pops one and sees cat([main, skip]) as its input."""
    size = getattr(getattr(unet, "config", None), "sample_size", None)
    resolution = (size if isinstance(size, int) else size[0]) if size is not None else None
    pushed: list[tuple[str, int, int | None]] = [("conv_in", _out_channels(unet.conv_in, "conv_in"), resolution)]
    for i, block in enumerate(unet.down_blocks):
        for r, resnet in enumerate(block.resnets):
            pushed.append((f"down_blocks.{i}.resnets.{r}", _out_channels(resnet, f"down_blocks.{i}.resnets.{r}"),
                           resolution))
        for d, down in enumerate(getattr(block, "downsamplers", None) or []):
            resolution = resolution // 2 if resolution else None
            pushed.append((f"down_blocks.{i}.downsamplers.{d}", _out_channels(down, f"down_blocks.{i}.downsamplers.{d}"),
                           resolution))
    stack = list(enumerate(pushed))
    consumers: list[_Consumer] = []
    for j, block in enumerate(unet.up_blocks):
        for r, resnet in enumerate(block.resnets):
            name = f"up_blocks.{j}.resnets.{r}"
            if not stack:
                raise StructureError(f"{name} expects a skip but none is left on the stack")
            index, (producer, channels, res) = stack.pop()
            in_channels = getattr(resnet, "in_channels", None)
            if not isinstance(in_channels, int) or in_channels <= channels:
                raise StructureError(f"{name} takes {in_channels} input channels, less than the {channels} of its skip")
            consumers.append(_Consumer(SkipSite(index, res, channels, producer, name), resnet, in_channels - channels))
    if stack:
        raise StructureError(f"{len(stack)} down-block outputs are never consumed by the up blocks")
    consumers.sort(key=lambda c: c.site.index)
    return consumers


def _analyze_edm(unet: nn.Module) -> list[_Consumer]:
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


def site_paths(unet: nn.Module) -> list[tuple[str, str]]:
    """(consumer, producer) module paths of each site relative to `unet`, in push order: the names
    another tool needs to apply a schedule without skipsearch."""
    edm = _is_edm(unet)
    return [(f"dec.{c.site.consumer}", f"enc.{c.site.producer}") if edm else (c.site.consumer, c.site.producer)
            for c in _analyze(unet)]


SigmaFrom = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def denoiser_sigma(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """σ of a denoiser call net(x, sigma, ...)."""
    return kwargs.get("sigma", args[1] if len(args) > 1 else None)


class _SigmaTracker:
    """Remembers the σ the network was called with, for σ-windowed schedules (`sigma_from` reads it
    from the call: a denoiser's σ argument, or a diffusers UNet's timestep mapped to σ)."""

    def __init__(self, sigma_from: SigmaFrom = denoiser_sigma) -> None:
        self.sigma: torch.Tensor | None = None
        self.sigma_from = sigma_from

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        sigma = self.sigma_from(args, kwargs)
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


_UP_BLOCK_RE = re.compile(r"^up_blocks\.(\d+)\.")


def decoder_stages(unet: nn.Module) -> list[int | None]:
    """Per site (push order), its decoder stage counted from the lowest resolution (0): a diffusers
    UNet's up-block index, else the rank of the consuming block's resolution; None if unknown."""
    consumers = _analyze(unet)
    if not _is_edm(unet):
        found = [_UP_BLOCK_RE.match(c.site.consumer) for c in consumers]
        return [int(m.group(1)) if m else None for m in found]
    resolutions = [_RES_RE.match(c.site.consumer) for c in consumers]
    values = [int(m.group(1)) if m else None for m in resolutions]
    ranks = {res: rank for rank, res in enumerate(sorted({v for v in values if v is not None}))}
    return [ranks.get(v) if v is not None else None for v in values]


def low_frequency_scale(x: torch.Tensor, scale: float, half_width: int = 1) -> torch.Tensor:
    """`x` with its lowest spatial frequencies — a (2·half_width)² box around the centre of the
    shifted 2-D spectrum — multiplied by `scale` (FreeU's skip filter); computed in float32."""
    spectrum = torch.fft.fftshift(torch.fft.fft2(x.to(torch.float32)), dim=(-2, -1))
    cy, cx = spectrum.shape[-2] // 2, spectrum.shape[-1] // 2
    spectrum[..., cy - half_width : cy + half_width, cx - half_width : cx + half_width] *= scale
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real.to(x.dtype)


def _make_hook(offset: int, rho: float, sigma_range: tuple[float, float] | None, tracker: _SigmaTracker,
               freeu: tuple[float, float] | None = None):
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0]  # the decoder's fresh torch.cat output: safe to change in place
        if freeu is not None:  # FreeU has no σ window (diffusers' has none either)
            b, s = freeu
            if b != 1.0:
                x[:, : offset // 2].mul_(b)
            if s != 1.0:
                x[:, offset:] = low_frequency_scale(x[:, offset:], s)
        if rho == 1.0:
            return
        factor: float | torch.Tensor | None = rho
        if sigma_range is not None:
            factor = _window_factor(rho, sigma_range, tracker)
            if factor is None:
                return
        if isinstance(factor, torch.Tensor):
            factor = factor.to(device=x.device, dtype=x.dtype)
        x[:, offset:].mul_(factor)

    return hook


def _freeu_stage(freeu: FreeU | None, stage: int | None) -> tuple[float, float] | None:
    if freeu is None or stage is None:
        return None
    factors = freeu.stage(stage)
    return None if factors is None or factors == (1.0, 1.0) else factors


IDENTITY_ATTR = "skipsearch_identity"  # set by load_network: the checkpoint's name and (lazily) sha256


def check_origin(net: nn.Module, schedule: SkipSchedule, sites: list[SkipSite]) -> None:
    """Refuse a schedule exported for another network: other sites (count, resolution, channels),
    or — when the network knows the checkpoint it was loaded from — another checkpoint's sha256."""
    origin = schedule.origin
    schedule.check_sites(len(sites))
    if origin is None:
        return
    hint = "; pass check_model=False to apply it anyway"
    if origin.sites is not None:
        ours = tuple((s.resolution, s.channels) for s in sites)
        for index, (theirs, mine) in enumerate(zip(origin.sites, ours, strict=True)):
            if theirs[1] != mine[1] or (theirs[0] is not None and mine[0] is not None and theirs[0] != mine[0]):
                raise ScheduleError(f"schedule {origin.label} was exported for another network: its site {index} "
                                    f"is {theirs[1]} channels at {theirs[0]}, this network's {mine[1]} at {mine[0]}"
                                    + hint)
    identity = getattr(net, IDENTITY_ATTR, None)
    if identity is not None and origin.model_sha256 and identity.sha256 != origin.model_sha256.lower():
        raise ScheduleError(f"schedule {origin.label} was exported for checkpoint {origin.model_name} (sha256 "
                            f"{origin.model_sha256[:12]}…), this network is {identity.name} ({identity.sha256[:12]}…)"
                            + hint)


class SkipTuning:
    """A schedule installed on a network (forward hooks); `remove()` restores the network.

    `net` is a denoiser (EDM, EDM2, our diffusers wrapper, or NVlabs' own objects) or a bare UNet;
    σ windows need the denoiser's σ, or `sigma_from` to read it from another call signature. A
    schedule read from an export is checked against the network first (`check_origin`).
    """

    def __init__(self, net: nn.Module, schedule: SkipSchedule, sigma_from: SigmaFrom | None = None,
                 check_model: bool = True) -> None:
        unet = find_unet(net)
        consumers = _analyze(unet)
        if check_model:
            check_origin(net, schedule, [c.site for c in consumers])
        schedule.check_sites(len(consumers))
        self.handles: list[Any] = []
        self.unet = unet
        self._owns_guard = False  # only the schedule that set the nesting guard may clear it
        if schedule.is_identity:
            return
        if getattr(unet, _ACTIVE_ATTR, False):
            raise ScheduleError("this network is already inside skip_tuned() (or has a schedule applied); "
                                "nesting schedules is not supported")
        if schedule.sigma_range is not None and unet is net and sigma_from is None:
            raise ScheduleError("a σ-windowed schedule needs the denoiser (e.g. EDMPrecond), not its bare UNet")
        tracker = _SigmaTracker(sigma_from or denoiser_sigma)
        unet.__dict__[_ACTIVE_ATTR] = True
        self._owns_guard = True
        try:
            if schedule.sigma_range is not None:
                self.handles.append(net.register_forward_pre_hook(tracker.before, with_kwargs=True))
                self.handles.append(net.register_forward_hook(tracker.after, with_kwargs=True, always_call=True))
            stages = decoder_stages(unet) if schedule.freeu is not None else [None] * len(consumers)
            for consumer in consumers:
                rho = schedule.rho[consumer.site.index]
                stage = stages[consumer.site.index]
                freeu = _freeu_stage(schedule.freeu, stage)
                if rho != 1.0 or freeu is not None:
                    hook = _make_hook(consumer.offset, rho, schedule.sigma_range, tracker, freeu)
                    self.handles.append(consumer.block.register_forward_pre_hook(hook))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if self._owns_guard:
            self.unet.__dict__.pop(_ACTIVE_ATTR, None)
            self._owns_guard = False


@contextmanager
def skip_tuned(net: nn.Module, schedule: SkipSchedule | None, sigma_from: SigmaFrom | None = None, *,
               check_model: bool = True) -> Iterator[nn.Module]:
    """Within the block, every popped skip i is multiplied by `schedule.rho[i]`.

    The network is restored on exit, also on error. `None` or an all-ones schedule changes nothing
    and adds no work; ρ = 1 sites cost nothing. A schedule from an exported file is refused on a
    network other than the one it was searched on, unless `check_model=False`.
    """
    if schedule is None:
        find_unet(net)
        yield net
        return
    tuning = SkipTuning(net, schedule, sigma_from, check_model)
    try:
        yield net
    finally:
        tuning.remove()
