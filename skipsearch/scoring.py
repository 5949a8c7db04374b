"""Proxy FID of a (network, solver, NFE, schedule): the number every search trial reports.

Samples stream batch by batch from the sampler through EDM's uint8 conversion into the feature
extractor; only float64 feature moments are kept, and the FID is read off at each fidelity step
so a pruner can stop a bad trial early. The extractor and reference are loaded once per `ProxyFID`
and reused by every trial of a worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from .errors import MetricError, ScheduleFileError
from .metrics import (
    FrechetToReference,
    ReferenceStats,
    basic_interval,
    bootstrap_counts,
    fid_infinity,
    paired_gain,
    StreamingFID,
    compute_reference,
    feature_dim,
    make_extractor,
    resolve_reference,
    save_reference,
)
from .models.builtin import builtin_info
from .sampling import Precision, iter_samples, to_uint8
from .schedule import SkipSchedule
from .schedule_file import ScheduleEntry
from .skiptune import skip_sites

__all__ = [
    "StreamingFID",
    "ProxyFID",
    "Confirmed",
    "score",
    "score_steps",
    "resolve_metric_defaults",
    "make_scorer",
    "build_reference",
    "ScoreRow",
    "score_schedules",
    "score_confirmed",
    "interval_of",
    "seed_noise",
    "gain_between",
]

Progress = Callable[[int, int], None]  # (samples done, samples total)


def resolve_metric_defaults(
    net: nn.Module, features: str | None, reference: str | Path | ReferenceStats | None
) -> tuple[str, ReferenceStats]:
    """Built-in models bring their own extractor and reference; other networks must name both."""
    info = builtin_info(net)
    if features is None:
        if info is None:
            raise MetricError("this network has no default features: pass features='inception-v3-compat' (or another)")
        features = info.features
    if reference is None:
        if info is None:
            raise MetricError("this network has no default reference: pass reference= an .npz of statistics")
        reference = info.reference
    return features, resolve_reference(reference, features)


def _checked_extractor(features: str, reference: ReferenceStats, device: torch.device,
                       weights_path: str | None) -> FeatureExtractorBase:
    extractor = make_extractor(features, device=device, weights_path=weights_path)
    dim = feature_dim(extractor)
    if dim != reference.dim:
        raise MetricError(
            f"reference has {reference.dim}-dim statistics but extractor '{features}' gives {dim}; "
            "give a reference computed with these features (`skipsearch reference`)"
        )
    return extractor


class ProxyFID:
    """A reusable scorer: one extractor and one reference for many evaluations, and optionally more
    (`extra`: feature name → reference) whose distances are reported, not optimised (e.g.
    FD_DINOv2 next to FID). `decode` turns samples into uint8 images (default EDM's RGB
    conversion; a VAE decoder for latent networks)."""

    def __init__(
        self,
        features: str,
        reference: ReferenceStats,
        *,
        device: str | torch.device = "cpu",
        weights_path: str | None = None,
        extra: Mapping[str, ReferenceStats] | None = None,
        decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.features = features
        self.reference = reference
        self.device = torch.device(device)
        self.extractor = _checked_extractor(features, reference, self.device, weights_path)
        self.extra = {name: (_checked_extractor(name, ref, self.device, None), ref) for name, ref in (extra or {}).items()}
        self.decode = decode or to_uint8
        self.last_extra: dict[str, float] = {}

    def stream(self, steps: Sequence[int], keep_features: bool = False) -> StreamingFID:
        return StreamingFID(self.extractor, self.reference, sorted(set(steps)), keep_features=keep_features)

    def iter_fid(
        self,
        net: nn.Module,
        seeds: Sequence[int],
        *,
        solver: str,
        nfe: int,
        schedule: SkipSchedule | None = None,
        steps: Sequence[int] | None = None,
        batch_size: int = 250,
        precision: Precision = "fp32",
        time_exponent: float = 7.0,
        class_labels: Any = None,
        on_images: Callable[[torch.Tensor], None] | None = None,
        on_samples: Callable[[torch.Tensor], None] | None = None,
        progress: Progress | None = None,
        stream: StreamingFID | None = None,
        guide: nn.Module | None = None,
        guidance: float = 1.0,
        guide_schedule: SkipSchedule | None = None,
    ) -> Iterator[tuple[int, float]]:
        """Yield (n, FID of the first n samples) at each step; the last step is len(seeds).

        `on_samples` sees each batch of raw float64 samples (e.g. to refuse non-finite ones),
        `on_images` its uint8 images, `progress(done, total)` the running sample count; `stream`
        (from `self.stream(...)`) lets the caller keep the features.
        """
        seeds = list(seeds)
        steps = sorted(set(steps or []) | {len(seeds)})
        if steps[0] < 2 or steps[-1] > len(seeds):
            raise MetricError(f"fidelity steps must lie in [2, {len(seeds)}], got {steps}")
        if stream is None:
            stream = StreamingFID(self.extractor, self.reference, steps)
        extra = {name: StreamingFID(ext, ref, [len(seeds)]) for name, (ext, ref) in self.extra.items()}
        self.last_extra = {}
        batches = iter_samples(
            net, seeds, solver=solver, nfe=nfe, schedule=schedule, batch_size=batch_size, device=self.device,
            precision=precision, time_exponent=time_exponent, class_labels=class_labels, guide=guide,
            guidance=guidance, guide_schedule=guide_schedule,
        )
        for _, x in batches:
            if on_samples is not None:
                on_samples(x)
            images = self.decode(x)
            if on_images is not None:
                on_images(images)
            for other in extra.values():
                other.add(images)
            results = stream.add(images)
            if progress is not None:
                progress(stream.count, len(seeds))
            if stream.done:
                self.last_extra = {name: other.results[-1][1] for name, other in extra.items() if other.results}
            yield from results


@dataclass(frozen=True)
class Confirmed:
    """A score with what its interval needs: FID at each step, one FID per bootstrap resample."""

    value: float
    samples: int
    fid_steps: dict[int, float]
    bootstrap: list[float]
    fid_infinity: float | None
    extra: dict[str, float] = field(default_factory=dict)  # reported distances (e.g. FD_DINOv2)


def score_confirmed(
    scorer: ProxyFID,
    net: nn.Module,
    seeds: Sequence[int],
    *,
    solver: str,
    nfe: int,
    schedule: SkipSchedule | None,
    resamples: int,
    bootstrap_seed: int,
    batch_size: int = 250,
    precision: Precision = "fp32",
    time_exponent: float = 7.0,
    on_samples: Callable[[torch.Tensor], None] | None = None,
    progress: Progress | None = None,
    guide: nn.Module | None = None,
    guidance: float = 1.0,
    guide_schedule: SkipSchedule | None = None,
) -> Confirmed:
    """Proxy FID on `seeds` with B bootstrap replicates over samples, drawn from `bootstrap_seed`
    so every schedule scored with the same seeds and draws is paired with every other; FID at
    n/8, n/4, n/2 and n gives FID(∞) by the 1/n fit."""
    n = len(seeds)
    steps = sorted({max(2, n // 8), max(2, n // 4), max(2, n // 2), n})
    stream = scorer.stream(steps, keep_features=True)
    fids = dict(scorer.iter_fid(net, seeds, solver=solver, nfe=nfe, schedule=schedule, steps=steps,
                                batch_size=batch_size, precision=precision, time_exponent=time_exponent,
                                on_samples=on_samples, progress=progress, stream=stream, guide=guide,
                                guidance=guidance, guide_schedule=guide_schedule))
    frechet = FrechetToReference(scorer.reference)
    replicates = frechet.bootstrap(stream.features(), bootstrap_counts(n, resamples, bootstrap_seed))
    return Confirmed(fids[n], n, fids, [float(v) for v in replicates], fid_infinity(list(fids), list(fids.values())),
                     dict(scorer.last_extra))


def seed_noise(scorer: ProxyFID, stream: StreamingFID, resamples: int = 100, seed: int = 0) -> float:
    """How far proxy FID moves with the draw of samples alone: half the width of the 95% bootstrap
    interval of the FID of the stream's (kept) features. Costs no sampling."""
    features = stream.features()
    frechet = FrechetToReference(scorer.reference)
    replicates = frechet.bootstrap(features, bootstrap_counts(len(features), resamples, seed))
    lo, hi = basic_interval(frechet.of_features(features), replicates)
    return (hi - lo) / 2


