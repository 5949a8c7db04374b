"""`validate`, `score` and `sample`: use exported schedules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import ScheduleEntry, SkipSchedule, load_schedules
from ..errors import UsageError
from ..render import render_grid
from ..scoring import make_scorer, score_schedules
from ..fileio import check_output_path
from ..search import format_change
from ..target import load_target, resolve_source
from ._output import console, fmt, interactive, progress_bar
from ._options import CheckpointOpt, DeviceOpt, FeaturesWeightsOpt, ModelOpt, VaeOpt

__all__ = ["validate", "score", "sample"]


def validate(path: Annotated[Path, typer.Argument(help="A skipsearch.schedules/v1 JSON file.")]) -> None:
    """Check an exported schedules file against the v1 format."""
    doc = load_schedules(path)
    console.print(f"[green]ok[/green] {path}: {len(doc.entries)} schedule(s), format skipsearch.schedules/v1")


def score(
    schedule: Annotated[Optional[Path], typer.Option("--schedule", help="Exported schedules JSON to re-score.")] = None,
    model: ModelOpt = "edm",
    checkpoint: CheckpointOpt = None,
    solver: Annotated[Optional[str], typer.Option(help="Only entries (or, without --schedule, this solver).")] = None,
    nfe: Annotated[Optional[int], typer.Option(help="Only entries with this NFE (required without --schedule).")] = None,
    samples: Annotated[int, typer.Option(help="Samples per score (more than the search used).")] = 5000,
    seed: Annotated[int, typer.Option("--seeds", help="First seed; use seeds the search never saw.")] = 100000,
    ref: Annotated[Optional[str], typer.Option("--ref", help="Reference statistics .npz.")] = None,
    features: Annotated[Optional[str], typer.Option(help="Feature extractor name.")] = None,
    features_weights: FeaturesWeightsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per network call.")] = 250,
    device: DeviceOpt = "cpu",
    vae: VaeOpt = None,
) -> None:
    """Re-score schedules (and the untuned baseline) on held-out seeds: the confirmation step."""
    if samples < 2:
        raise UsageError("--samples must be at least 2")
    if seed < 0:
        raise UsageError("--seeds must be non-negative")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if schedule is None and nfe is None:
        raise UsageError("--nfe is required without --schedule")
    doc = load_schedules(schedule) if schedule is not None else None
    target = load_target(resolve_source(model, checkpoint), device)
    entries: list[ScheduleEntry | tuple[str, int]] = (
        list(target.entries(doc, nfe=nfe, solver=solver)) if doc is not None else [(solver or "euler", nfe)]  # type: ignore[list-item]
    )
    scorer = make_scorer(target.net, features, ref, device=device, features_weights=features_weights,
                         decode=target.decoder(str(vae) if vae else None, device))
    seeds = range(seed, seed + samples)
    table = Table(title=f"{target.name}: proxy FID on seeds {seed}..{seed + samples - 1} ({scorer.features})",
                  title_justify="left")
    for col in ("solver", "NFE", "baseline", "schedule", "FID change", "search score"):
        table.add_column(col, justify="left" if col == "solver" else "right", no_wrap=True)
    with progress_bar(interactive()) as progress:
        rows = list(score_schedules(scorer, target.net, entries, seeds, batch_size=batch_size, progress=progress))
    for row in rows:
        table.add_row(row.solver, str(row.nfe), fmt(row.baseline, ".3f"), fmt(row.tuned, ".3f"),
                      format_change(row.change), fmt(row.searched, ".3f"))
    console.print(table)


def sample(
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG grid to write.")] = Path("samples.png"),
    model: ModelOpt = "edm",
    checkpoint: CheckpointOpt = None,
    solver: Annotated[Optional[str], typer.Option(help="euler, heun, dpmpp_2m, dpmpp_3m, ipndm, unipc.")] = None,
    nfe: Annotated[Optional[int], typer.Option(help="Network evaluations per sample.")] = None,
    schedule: Annotated[Optional[Path], typer.Option("--schedule", help="Exported schedules JSON to apply.")] = None,
    rho_top: Annotated[Optional[float], typer.Option(help="Linear schedule: ρ of the outermost skip.")] = None,
    rho_bottom: Annotated[float, typer.Option(help="Linear schedule: ρ of the innermost skip.")] = 1.0,
    curve: Annotated[float, typer.Option(help="Linear schedule: shape exponent (γ = 4^curve).")] = 0.0,
    seed: Annotated[int, typer.Option("--seeds", help="First seed; sample j uses seed START+j.")] = 0,
    count: Annotated[int, typer.Option(help="Number of images.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Images per network call.")] = 64,
    device: DeviceOpt = "cpu",
    vae: VaeOpt = None,
    guide: Annotated[Optional[Path], typer.Option(help="Autoguidance: the guiding network's checkpoint.")] = None,
    guidance: Annotated[float, typer.Option(help="Guidance strength (with --guide).")] = 1.0,
) -> None:
    """Render a grid of samples, optionally with a skip schedule."""
    if schedule is not None and rho_top is not None:
        raise UsageError("give either --schedule FILE or --rho-top/--rho-bottom/--curve, not both")
    if count < 1:
        raise UsageError("--count must be at least 1")
    if seed < 0:
        raise UsageError("--seeds must be non-negative")
    doc = load_schedules(schedule) if schedule is not None else None
    check_output_path(output)
    target = load_target(resolve_source(model, checkpoint), device)
    sched: SkipSchedule | None = None
    if doc is not None:
        entry = min(target.entries(doc, nfe=nfe, solver=solver), key=lambda e: (e.score_value is None, e.score_value or 0))
        solver, nfe, sched = solver or entry.solver, nfe or entry.nfe, entry.schedule
    elif rho_top is not None:
        sched = target.linear_schedule(rho_top, rho_bottom, curve)
    solver = solver or "euler"
    if nfe is None:
        raise UsageError("--nfe is required (or take it from --schedule)")
    if guidance != 1.0 and guide is None:
        raise UsageError("--guidance needs --guide CHECKPOINT (the guiding network)")
    guiding = load_target(resolve_source("edm", guide), device).net if guide is not None else None
    path = render_grid(target.net, output, range(seed, seed + count), solver=solver, nfe=nfe, schedule=sched,
                       batch_size=batch_size, device=device, decode=target.decoder(str(vae) if vae else None, device),
                       guide=guiding, guidance=guidance)
    what = "untuned" if sched is None or sched.is_identity else "rho " + " ".join(f"{r:.3g}" for r in sched.rho)
    console.print(f"wrote {path}: {count} samples of {target.name}, {solver} NFE {nfe}, {what}")
