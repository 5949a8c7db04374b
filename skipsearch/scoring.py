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

from typing_extensions import Unpack

import torch
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from .errors import MetricError, NonFiniteSamples, ScheduleFileError, UsageError
from .metrics import (
    FrechetToReference,
    ReferenceStats,
    basic_interval,
    bootstrap_counts,
    fid_infinity,
    StreamingFID,
    compute_reference,
    feature_dim,
    make_extractor,
    resolve_reference,
    save_reference,
)
from .models.builtin import builtin_info
from .recipe import SamplingRecipe
from .sampling import SampleOptions, recipe_for
from .sampling import sample_batches, to_uint8
from .schedule import SkipSchedule
from .schedule_file import ScheduleEntry
from .skiptune import skip_sites

__all__ = [
    "StreamingFID",
    "SampleWatch",
    "finite_guard",
    "ProxyFID",
    "Confirmed",
    "score",
    "score_steps",
    "ScoreOptions",
    "resolve_metric_defaults",
    "make_scorer",
    "build_reference",
    "ScoreRow",
    "score_schedules",
    "score_confirmed",
    "seed_noise",
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


@dataclass
class SampleWatch:
    """What a pass over samples reports to: each batch of raw float64 samples (`on_samples`, e.g. to
    refuse non-finite ones), its uint8 images (`on_images`) and the running count (`progress`)."""

    on_samples: Callable[[torch.Tensor], None] | None = None
    on_images: Callable[[torch.Tensor], None] | None = None
    progress: Progress | None = None


def finite_guard(first_seed: Callable[[], int]) -> Callable[[torch.Tensor], None]:
    """A check for each batch of raw samples: any NaN or infinity ends the pass, with the count."""

    def guard(x: torch.Tensor) -> None:
        finite = torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            kind = "NaN" if bool(torch.isnan(x).any()) else "infinite"
            raise NonFiniteSamples(f"non-finite samples: {bad}/{len(x)} {kind} in the batch from seed {first_seed()}")

    return guard


class ProxyFID:
    """A reusable scorer: one extractor and one reference for many evaluations, and optionally more
    (`extra`: feature name → reference) whose distances are reported, not optimised (e.g.
    FD_DINOv2 next to FID). Samples become uint8 images by the recipe's `decode` (default EDM's
    RGB conversion; a VAE decoder for latent networks)."""

    def __init__(
        self,
        features: str,
        reference: ReferenceStats,
        *,
        device: str | torch.device = "cpu",
        weights_path: str | None = None,
        extra: Mapping[str, ReferenceStats] | None = None,
    ) -> None:
        self.features = features
        self.reference = reference
        self.device = torch.device(device)
        self.extractor = _checked_extractor(features, reference, self.device, weights_path)
        self.extra = {name: (_checked_extractor(name, ref, self.device, None), ref) for name, ref in (extra or {}).items()}
        self.last_extra: dict[str, float] = {}

    def stream(self, steps: Sequence[int], keep_features: bool = False) -> StreamingFID:
        return StreamingFID(self.extractor, self.reference, sorted(set(steps)), keep_features=keep_features)

    def iter_fid(
        self,
        net: nn.Module,
        seeds: Sequence[int],
        recipe: SamplingRecipe,
        schedule: SkipSchedule | None = None,
        *,
        steps: Sequence[int] | None = None,
        watch: SampleWatch | None = None,
        stream: StreamingFID | None = None,
    ) -> Iterator[tuple[int, float]]:
        """Yield (n, FID of the first n samples) at each step; the last step is len(seeds).

        `stream` (from `self.stream(...)`) lets the caller keep the features.
        """
        seeds = list(seeds)
        watch = watch or SampleWatch()
        steps = sorted(set(steps or []) | {len(seeds)})
        if steps[0] < 2 or steps[-1] > len(seeds):
            raise MetricError(f"fidelity steps must lie in [2, {len(seeds)}], got {steps}")
        if stream is None:
            stream = StreamingFID(self.extractor, self.reference, steps)
        extra = {name: StreamingFID(ext, ref, [len(seeds)]) for name, (ext, ref) in self.extra.items()}
        self.last_extra = {}
        decode = recipe.decode or to_uint8
        for _, x in sample_batches(net, seeds, recipe, schedule, device=self.device):
            if watch.on_samples is not None:
                watch.on_samples(x)
            images = decode(x)
            if watch.on_images is not None:
                watch.on_images(images)
            for other in extra.values():
                other.add(images)
            results = stream.add(images)
            if watch.progress is not None:
                watch.progress(stream.count, len(seeds))
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
    recipe: SamplingRecipe,
    schedule: SkipSchedule | None,
    *,
    bootstrap: tuple[int, int],
    watch: SampleWatch | None = None,
) -> Confirmed:
    """Proxy FID on `seeds` with B bootstrap replicates over samples (`bootstrap` = (B, seed)), drawn
    from one seed so every schedule scored with the same seeds and draws is paired with every
    other; FID at n/8, n/4, n/2 and n gives FID(∞) by the 1/n fit."""
    resamples, bootstrap_seed = bootstrap
    n = len(seeds)
    steps = sorted({max(2, n // 8), max(2, n // 4), max(2, n // 2), n})
    stream = scorer.stream(steps, keep_features=True)
    fids = dict(scorer.iter_fid(net, seeds, recipe, schedule, steps=steps, watch=watch, stream=stream))
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


def make_scorer(
    net: nn.Module,
    features: str | None = None,
    reference: str | Path | ReferenceStats | None = None,
    *,
    device: str | torch.device = "cpu",
    features_weights: str | None = None,
    report: Sequence[str] = (),
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
    return ProxyFID(features, ref, device=device, weights_path=features_weights, extra=extra)


class ScoreOptions(SampleOptions, total=False):
    """The keyword arguments of `score` and `score_steps`: how to sample (`SampleOptions`; the
    batch size defaults to 250 here) and how to score: `features` and `reference` (a built-in
    network's own by default), `features_weights` (a local weights file), `steps` (sample counts at
    which `score_steps` reports)."""

    features: str
    reference: str | Path | ReferenceStats
    features_weights: str
    steps: Sequence[int]


_SCORE_ONLY = ("features", "reference", "features_weights", "steps")


def score_steps(net: nn.Module, seeds: Sequence[int], **options: Unpack[ScoreOptions]) -> list[tuple[int, float]]:
    """Proxy FID after the first n samples for each n in `steps` (and for all of `seeds`).

    `schedule` may be an exported entry: its recorded recipe is used (see `sampling.sample`)."""
    unknown = sorted(set(options) - set(ScoreOptions.__annotations__))
    if unknown:
        raise TypeError(f"score() got an unexpected keyword argument {unknown[0]!r}")
    opts: dict[str, Any] = dict(options)
    device = opts.get("device", "cpu")
    sampling = {k: v for k, v in opts.items() if k not in (*_SCORE_ONLY, "device", "class_labels", "guide",
                                                             "guide_schedule", "schedule", "recipe", "solver", "nfe")}
    sampling.setdefault("batch_size", 250)
    schedule, recipe = recipe_for(opts.get("schedule"), opts.get("recipe"), opts.get("solver"), opts.get("nfe"),
                                  **sampling)
    if opts.get("guide") is not None:
        recipe = recipe.with_networks(guide=opts["guide"])
    if opts.get("guide_schedule") is not None:
        if opts["guide_schedule"] != schedule:
            raise UsageError("score tunes the guide with the schedule itself or not at all: guide_schedule must be "
                             "the schedule, or absent")
        recipe = recipe.with_(guide_tuned=True)
    if opts.get("class_labels") is not None:
        raise UsageError("score draws each seed's class label as EDM does; fixed class_labels are for sample()")
    scorer = make_scorer(net, opts.get("features"), opts.get("reference"), device=device,
                         features_weights=opts.get("features_weights"))
    return list(scorer.iter_fid(net, seeds, recipe, schedule, steps=opts.get("steps")))


def score(net: nn.Module, seeds: Sequence[int], **options: Unpack[ScoreOptions]) -> float:
    """Proxy FID of `net` sampled with `solver` at `nfe` (built-ins use their own features/reference);
    keyword arguments: `ScoreOptions`."""
    return score_steps(net, seeds, **options)[-1][1]


@dataclass(frozen=True)
class ScoreRow:
    """One re-scored schedule next to the untuned baseline on the same seeds (and the same recipe)."""

    solver: str
    nfe: int
    baseline: float
    tuned: float | None
    searched: float | None  # the score the search gave it, on its own seeds
    recipe: SamplingRecipe | None = None

    @property
    def change(self) -> float | None:
        """Relative FID change (negative is better)."""
        return None if self.tuned is None else (self.tuned - self.baseline) / self.baseline

    def to_json(self) -> dict[str, Any]:
        return {"solver": self.solver, "nfe": self.nfe, "baseline_fid": self.baseline, "schedule_fid": self.tuned,
                "change": self.change, "search_fid": self.searched}


def score_schedules(
    scorer: ProxyFID,
    net: nn.Module,
    entries: Sequence[ScheduleEntry | SamplingRecipe],
    seeds: Sequence[int],
    *,
    settings: SamplingRecipe | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Iterator[ScoreRow]:
    """Re-score schedules and their untuned baselines on `seeds` (common random numbers).

    An entry is an exported schedule, sampled with the recipe it records, or a recipe alone (a
    baseline). `settings` supplies what is this machine's to choose (batch size, precision) and
    the networks a recipe needs beside the main one (guide, decoder). Each recipe's baseline is
    computed once; a schedule or baseline whose samples go non-finite fails with the count.
    `progress(label, done, total)` follows every pass.
    """
    sites = len(skip_sites(net))
    baselines: dict[SamplingRecipe, float] = {}
    own = settings or SamplingRecipe()

    def run(label: str, recipe: SamplingRecipe, schedule: SkipSchedule | None) -> float:
        report = None if progress is None else (lambda done, total: progress(label, done, total))
        done = [0]

        def count(n: int, total: int) -> None:
            done[0] = n
            if report is not None:
                report(n, total)

        watch = SampleWatch(on_samples=finite_guard(lambda: seeds[done[0]]), progress=count)
        try:
            return list(scorer.iter_fid(net, seeds, recipe, schedule, watch=watch))[-1][1]
        except NonFiniteSamples as e:
            raise NonFiniteSamples(f"{label}: {e}; the schedule breaks the network at this recipe") from None

    for entry in entries:
        if isinstance(entry, ScheduleEntry):
            if entry.num_skips != sites:
                raise ScheduleFileError(
                    f"schedule {entry.label} has {entry.num_skips} coefficients, this network has {sites} skip sites"
                )
            recipe, base, schedule, searched = entry.recipe(), entry.baseline_recipe(), entry.schedule, entry.score_value
        else:
            recipe, base, schedule, searched = entry, entry, None, None
        local = dict(batch_size=own.batch_size, precision=own.precision, channels_last=own.channels_last)
        recipe = recipe.with_(**local).with_networks(guide=own.guide, decode=own.decode)
        base = base.with_(**local).with_networks(guide=own.guide, decode=own.decode)
        if base not in baselines:
            baselines[base] = run(f"{base.describe()} baseline", base, None)
        tuned = None if schedule is None else run(f"{recipe.describe()} schedule", recipe, schedule)
        yield ScoreRow(recipe.solver, recipe.nfe, baselines[base], tuned, searched, recipe)


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
