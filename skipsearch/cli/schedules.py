"""`validate`, `score` and `sample`: use exported schedules.

`score` and `sample` sample an exported entry with the recipe it records (solver and its
parameters, NFE, σ steps, autoguidance), so they see what the search saw; this machine chooses
only what never changes an image (batch size, device) and the networks' local paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from ..changes import format_change
from ..errors import ScheduleFileError, UsageError
from ._output import console, err_console, fmt, interactive, progress_bar
from ._options import CfgOpt, CheckpointOpt, DeviceOpt, FeaturesWeightsOpt, ModelOpt, PromptsOpt, VaeOpt

if TYPE_CHECKING:
    from ..recipe import SamplingRecipe
    from ..schedule_file import ScheduleEntry
    from ..target import Target

__all__ = ["validate", "score", "sample"]

GuideOpt = Annotated[Optional[Path], typer.Option(help="Autoguidance: the guiding network's checkpoint.")]


def validate(path: Annotated[Path, typer.Argument(help="A skipsearch.schedules JSON file.")]) -> None:
    """Check an exported schedules file against its format."""
    from ..schedule_file import load_schedules

    doc = load_schedules(path)
    console.print(f"[green]ok[/green] {path}: {len(doc.entries)} schedule(s), format {doc.format}")


def _guide_for(recipes: list[SamplingRecipe], guide: Path | None, device: str) -> object | None:
    """The guiding network a guided recipe needs, checked against the one it was searched with."""
    from ..target import load_target, resolve_source

    guided = [r for r in recipes if r.guided]
    if guide is None:
        if guided:
            raise UsageError(f"the schedule was searched with autoguidance (guidance {guided[0].guidance:g}): give "
                             "its guiding network with --guide CHECKPOINT")
        return None
    target = load_target(resolve_source("edm", guide), device)
    for r in guided:
        if r.guide_sha256 and r.guide_sha256.lower() != target.sha256:
            raise ScheduleFileError(f"--guide {guide} is not the guide the schedule was searched with "
                                    f"(sha256 {r.guide_sha256[:12]}…, this one is {target.sha256[:12]}…)")
    return target.net


def _load(model: str, checkpoint: Path | None, device: str) -> Target:
    from ..target import load_target, resolve_source

    return load_target(resolve_source(model, checkpoint), device)


def _prompt(target: Target, prompts: Path | None, entries: list[ScheduleEntry]) -> None:
    """A pipeline samples the prompts given (with the negative prompt its schedule was searched with);
    any other network takes none."""
    if not target.pipeline:
        if prompts is not None:
            raise UsageError(f"--prompts is for text-to-image pipelines; {target.name} is not one")
        return
    if prompts is None:
        raise UsageError(f"{target.name} is a text-to-image pipeline: give --prompts FILE")
    from ..prompts import read_prompts

    negative = next(((e.conditioning or {}).get("negative_prompt") for e in entries if e.conditioning), None)
    given = read_prompts(prompts, negative)
    searched = {(e.conditioning or {}).get("prompts_sha256") for e in entries} - {None}
    if searched and given.sha256 not in searched:  # held-out prompts are a fair test; say it is one
        err_console.print(f"note: {prompts.name} holds other prompts than the schedule was searched with "
                          f"({len(given.texts)} prompts, sha256 {given.sha256[:12]}…)", style="yellow", soft_wrap=True)
    target.net.set_prompts(given)


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
    guide: GuideOpt = None,
    prompts: PromptsOpt = None,
    cfg: CfgOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON row per entry, for scripts.")] = False,
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
    from ..recipe import SamplingRecipe
    from ..schedule_file import load_schedules
    from ..scoring import make_scorer, score_schedules

    doc = load_schedules(schedule) if schedule is not None else None
    target = _load(model, checkpoint, device)
    entries: list[ScheduleEntry | SamplingRecipe] = (
        list(target.entries(doc, nfe=nfe, solver=solver)) if doc is not None
        else [SamplingRecipe(solver=solver or "euler", nfe=nfe, cfg=cfg)]  # type: ignore[arg-type]
    )
    _prompt(target, prompts, [e for e in entries if not isinstance(e, SamplingRecipe)])
    recipes = [e if isinstance(e, SamplingRecipe) else e.recipe() for e in entries]
    settings = SamplingRecipe(batch_size=batch_size, precision="auto").with_networks(
        guide=_guide_for(recipes, guide, device), decode=target.decoder(str(vae) if vae else None, device))
    scorer = make_scorer(target.net, features, ref, device=device, features_weights=features_weights)
    seeds = range(seed, seed + samples)
    with progress_bar(interactive()) as progress:  # --json: stdout holds the rows alone
        rows = list(score_schedules(scorer, target.net, entries, seeds, settings=settings,
                                    progress=None if as_json else progress))
    if as_json:
        for row in rows:
            typer.echo(json.dumps({"model": target.name, "features": scorer.features, "seeds": [seed, seed + samples - 1],
                                   **row.to_json()}))
        return
    table = Table(title=f"{target.name}: proxy FID on seeds {seed}..{seed + samples - 1} ({scorer.features})",
                  title_justify="left")
    for col in ("solver", "NFE", "baseline", "schedule", "FID change", "search score"):
        table.add_column(col, justify="left" if col == "solver" else "right", no_wrap=True)
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
    guide: GuideOpt = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance strength (with --guide).")] = None,
    prompts: PromptsOpt = None,
    cfg: CfgOpt = None,
) -> None:
    """Render a grid of samples, optionally with a skip schedule."""
    if schedule is not None and rho_top is not None:
        raise UsageError("give either --schedule FILE or --rho-top/--rho-bottom/--curve, not both")
    if count < 1:
        raise UsageError("--count must be at least 1")
    if seed < 0:
        raise UsageError("--seeds must be non-negative")
    if guidance is not None and guide is None:
        raise UsageError("--guidance needs --guide CHECKPOINT (the guiding network)")
    from ..fileio import check_output_path
    from ..recipe import SamplingRecipe
    from ..render import render_grid
    from ..schedule import SkipSchedule
    from ..schedule_file import best_of, load_schedules

    doc = load_schedules(schedule) if schedule is not None else None
    check_output_path(output)
    target = _load(model, checkpoint, device)
    sched: SkipSchedule | None = None
    entry = best_of(target.entries(doc, nfe=nfe, solver=solver)) if doc is not None else None
    _prompt(target, prompts, [entry] if entry is not None else [])
    if entry is not None:
        recipe, sched = entry.recipe(), entry.schedule
    else:
        if nfe is None:
            raise UsageError("--nfe is required (or take it from --schedule)")
        recipe = SamplingRecipe(solver=solver or "euler", nfe=nfe, cfg=target.net.cfg if target.pipeline else None)
        if rho_top is not None:
            sched = target.linear_schedule(rho_top, rho_bottom, curve)
    if guidance is not None:
        recipe = recipe.with_(guidance=guidance)
    if cfg is not None:
        recipe = recipe.with_(cfg=cfg)
    recipe = recipe.with_(batch_size=batch_size, precision="auto").with_networks(
        guide=_guide_for([recipe], guide, device), decode=target.decoder(str(vae) if vae else None, device))
    path = render_grid(target.net, output, range(seed, seed + count), recipe, sched, device)
    what = "untuned" if sched is None or sched.is_identity else "rho " + " ".join(f"{r:.3g}" for r in sched.rho)
    if sched is not None and sched.freeu is not None:
        what += ", FreeU " + " ".join(f"{k}={v:g}" for k, v in sched.freeu.as_kwargs().items())
    console.print(f"wrote {path}: {count} samples of {target.name}, {recipe.describe()}, {what}")
