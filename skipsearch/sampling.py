"""Seeded few-step sampling that reproduces EDM's generate.py image for image.

Sample j is fully determined by its seed: one torch.Generator per seed (seeded with seed mod 2³²)
draws the [C,H,W] latent and then, for conditional networks, the class label — so batching never
changes an image, and two trials with different schedules see the same noise (common random
numbers). Solver state stays in float64; the network runs in float32, or in half precision on a
GPU (EDM's own fp16 path, or autocast around each network call).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

import torch
from torch import nn

from .errors import UsageError
from .schedule import SkipSchedule
from .skiptune import skip_tuned
from .solvers import edm_sigmas, get_solver, solve

__all__ = ["sample", "iter_samples", "seed_latents", "to_uint8", "make_sigmas", "Precision", "PRECISIONS",
           "resolve_precision"]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_precision(precision: str, net: nn.Module, device: str | torch.device) -> Precision:
    """`auto`: half precision on a GPU — fp16 through the network's own path where it has one
    (EDM runs its ADM/DDPM++ networks in fp16 itself), else bf16 — and fp32 on the CPU, where half
    precision is slower, not faster."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise UsageError(f"precision must be auto, {', '.join(PRECISIONS)}; not {precision!r}")
        return precision  # type: ignore[return-value]
    if torch.device(device).type != "cuda":
        return "fp32"
    return "fp16" if hasattr(net, "use_fp16") else "bf16"


@contextmanager
def _native_fp16(net: nn.Module, precision: Precision, device: torch.device) -> Iterator[bool]:
    """EDMPrecond's own fp16 path (fp32 weights, fp16 activations), as EDM itself samples; yields
    whether it is in use (else half precision comes from autocast around each call)."""
    if precision == "fp16" and device.type == "cuda" and hasattr(net, "use_fp16"):
        previous = net.use_fp16
        net.use_fp16 = True
        try:
            yield True
        finally:
            net.use_fp16 = previous
    else:
        yield False


def _call_context(precision: Precision, native: bool, device: torch.device) -> AbstractContextManager[object]:
    """Autocast around one network call only, so nothing else (feature extraction between batches)
    runs in half precision."""
    if precision == "fp32" or native:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def seed_latents(
    seeds: Sequence[int],
    shape: Sequence[int],
    label_dim: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents [N,*shape] and one-hot labels [N,label_dim] exactly as EDM's generate.py draws them."""
    generators = [torch.Generator(device).manual_seed(int(s) % (1 << 32)) for s in seeds]
    latents = torch.stack([torch.randn(list(shape), generator=g, device=device) for g in generators])
    if not label_dim:
        return latents, None
    idx = torch.stack([torch.randint(label_dim, size=[], generator=g, device=device) for g in generators])
    return latents, torch.eye(label_dim, device=device)[idx]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """EDM's conversion to 8-bit pixels: (x·127.5 + 128) clipped to [0, 255], truncated."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def make_sigmas(
    net: nn.Module,
    solver: str,
    nfe: int,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    time_exponent: float = 7.0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """EDM time steps for `nfe` evaluations of `solver`, clamped to the network's σ range."""
    steps = get_solver(solver).steps_for_nfe(nfe)
    sigma_min = max(sigma_min, float(getattr(net, "sigma_min", 0.0)))
    sigma_max = min(sigma_max, float(getattr(net, "sigma_max", float("inf"))))
    return edm_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max, time_exponent=time_exponent, device=device)


def _labels_for(
    class_labels: int | Sequence[int] | torch.Tensor | None,
    drawn: torch.Tensor | None,
    start: int,
    stop: int,
    label_dim: int,
) -> torch.Tensor | None:
    if class_labels is None or drawn is None:
        return drawn
    if isinstance(class_labels, int):
        idx = torch.full([stop - start], class_labels, dtype=torch.long)
    else:
        idx = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)[start:stop]
    if idx.numel() and (idx.min() < 0 or idx.max() >= label_dim):
        raise UsageError(f"class labels must lie in [0, {label_dim}); got {idx.min().item()}..{idx.max().item()}")
    return torch.eye(label_dim, device=drawn.device)[idx.to(drawn.device)]


