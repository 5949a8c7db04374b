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
from dataclasses import replace
from typing import Any, Literal, TypedDict

from typing_extensions import Unpack

import torch
from torch import nn

from .errors import UsageError
from .recipe import SamplingRecipe
from .steps import EDM_SIGMA_MAX, EDM_SIGMA_MIN, EDM_TIME_EXPONENT, TimeSteps
from .schedule import SkipSchedule
from .skiptune import skip_tuned
from .solvers import get_solver, solve

__all__ = ["sample", "iter_samples", "SampleOptions", "sample_batches", "recipe_for", "seed_latents", "to_uint8", "make_sigmas", "recipe_sigmas", "recipe_sigma_list",
           "net_sigma_range", "Precision", "PRECISIONS", "resolve_precision"]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("fp32", "bf16", "fp16")
ScheduleLike = Any  # a SkipSchedule, an exported ScheduleEntry (which brings its own recipe) or a ScheduleDocument


def resolve_precision(precision: str, net: nn.Module, device: str | torch.device) -> Precision:
    """`auto`: half precision on a GPU — fp16 through the network's own path where it has one
    (EDM runs its ADM/DDPM++ networks in fp16 itself) or that is made for fp16 (Stable Diffusion's
    UNets: `prefers_fp16`), else bf16 — and fp32 on the CPU, where half precision is slower, not faster."""
    if precision != "auto":
        if precision not in PRECISIONS:
            raise UsageError(f"precision must be auto, {', '.join(PRECISIONS)}; not {precision!r}")
        return precision  # type: ignore[return-value]
    if torch.device(device).type != "cuda":
        return "fp32"
    return "fp16" if hasattr(net, "use_fp16") or getattr(net, "prefers_fp16", False) else "bf16"


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
    by_seed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Latents [N,*shape] and one-hot labels [N,label_dim] exactly as EDM's generate.py draws them;
    `by_seed`: label s mod label_dim for seed s (a prompt set: every trial pairs the same prompt
    with the same noise)."""
    generators = [torch.Generator(device).manual_seed(int(s) % (1 << 32)) for s in seeds]
    latents = torch.stack([torch.randn(list(shape), generator=g, device=device) for g in generators])
    if not label_dim:
        return latents, None
    if by_seed:
        idx = torch.tensor([int(s) % label_dim for s in seeds], device=device)
    else:
        idx = torch.stack([torch.randint(label_dim, size=[], generator=g, device=device) for g in generators])
    return latents, torch.eye(label_dim, device=device)[idx]


@contextmanager
def _cfg_scale(net: nn.Module, cfg: float | None) -> Iterator[None]:
    """A text-to-image denoiser guides with the recipe's classifier-free guidance scale."""
    if cfg is None or not hasattr(net, "cfg"):
        yield
        return
    previous = net.cfg
    net.cfg = float(cfg)
    try:
        yield
    finally:
        net.cfg = previous


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """EDM's conversion to 8-bit pixels: (x·127.5 + 128) clipped to [0, 255], truncated."""
    return (x * 127.5 + 128).clip(0, 255).to(torch.uint8)


def net_sigma_range(net: nn.Module) -> tuple[float, float]:
    """The σ range a network was trained on (EDM: unbounded; a DDPM-style model: its σ table)."""
    return float(getattr(net, "sigma_min", 0.0)), float(getattr(net, "sigma_max", float("inf")))


def recipe_sigma_list(recipe: SamplingRecipe, net: nn.Module | None = None) -> list[float]:
    """The σ steps `recipe`'s solver takes at its NFE (on `net`: a grid clamped to its σ range)."""
    steps = get_solver(recipe.solver).steps_for_nfe(recipe.nfe)
    return recipe.steps.sigma_list(steps, net_sigma_range(net) if net is not None else None)


def recipe_sigmas(net: nn.Module, recipe: SamplingRecipe, device: str | torch.device = "cpu") -> torch.Tensor:
    """The σ steps `recipe` takes on `net`, as the float64 tensor the solvers integrate over."""
    return torch.tensor(recipe_sigma_list(recipe, net), dtype=torch.float64, device=device)


