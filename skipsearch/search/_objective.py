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

from .. import SkipSchedule
from ..images import save_grid
from ..scoring import ProxyFID, StreamingFID
from ..target import Target
from ._config import StudyConfig

__all__ = ["Evaluation", "evaluate", "NonFiniteSamples", "SampleGrid", "finite_guard"]

GRID_IMAGES = 64


class NonFiniteSamples(Exception):
    """Samples went NaN or infinite: the schedule (or the network) is broken, not the worker."""


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


def finite_guard(first_seed: Callable[[], int]) -> Callable[[torch.Tensor], None]:
    """A check for each batch of raw samples: any NaN or infinity ends the evaluation."""

    def guard(x: torch.Tensor) -> None:
        finite = torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            kind = "NaN" if bool(torch.isnan(x).any()) else "infinite"
            raise NonFiniteSamples(f"non-finite samples: {bad}/{len(x)} {kind} in the batch from seed {first_seed()}")

    return guard


def evaluate(
    config: StudyConfig,
    target: Target,
    scorer: ProxyFID,
    schedule: SkipSchedule,
    *,
    precision: str = "fp32",
    seeds: range | None = None,
    steps: list[int] | None = None,
    record: Evaluation | None = None,
    on_images: Callable[[torch.Tensor], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    stream: StreamingFID | None = None,
    guide: Target | None = None,
) -> Iterator[tuple[int, float]]:
    """Yield (n, proxy FID of the first n samples) at each fidelity step (`stream`: to keep the
    features, from `scorer.stream(..., keep_features=True)`)."""
    record = record if record is not None else Evaluation()
    seeds = seeds if seeds is not None else config.seeds

    guard = finite_guard(lambda: seeds[0] + record.samples)

    def count(done: int, total: int) -> None:
        record.samples = done
        if progress is not None:
            progress(done, total)

    for n, fid in scorer.iter_fid(
        target.net, seeds, solver=config.solver, nfe=config.nfe, schedule=schedule,
        steps=steps if steps is not None else config.steps, batch_size=config.batch_size,
        precision=precision,  # type: ignore[arg-type]
        time_exponent=config.time_exponent, on_images=on_images, on_samples=guard, progress=count, stream=stream,
        guide=guide.net if guide is not None else None, guidance=config.guidance,
        guide_schedule=schedule if config.tune_guide else None,
    ):
        if not math.isfinite(fid):
            raise NonFiniteSamples(f"proxy FID is {fid} at {n} samples")
        record.fids[n] = fid
        record.extra = dict(scorer.last_extra)
        yield n, fid
