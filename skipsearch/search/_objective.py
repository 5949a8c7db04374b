"""The objective: a schedule → samples on the study's seeds → proxy FID at each fidelity step.

Pure evaluation, no storage: `evaluate` yields the FID at each fidelity step and lets the caller
(the worker, which owns the conversation with the storage) report, prune or stop. Every trial
samples the same seeds (common random numbers), so trials differ only by their schedule.
Non-finite samples end the evaluation with `NonFiniteSamples`: black images would otherwise
score as a valid (and terrible, or by luck "best") FID.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..errors import NonFiniteSamples
from ..images import save_grid
from ..recipe import SamplingRecipe
from ..schedule import SkipSchedule
from ..scoring import ProxyFID, SampleWatch, StreamingFID, finite_guard
from ..target import Target
from ._config import StudyConfig

__all__ = ["Evaluation", "TrialRun", "Objective", "evaluate", "NonFiniteSamples", "SampleGrid"]

GRID_IMAGES = 64


@dataclass
class SampleGrid:
    """The first `limit` images of a trial, kept for the dashboard."""

    limit: int = GRID_IMAGES
    images: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, batch: torch.Tensor) -> None:
        have = sum(len(g) for g in self.images)
        if have < self.limit:
            self.images.append(batch[: self.limit - have].cpu())

    def save(self, path: str, resolution: int) -> bool:
        if not self.images:
            return False
        save_grid(torch.cat(self.images), path, nrow=8, scale=max(1, 64 // resolution))
        return True


@dataclass
class Evaluation:
    """What one evaluation measured; filled in as it runs."""

    fids: dict[int, float] = field(default_factory=dict)
    samples: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # reported distances (e.g. FD_DINOv2), when complete
    started: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def images_per_s(self) -> float | None:
        return self.samples / self.seconds if self.seconds > 0 else None


@dataclass
class TrialRun:
    """One evaluation: what it samples (the study's seeds and steps, its recipe, the schedule) and
    where it reports (`record`, sample images, progress; `stream` keeps the features)."""

    config: StudyConfig
    target: Target
    scorer: ProxyFID
    recipe: SamplingRecipe
    schedule: SkipSchedule
    record: Evaluation = field(default_factory=Evaluation)
    on_images: Callable[[torch.Tensor], None] | None = None
    progress: Callable[[int, int], None] | None = None
    stream: StreamingFID | None = None


Objective = Callable[[TrialRun], Iterator[tuple[int, float]]]


def evaluate(run: TrialRun) -> Iterator[tuple[int, float]]:
    """Yield (n, proxy FID of the first n samples) at each of the study's fidelity steps."""
    record, seeds = run.record, run.config.seeds

    def count(done: int, total: int) -> None:
        record.samples = done
        if run.progress is not None:
            run.progress(done, total)

    watch = SampleWatch(on_samples=finite_guard(lambda: seeds[0] + record.samples), on_images=run.on_images,
                        progress=count)
    for n, fid in run.scorer.iter_fid(run.target.net, seeds, run.recipe, run.schedule, steps=run.config.steps,
                                      watch=watch, stream=run.stream):
        if not math.isfinite(fid):
            raise NonFiniteSamples(f"proxy FID is {fid} at {n} samples")
        record.fids[n] = fid
        record.extra = dict(run.scorer.last_extra)
        yield n, fid
