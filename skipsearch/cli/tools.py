"""`sites` and `reference`: look inside a network, and make reference statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import UsageError
from ._output import console
from ._options import CheckpointOpt, DeviceOpt, FeaturesWeightsOpt, ModelOpt

__all__ = ["sites", "reference"]


def sites(model: ModelOpt = "edm", checkpoint: CheckpointOpt = None) -> None:
    """List a network's skip sites in push order (0 = outermost)."""
    from ..target import load_target, resolve_source

    target = load_target(resolve_source(model, checkpoint))
    table = Table(title=f"{target.name}: {len(target.sites)} skip sites", title_justify="left")
    for col in ("site", "resolution", "channels", "encoder entry", "decoder block"):
        table.add_column(col)
    for s in target.sites:
        table.add_row(str(s.index), f"{s.resolution}x{s.resolution}" if s.resolution else "?", str(s.channels),
                      s.producer, s.consumer)
    console.print(table)


def reference(
    data: Annotated[Path, typer.Argument(help="Image folder, zip of images, or .npz image array.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Statistics .npz to write.")],
    features: Annotated[str, typer.Option(help="Feature extractor registered with torch-fidelity.")] = "inception-v3-compat",
    features_weights: FeaturesWeightsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 250,
    device: DeviceOpt = "cpu",
) -> None:
    """Compute reference statistics (mu, sigma) of a data set for proxy FID."""
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    from ..fileio import check_output_path
    from ..scoring import build_reference

    check_output_path(output)
    stats = build_reference(data, output, features=features, device=device, batch_size=batch_size,
                            features_weights=features_weights)
    console.print(f"wrote {output}: {stats.count} images, {stats.dim}-dim {features} statistics, sha256 {stats.sha256[:12]}")