def interval_of(value: float, replicates: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The confidence interval of a confirmed score from its bootstrap replicates."""
    return basic_interval(value, replicates, level)


def gain_between(baseline: float, baseline_replicates: Sequence[float], value: float, replicates: Sequence[float],
                 level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """(baseline − value)/baseline and its interval, from replicates paired over the same resamples."""
    return paired_gain(baseline, baseline_replicates, value, replicates, level)


def make_scorer(
    net: nn.Module,
    features: str | None = None,
    reference: str | Path | ReferenceStats | None = None,
    *,
    device: str | torch.device = "cpu",
    features_weights: str | None = None,
    report: Sequence[str] = (),
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> ProxyFID:
    """The scorer for `net`: its features and reference (a built-in's own by default), plus the
    distances in `report` (feature names) read from the same reference file."""
    features, ref = resolve_metric_defaults(net, features, reference)
    extra = {}
    for name in report:
        if name == features:
            continue
        if reference is None or isinstance(reference, ReferenceStats):
            raise MetricError(f"reporting {name} needs a reference file that holds its statistics (e.g. EDM2's .pkl)")
        extra[name] = resolve_reference(reference, name)
    return ProxyFID(features, ref, device=device, weights_path=features_weights, extra=extra, decode=decode)


def score_steps(
    net: nn.Module,
    seeds: Sequence[int],
    *,
    solver: str,
    nfe: int,
    schedule: SkipSchedule | None = None,
    features: str | None = None,
    reference: str | Path | ReferenceStats | None = None,
    steps: Sequence[int] | None = None,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    features_weights: str | None = None,
) -> list[tuple[int, float]]:
    """Proxy FID after the first n samples for each n in `steps` (and for all of `seeds`)."""
    scorer = make_scorer(net, features, reference, device=device, features_weights=features_weights)
    return list(scorer.iter_fid(net, seeds, solver=solver, nfe=nfe, schedule=schedule, steps=steps,
                                batch_size=batch_size, precision=precision))


def score(
    net: nn.Module,
    seeds: Sequence[int],
    *,
    solver: str,
    nfe: int,
    schedule: SkipSchedule | None = None,
    features: str | None = None,
    reference: str | Path | ReferenceStats | None = None,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
    features_weights: str | None = None,
) -> float:
    """Proxy FID of `net` sampled with `solver` at `nfe` (built-ins use their own features/reference)."""
    return score_steps(net, seeds, solver=solver, nfe=nfe, schedule=schedule, features=features, reference=reference,
                       batch_size=batch_size, device=device, precision=precision,
                       features_weights=features_weights)[-1][1]


@dataclass(frozen=True)
class ScoreRow:
    """One re-scored schedule next to the untuned baseline on the same seeds."""

    solver: str
    nfe: int
    baseline: float
    tuned: float | None
    searched: float | None  # the score the search gave it, on its own seeds

    @property
    def change(self) -> float | None:
        """Relative FID change (negative is better)."""
        return None if self.tuned is None else (self.tuned - self.baseline) / self.baseline


def score_schedules(
    scorer: ProxyFID,
    net: nn.Module,
    entries: Sequence[ScheduleEntry | tuple[str, int]],
    seeds: Sequence[int],
    *,
    batch_size: int = 250,
    precision: Precision = "fp32",
    progress: Callable[[str, int, int], None] | None = None,
) -> Iterator[ScoreRow]:
    """Re-score schedules and their untuned baselines on `seeds` (common random numbers).

    An entry is an exported schedule, or (solver, nfe) for a baseline alone. Each (solver, nfe)
    baseline is computed once. `progress(label, done, total)` follows every pass.
    """
    sites = len(skip_sites(net))
    baselines: dict[tuple[str, int], float] = {}

    def run(label: str, solver: str, nfe: int, schedule: SkipSchedule | None) -> float:
        report = None if progress is None else (lambda done, total: progress(label, done, total))
        return list(scorer.iter_fid(net, seeds, solver=solver, nfe=nfe, schedule=schedule, batch_size=batch_size,
                                    precision=precision, progress=report))[-1][1]

    for entry in entries:
        if isinstance(entry, ScheduleEntry):
            if entry.num_skips != sites:
                raise ScheduleFileError(
                    f"schedule {entry.label} has {entry.num_skips} coefficients, this network has {sites} skip sites"
                )
            solver, nfe, schedule, searched = entry.solver, entry.nfe, entry.schedule, entry.score_value
        else:
            (solver, nfe), schedule, searched = entry, None, None
        key = (solver, nfe)
        if key not in baselines:
            baselines[key] = run(f"{solver} NFE {nfe} baseline", solver, nfe, None)
        tuned = None if schedule is None else run(f"{solver} NFE {nfe} schedule", solver, nfe, schedule)
        yield ScoreRow(solver, nfe, baselines[key], tuned, searched)


def build_reference(
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    features: str,
    device: str | torch.device = "cpu",
    batch_size: int = 250,
    features_weights: str | None = None,
) -> ReferenceStats:
    """Reference statistics of an image folder, zip or .npz, written atomically to `output`."""
    stats = compute_reference(data, features=features, device=device, batch_size=batch_size,
                              weights_path=features_weights)
    save_reference(stats, output)
    return stats