def iter_samples(
    net: nn.Module,
    seeds: Sequence[int],
    *,
    solver: str,
    nfe: int,
    schedule: SkipSchedule | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
    sigmas: torch.Tensor | None = None,
    time_exponent: float = 7.0,
    precision: Precision = "fp32",
    channels_last: bool | None = None,
    guide: nn.Module | None = None,
    guidance: float = 1.0,
    guide_schedule: SkipSchedule | None = None,
) -> Iterator[tuple[Sequence[int], torch.Tensor]]:
    """Yield (seeds, x) batch by batch; x is the solver's final float64 output, unclipped.

    `class_labels`: None draws them per seed as EDM does; an int fixes one class; a sequence gives
    one class per seed. `sigmas` overrides the EDM time steps (its length must match the NFE).
    `guide`, `guidance` g: the guided denoiser D_guide + g·(D_net − D_guide) (EDM2's autoguidance;
    g = 1 is the main network alone), each solver evaluation then calling both networks; the
    schedule applies to the main network, `guide_schedule` (if any) to the guide.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    device = torch.device(device)
    if sigmas is None:
        sigmas = make_sigmas(net, solver, nfe, time_exponent=time_exponent, device=device)
    label_dim = int(getattr(net, "label_dim", 0))
    shape = [int(net.img_channels), int(net.img_resolution), int(net.img_resolution)]
    if channels_last is None:  # by default where it pays: convolutions on a GPU
        channels_last = device.type == "cuda"
    memory_format = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    if memory_format is torch.channels_last:
        net = net.to(memory_format=torch.channels_last)

    guided = guide is not None and guidance != 1.0
    if guided and memory_format is torch.channels_last:
        guide = guide.to(memory_format=torch.channels_last)  # type: ignore[union-attr]
    guide_labels = int(getattr(guide, "label_dim", 0)) if guided else 0

    seeds = list(seeds)
    with (torch.inference_mode(), skip_tuned(net, schedule), _native_fp16(net, precision, device) as native,
          skip_tuned(guide, guide_schedule) if guided else nullcontext(),
          _native_fp16(guide, precision, device) if guided else nullcontext()):
        for start in range(0, len(seeds), batch_size):
            batch = seeds[start : start + batch_size]
            latents, drawn = seed_latents(batch, shape, label_dim, device)
            labels = _labels_for(class_labels, drawn, start, start + len(batch), label_dim)

            def denoise(x: torch.Tensor, sigma: float, labels: torch.Tensor | None = labels) -> torch.Tensor:
                x = x.to(memory_format=memory_format)
                with _call_context(precision, native, device):
                    out = net(x, sigma, labels).to(torch.float64)
                    if guided:  # an unconditional guide ignores the labels
                        ref = guide(x, sigma, labels if guide_labels else None).to(torch.float64)  # type: ignore[misc]
                        out = ref + guidance * (out - ref)
                return out

            yield batch, solve(solver, denoise, latents, nfe, sigmas=sigmas)


def sample(
    net: nn.Module,
    seeds: Sequence[int],
    *,
    solver: str,
    nfe: int,
    schedule: SkipSchedule | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
    sigmas: torch.Tensor | None = None,
    time_exponent: float = 7.0,
    precision: Precision = "fp32",
    channels_last: bool | None = None,
    guide: nn.Module | None = None,
    guidance: float = 1.0,
    guide_schedule: SkipSchedule | None = None,
) -> torch.Tensor:
    """All samples for `seeds` as one float64 tensor [N,C,H,W] in data space (nominally [-1, 1])."""
    batches = iter_samples(
        net, seeds, solver=solver, nfe=nfe, schedule=schedule, batch_size=batch_size, device=device,
        class_labels=class_labels, sigmas=sigmas, time_exponent=time_exponent, precision=precision,
        channels_last=channels_last, guide=guide, guidance=guidance, guide_schedule=guide_schedule,
    )
    return torch.cat([x for _, x in batches])