def make_sigmas(
    net: nn.Module,
    solver: str,
    nfe: int,
    *,
    sigma_min: float = EDM_SIGMA_MIN,
    sigma_max: float = EDM_SIGMA_MAX,
    time_exponent: float = EDM_TIME_EXPONENT,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """EDM time steps for `nfe` evaluations of `solver`, clamped to the network's σ range."""
    recipe = SamplingRecipe(solver=solver, nfe=nfe, steps=TimeSteps(sigma_min, sigma_max, time_exponent))
    return recipe_sigmas(net, recipe, device)


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


def _bare(schedule: SkipSchedule | None) -> SkipSchedule | None:
    """The coefficients alone: the guide is another checkpoint than the one a schedule names."""
    return None if schedule is None else SkipSchedule(schedule.rho, schedule.sigma_range, freeu=schedule.freeu)


def _draw(
    net: nn.Module,
    seeds: Sequence[int],
    recipe: SamplingRecipe,
    schedule: SkipSchedule | None,
    guide_schedule: SkipSchedule | None,
    device: torch.device,
    class_labels: int | Sequence[int] | torch.Tensor | None,
) -> Iterator[tuple[Sequence[int], torch.Tensor]]:
    guide = recipe.guide if recipe.guided else None
    if recipe.guided and guide is None:
        raise UsageError(f"this recipe samples with autoguidance (guidance {recipe.guidance:g}): give its guiding "
                         "network (--guide CHECKPOINT, or recipe.with_networks(guide=net))")
    precision = resolve_precision(recipe.precision, net, device)
    sigmas = recipe_sigmas(net, recipe, device)
    params = recipe.params
    label_dim = int(getattr(net, "label_dim", 0))
    shape = [int(net.img_channels), int(net.img_resolution), int(net.img_resolution)]
    channels_last = recipe.channels_last if recipe.channels_last is not None else device.type == "cuda"
    memory_format = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    if memory_format is torch.channels_last:  # where it pays: convolutions on a GPU
        net = net.to(memory_format=torch.channels_last)
        if guide is not None:
            guide = guide.to(memory_format=torch.channels_last)
    guide_labels = int(getattr(guide, "label_dim", 0)) if guide is not None else 0

    seeds = list(seeds)
    by_seed = getattr(net, "label_rule", "drawn") == "seed"
    with (torch.inference_mode(), skip_tuned(net, schedule), _native_fp16(net, precision, device) as native,
          _cfg_scale(net, recipe.cfg),
          skip_tuned(guide, _bare(guide_schedule)) if guide is not None else nullcontext(),
          _native_fp16(guide, precision, device) if guide is not None else nullcontext()):
        for start in range(0, len(seeds), recipe.batch_size):
            batch = seeds[start : start + recipe.batch_size]
            latents, drawn = seed_latents(batch, shape, label_dim, device, by_seed)
            labels = _labels_for(class_labels, drawn, start, start + len(batch), label_dim)

            def denoise(x: torch.Tensor, sigma: float, labels: torch.Tensor | None = labels) -> torch.Tensor:
                x = x.to(memory_format=memory_format)
                with _call_context(precision, native, device):
                    out = net(x, sigma, labels).to(torch.float64)
                    if guide is not None:  # an unconditional guide ignores the labels
                        ref = guide(x, sigma, labels if guide_labels else None).to(torch.float64)
                        out = ref + recipe.guidance * (out - ref)
                return out

            yield batch, solve(recipe.solver, denoise, latents, recipe.nfe, sigmas=sigmas, params=params)


def _entry_parts(schedule: ScheduleLike, recipe: SamplingRecipe | None) -> tuple[SkipSchedule | None, SamplingRecipe | None]:
    """An exported entry as the schedule: its ρ, and (unless one is given) the recipe it records."""
    to_recipe = getattr(schedule, "recipe", None)
    if schedule is None or isinstance(schedule, SkipSchedule) or not callable(to_recipe):
        return schedule, recipe
    return schedule.schedule, recipe or to_recipe()


def sample_batches(
    net: nn.Module,
    seeds: Sequence[int],
    recipe: SamplingRecipe,
    schedule: ScheduleLike = None,
    *,
    device: str | torch.device = "cpu",
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
) -> Iterator[tuple[Sequence[int], torch.Tensor]]:
    """Yield (seeds, x) batch by batch; x is the solver's final float64 output, unclipped.

    `class_labels`: None draws them per seed as EDM does; an int fixes one class; a sequence gives
    one class per seed. The schedule applies to the main network, and to the guide when the recipe
    says `guide_tuned`.
    """
    schedule, _ = _entry_parts(schedule, recipe)
    guide_schedule = schedule if recipe.guide_tuned else None
    return _draw(net, seeds, recipe, schedule, guide_schedule, torch.device(device), class_labels)


class SampleOptions(TypedDict, total=False):
    """The keyword arguments of `sample` and `iter_samples`, written once.

    `schedule` is a SkipSchedule, or an exported schedule entry: then the entry's recorded recipe
    (solver, NFE, σ steps, solver parameters, guidance) is used unless `recipe` is given, and the
    other keywords override single fields of it. `sigmas` overrides the time steps (its length must
    match the NFE). `guide`, `guidance` g: the guided denoiser D_guide + g·(D_net − D_guide)
    (EDM2's autoguidance; g = 1 is the main network alone); the schedule applies to the main
    network, `guide_schedule` (if any) to the guide. `class_labels`: None draws them per seed as
    EDM does; an int fixes one class; a sequence gives one class per seed.
    """

    solver: str
    nfe: int
    schedule: ScheduleLike
    recipe: SamplingRecipe
    batch_size: int
    device: str | torch.device
    class_labels: int | Sequence[int] | torch.Tensor
    sigmas: torch.Tensor | Sequence[float]
    time_exponent: float
    precision: str
    channels_last: bool
    guide: nn.Module
    guidance: float
    guide_schedule: SkipSchedule


def recipe_for(
    schedule: ScheduleLike, recipe: SamplingRecipe | None, solver: str | None, nfe: int | None, **given: Any,
) -> tuple[SkipSchedule | None, SamplingRecipe]:
    """The recipe of the public sampling calls: `recipe`, else the one an exported entry records,
    else EDM's steps; keyword arguments given explicitly override it. A whole schedules document
    gives its entry at `nfe` (and `solver`), a family's evaluated there when no entry has that NFE."""
    if callable(getattr(schedule, "entry", None)) and hasattr(schedule, "families"):
        schedule = schedule.entry(nfe=nfe, solver=solver)
    schedule, base = _entry_parts(schedule, recipe)
    sigmas = given.pop("sigmas", None)
    time_exponent = given.pop("time_exponent", None)
    changes = {k: v for k, v in given.items() if v is not None}
    if solver is not None:
        changes["solver"] = solver
    if nfe is not None:
        changes["nfe"] = nfe
    if base is None:
        if "solver" not in changes or "nfe" not in changes:
            raise UsageError("give solver= and nfe= (or recipe=, or an exported schedule entry)")
        base = SamplingRecipe(solver=changes["solver"], nfe=changes["nfe"])
    steps = base.steps
    if time_exponent is not None:
        steps = replace(steps, time_exponent=float(time_exponent), sigmas=None)
    if sigmas is not None:
        steps = replace(steps, sigmas=tuple(float(v) for v in torch.as_tensor(sigmas, dtype=torch.float64).tolist()))
    return schedule, base.with_(steps=steps, **changes)


_RECIPE_FIELDS = ("batch_size", "sigmas", "time_exponent", "precision", "channels_last", "guidance")


def iter_samples(net: nn.Module, seeds: Sequence[int], **options: Unpack[SampleOptions]
                 ) -> Iterator[tuple[Sequence[int], torch.Tensor]]:
    """Yield (seeds, x) batch by batch; x is the solver's final float64 output, unclipped.
    Keyword arguments: `SampleOptions`."""
    unknown = sorted(set(options) - set(SampleOptions.__annotations__))
    if unknown:
        raise TypeError(f"iter_samples() got an unexpected keyword argument {unknown[0]!r}")
    opts: dict[str, Any] = dict(options)
    schedule, chosen = recipe_for(opts.get("schedule"), opts.get("recipe"), opts.get("solver"), opts.get("nfe"),
                                  **{k: opts.get(k) for k in _RECIPE_FIELDS})
    if opts.get("guide") is not None:
        chosen = chosen.with_networks(guide=opts["guide"])
    guide_schedule = opts.get("guide_schedule")
    if guide_schedule is None and chosen.guide_tuned:
        guide_schedule = schedule
    return _draw(net, seeds, chosen.with_(guide_tuned=False), schedule, guide_schedule,
                 torch.device(opts.get("device", "cpu")), opts.get("class_labels"))


def sample(net: nn.Module, seeds: Sequence[int], **options: Unpack[SampleOptions]) -> torch.Tensor:
    """All samples for `seeds` as one float64 tensor [N,C,H,W] in data space (nominally [-1, 1]).

    Keyword arguments: `SampleOptions` — `sample(net, seeds, solver="heun", nfe=19, schedule=sched)`,
    or `sample(net, seeds, schedule=doc.entry(...))` to sample exactly as the search that chose the
    entry did.
    """
    return torch.cat([x for _, x in iter_samples(net, seeds, **options)])
