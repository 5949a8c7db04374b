"""Proxy FID of a (network, solver, NFE, schedule): the number every search trial reports.

Samples stream batch by batch from the sampler through EDM's uint8 conversion into the feature
extractor; only float64 feature moments are kept, and the FID is read off at each fidelity step
so a pruner can stop a bad trial early. The extractor and reference are loaded once per `ProxyFID`
and reused by every trial of a worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .metrics import MetricError, ReferenceStats, StreamingFID, builtin_reference, load_reference, make_extractor
from .models.builtin import builtin_info
from .sampling import Precision, iter_samples, to_uint8
from .schedule import SkipSchedule

__all__ = ["ProxyFID", "score", "score_steps", "resolve_metric_defaults"]


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
    if isinstance(reference, ReferenceStats):
        return features, reference
    text = str(reference)
    if text.startswith("builtin:"):
        return features, builtin_reference(text.removeprefix("builtin:"))
    return features, load_reference(text)


class ProxyFID:
    """A reusable scorer: one extractor and one reference for many evaluations."""

    def __init__(
        self,
        features: str,
        reference: ReferenceStats,
        *,
        device: str | torch.device = "cpu",
        weights_path: str | None = None,
    ) -> None:
        self.features = features
        self.reference = reference
        self.device = torch.device(device)
        self.extractor = make_extractor(features, device=self.device, weights_path=weights_path)

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
    ) -> Iterator[tuple[int, float]]:
        """Yield (n, FID of the first n samples) at each step; the last step is len(seeds)."""
        seeds = list(seeds)
        steps = sorted(set(steps or []) | {len(seeds)})
        if steps[0] < 2 or steps[-1] > len(seeds):
            raise MetricError(f"fidelity steps must lie in [2, {len(seeds)}], got {steps}")
        stream = StreamingFID(self.extractor, self.reference, steps)
        batches = iter_samples(
            net, seeds, solver=solver, nfe=nfe, schedule=schedule, batch_size=batch_size, device=self.device,
            precision=precision, time_exponent=time_exponent, class_labels=class_labels,
        )
        for _, x in batches:
            images = to_uint8(x)
            if on_images is not None:
                on_images(images)
            yield from stream.add(images)


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
    features, ref = resolve_metric_defaults(net, features, reference)
    scorer = ProxyFID(features, ref, device=device, weights_path=features_weights)
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
