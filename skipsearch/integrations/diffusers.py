"""Apply a skip schedule to a diffusers UNet inside a stock pipeline.

    from skipsearch.integrations.diffusers import apply_schedule
    with apply_schedule(pipe.unet, "schedules.json", scheduler=pipe.scheduler, nfe=10):
        images = pipe(num_inference_steps=10).images

Covers `UNet2DModel` (pixel DDPM/DDIM models) and `UNet2DConditionModel` (Stable Diffusion): the
sites are the inputs of the up blocks' resnets, which concatenate one skip each, in push order
(the same sites a search on the folder used). A schedule with a σ window needs the pipeline's
scheduler: the UNet is called with a timestep, which its training schedule turns into the σ the
window is written in (σ_t = √((1 − ᾱ_t)/ᾱ_t), the σ of skipsearch's wrapper of such a model).

`apply_schedule` restores the UNet when the block ends; `install_schedule` keeps the schedule
until its handle's `remove()`, for code that holds a pipeline for its lifetime.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import ScheduleError
from ..models.diffusers import folder_sha256
from ..schedule import ScheduleOrigin, SkipSchedule
from ..schedule_file import ScheduleDocument, ScheduleEntry, load_schedules
from ..skiptune import SigmaFrom, SkipTuning, find_unet, site_paths

__all__ = ["apply_schedule", "install_schedule", "schedule_steps", "timestep_sigma", "unet_sites"]

_log = logging.getLogger("skipsearch")

ScheduleLike = SkipSchedule | ScheduleEntry | ScheduleDocument | str | os.PathLike[str]


def unet_sites(unet: nn.Module) -> list[str]:
    """The block each skip site scales, in push order, as module paths of `unet`."""
    return [block for block, _ in site_paths(find_unet(unet))]


def timestep_sigma(alphas_cumprod: torch.Tensor, continuous: bool = False) -> SigmaFrom:
    """Reads a UNet call's timestep (positional or `timestep=`) as σ on the training schedule given
    by ᾱ; a fractional timestep (Euler-type schedulers) interpolates log σ between its neighbours.
    `continuous`: the scheduler passes ln(σ)/4 instead of an index (Euler's timestep_type="continuous")."""
    if continuous:
        def from_log(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
            t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            return None if t is None else (4 * torch.as_tensor(t).detach().to("cpu", torch.float64).reshape(-1)).exp()

        return from_log
    a = alphas_cumprod.detach().to("cpu", torch.float64)
    log_sigmas = ((1 - a) / a).sqrt().log()
    last = len(log_sigmas) - 1

    def sigma_from(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if t is None:
            return None
        t = torch.as_tensor(t).detach().to("cpu", torch.float64).reshape(-1).clamp(0, last)
        low = t.floor().long().clamp(max=max(last - 1, 0))
        w = t - low
        high = (low + 1).clamp(max=last)
        return (log_sigmas[low] * (1 - w) + log_sigmas[high] * w).exp()

    return sigma_from


def _entry_of(schedule: ScheduleLike, model: str | None, nfe: int | None, solver: str | None) -> ScheduleEntry | SkipSchedule:
    if isinstance(schedule, SkipSchedule):
        return schedule
    if isinstance(schedule, (str, os.PathLike)):
        schedule = load_schedules(schedule)
    if isinstance(schedule, ScheduleDocument):
        schedule = schedule.entry(model=model, nfe=nfe, solver=solver)  # a family evaluates at `nfe`
    return schedule


def _schedule_of(schedule: ScheduleLike, sites: list[str], model: str | None, nfe: int | None,
                 solver: str | None) -> SkipSchedule:
    schedule = _entry_of(schedule, model, nfe, solver)
    if isinstance(schedule, SkipSchedule):
        return schedule
    if not isinstance(schedule, ScheduleEntry):
        raise ScheduleError(f"a schedule is a SkipSchedule, a ScheduleEntry, a schedules document or a file path, "
                            f"not {type(schedule).__name__}")
    schedule.check_num_skips(len(sites))
    for site in schedule.sites or []:
        index, block = site.get("index"), site.get("block")
        if isinstance(index, int) and 0 <= index < len(sites) and block is not None and block != sites[index]:
            raise ScheduleError(f"schedule {schedule.label} scales block {block!r} at site {index}, this UNet has "
                                f"{sites[index]!r} there: it was exported for a different network")
    return schedule.schedule


def _check_folder(unet: nn.Module, origin: ScheduleOrigin) -> None:
    """The UNet's own folder (diffusers records where it was loaded from) must be the one the
    schedule was searched on: the same content hash where the folder is here, else the same name."""
    where = getattr(getattr(unet, "config", None), "_name_or_path", None)
    if not where:
        return
    folder = Path(str(where))
    if folder.name == "unet" and (folder.parent / "unet").is_dir():
        folder = folder.parent  # loaded with subfolder="unet": the pipeline folder is what was searched
    hint = "; pass check_model=False to apply it anyway"
    if folder.is_dir() and origin.model_sha256:
        found = folder_sha256(folder)
        if found != origin.model_sha256.lower():
            raise ScheduleError(f"schedule {origin.label} was searched on {origin.model_name} (sha256 "
                                f"{origin.model_sha256[:12]}…), this UNet comes from {folder} ({found[:12]}…){hint}")
    elif folder.name != origin.model_name:
        raise ScheduleError(f"schedule {origin.label} was searched on {origin.model_name}, this UNet is {folder.name}"
                            f"{hint}")


def install_schedule(unet: nn.Module, schedule: ScheduleLike, *, scheduler: Any = None, model: str | None = None,
                     nfe: int | None = None, solver: str | None = None, check_model: bool = True) -> SkipTuning:
    """Scale `unet`'s skips by `schedule` until the returned handle's `remove()`.

    `schedule` is a schedules file (path or loaded document; `model`/`nfe`/`solver` pick the entry,
    else the best one), one entry, or a SkipSchedule. An entry that names its sites' blocks must
    name this UNet's, and (unless `check_model=False`) must have been searched on this UNet's
    folder. `scheduler` (any diffusers scheduler with `alphas_cumprod`) is needed only for a
    σ-windowed schedule. An entry with FreeU factors applies them too, exactly as `enable_freeu`
    would: use one or the other, not both.
    """
    sites = unet_sites(unet)
    chosen = _schedule_of(schedule, sites, model, nfe, solver)
    if chosen.freeu is not None and any(getattr(block, "s1", None) for block in getattr(unet, "up_blocks", [])):
        raise ScheduleError("this UNet has FreeU enabled already and the schedule carries FreeU factors too: call "
                            "pipe.disable_freeu() first, or pipe.enable_freeu(**entry['freeu']) without apply_schedule")
    if check_model and chosen.origin is not None:
        _check_folder(unet, chosen.origin)
    sigma_from = None
    if chosen.sigma_range is not None:
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            raise ScheduleError("this schedule applies within a σ window: pass scheduler=pipe.scheduler (one with "
                                "alphas_cumprod) so the UNet's timesteps can be read as σ")
        config = getattr(scheduler, "config", {})
        continuous = (config.get("timestep_type") if hasattr(config, "get") else None) == "continuous"
        sigma_from = timestep_sigma(torch.as_tensor(alphas), continuous=continuous)
    return SkipTuning(unet, chosen, sigma_from, check_model)


@contextmanager
def apply_schedule(unet: nn.Module, schedule: ScheduleLike, *, scheduler: Any = None, model: str | None = None,
                   nfe: int | None = None, solver: str | None = None, check_model: bool = True) -> Iterator[nn.Module]:
    """Within the block, `unet` runs with `schedule` (see `install_schedule`); restored on exit."""
    handle = install_schedule(unet, schedule, scheduler=scheduler, model=model, nfe=nfe, solver=solver,
                              check_model=check_model)
    try:
        yield unet
    finally:
        handle.remove()


def schedule_steps(scheduler: Any, schedule: ScheduleLike, *, model: str | None = None, nfe: int | None = None,
                   solver: str | None = None) -> dict[str, Any]:
    """The pipeline-call arguments that sample on the σ steps an exported schedule records:

        with apply_schedule(pipe.unet, "schedules.json", scheduler=pipe.scheduler, nfe=10):
            images = pipe(**schedule_steps(pipe.scheduler, "schedules.json", nfe=10)).images

    `{"sigmas": [...]}` where the scheduler's `set_timesteps` takes σ (in diffusers 0.42:
    EulerDiscreteScheduler, UniPCMultistepScheduler, EDMEulerScheduler; the pipeline must pass them
    on, as Stable Diffusion's does); else the nearest training timesteps (`{"timesteps": [...]}`:
    DPMSolverMultistepScheduler, whose images are then close to the search's dpmpp_2m, not equal),
    or only the step count, each said in one line.
    """
    entry = _entry_of(schedule, model, nfe, solver)
    if isinstance(entry, SkipSchedule) or not entry.sigmas:
        raise ScheduleError("this schedule records no σ steps; export it again with skipsearch ≥ 0.2 (v1.1 files)")
    sigmas = list(entry.sigmas)
    takes = inspect.signature(scheduler.set_timesteps).parameters
    if "sigmas" in takes:
        return {"sigmas": sigmas}
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if "timesteps" in takes and alphas is not None:
        a = torch.as_tensor(alphas, dtype=torch.float64)
        log_sigmas = ((1 - a) / a).sqrt().log()
        nearest = [int((log_sigmas - torch.log(torch.tensor(s, dtype=torch.float64))).abs().argmin()) for s in sigmas[:-1]]
        _log.warning("%s takes no σ list: the schedule's steps go to the nearest training timesteps %s",
                     type(scheduler).__name__, nearest)
        return {"timesteps": nearest}
    _log.warning("%s takes neither σ nor timesteps: it samples its own %d steps, not the schedule's",
                 type(scheduler).__name__, len(sigmas) - 1)
    return {"num_inference_steps": len(sigmas) - 1}
