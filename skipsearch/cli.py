"""The `skipsearch` command line. Each command parses options, calls the library, prints results.

User mistakes (bad files, impossible solver/NFE pairs, wrong schedules) end in one red line and
exit code 2 — never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .export import ExportError
from .metrics import MetricError
from .models.edm_pickle import CheckpointError
from .schedule import ScheduleError, SkipSchedule
from .schedule_file import ScheduleFileError
from .search.config import ConfigError
from .search.storage import StorageError
from .search.study import StudyError
from .skiptune import StructureError
from .solvers import SolverError

app = typer.Typer(
    name="skipsearch",
    help="Search skip-coefficient schedules (Skip-Tuning) for few-step sampling of EDM diffusion networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
if not console.is_terminal:  # piped or captured: tables need not fit an 80-column default
    console = Console(width=120)
err_console = Console(stderr=True)

USER_ERRORS = (
    CheckpointError, ScheduleError, ScheduleFileError, SolverError, StructureError, ConfigError, StorageError,
    StudyError, ExportError, MetricError,
)


class UsageError(ValueError):
    """A combination of options that cannot work."""


F = TypeVar("F", bound=Callable[..., Any])


def command(fn: F | None = None, **settings: Any) -> Any:
    """Register a command whose user errors become one red line and exit code 2."""

    def register(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (*USER_ERRORS, UsageError) as e:
                err_console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None

        app.command(**settings)(wrapper)
        return fn

    return register(fn) if fn is not None else register


ModelOpt = Annotated[str, typer.Option("--model", help="Model family ('edm') or builtin:NAME.")]
CheckpointOpt = Annotated[
    Optional[Path], typer.Option("--checkpoint", help="EDM .pkl, or .pt/.safetensors with a config beside it.")
]


def _load(model: str, checkpoint: Optional[Path], device: str):
    from .models.loading import load_network, model_name, resolve_model_source

    source = resolve_model_source(model, checkpoint)
    return load_network(source, device=device), model_name(source)


@command
def sites(model: ModelOpt = "edm", checkpoint: CheckpointOpt = None) -> None:
    """List a network's skip sites in push order (0 = outermost)."""
    from .skiptune import skip_sites

    net, name = _load(model, checkpoint, "cpu")
    table = Table(title=f"{name}: {len(skip_sites(net))} skip sites")
    for col in ("site", "resolution", "channels", "encoder entry", "decoder block"):
        table.add_column(col)
    for s in skip_sites(net):
        table.add_row(str(s.index), f"{s.resolution}x{s.resolution}" if s.resolution else "?", str(s.channels),
                      s.producer, s.consumer)
    console.print(table)


@command
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
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
) -> None:
    """Render a grid of samples, optionally with a skip schedule."""
    from .images import save_grid
    from .sampling import sample as run_sample
    from .sampling import to_uint8
    from .schedule_file import load_schedules
    from .skiptune import skip_sites

    if schedule is not None and rho_top is not None:
        raise UsageError("give either --schedule FILE or --rho-top/--rho-bottom/--curve, not both")
    if count < 1:
        raise UsageError("--count must be at least 1")
    net, name = _load(model, checkpoint, device)
    k = len(skip_sites(net))
    sched: SkipSchedule | None = None
    if schedule is not None:
        entry = load_schedules(schedule).entry(model=name, nfe=nfe, solver=solver)
        entry.check_num_skips(k)
        solver, nfe, sched = solver or entry.solver, nfe or entry.nfe, entry.schedule
    elif rho_top is not None:
        sched = SkipSchedule.linear(k, rho_top, rho_bottom, curve)
    solver = solver or "euler"
    if nfe is None:
        raise UsageError("--nfe is required (or take it from --schedule)")
    x = run_sample(net, range(seed, seed + count), solver=solver, nfe=nfe, schedule=sched, batch_size=batch_size,
                   device=device)
    path = save_grid(to_uint8(x), output, scale=max(1, 128 // int(net.img_resolution)))
    what = "untuned" if sched is None or sched.is_identity else "rho " + " ".join(f"{r:.3g}" for r in sched.rho)
    console.print(f"wrote {path}: {count} samples of {name}, {solver} NFE {nfe}, {what}")


@command
def validate(path: Annotated[Path, typer.Argument(help="A skipsearch.schedules/v1 JSON file.")]) -> None:
    """Check an exported schedules file against the v1 format."""
    from .schedule_file import load_schedules

    doc = load_schedules(path)
    console.print(f"[green]ok[/green] {path}: {len(doc.entries)} schedule(s), format skipsearch.schedules/v1")


@command
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
    features_weights: Annotated[Optional[str], typer.Option(help="Local weights file for the extractor.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per network call.")] = 250,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
) -> None:
    """Re-score schedules (and the untuned baseline) on held-out seeds: the confirmation step."""
    from .schedule_file import load_schedules
    from .scoring import ProxyFID, resolve_metric_defaults
    from .skiptune import skip_sites

    if samples < 2:
        raise UsageError("--samples must be at least 2")
    net, name = _load(model, checkpoint, device)
    features, reference = resolve_metric_defaults(net, features, ref)
    scorer = ProxyFID(features, reference, device=device, weights_path=features_weights)
    if schedule is not None:
        doc = load_schedules(schedule)
        entries = doc.select(model=name, nfe=nfe, solver=solver)
        if not entries:
            doc.entry(model=name, nfe=nfe, solver=solver)  # raises with the list of what is there
        runs = [(e.solver, e.nfe, e.schedule, e.score_value) for e in entries]
    else:
        if nfe is None:
            raise UsageError("--nfe is required without --schedule")
        runs = [(solver or "euler", nfe, None, None)]
    seeds = range(seed, seed + samples)
    table = Table(title=f"{name}: proxy FID on seeds {seed}..{seed + samples - 1} ({features})")
    for col in ("solver", "NFE", "baseline", "schedule", "gain", "search score"):
        table.add_column(col)
    baselines: dict[tuple[str, int], float] = {}
    for run_solver, run_nfe, sched, searched in runs:
        key = (run_solver, run_nfe)
        if key not in baselines:
            baselines[key] = list(scorer.iter_fid(net, seeds, solver=run_solver, nfe=run_nfe, batch_size=batch_size))[-1][1]
        base = baselines[key]
        tuned = None
        if sched is not None:
            sched.check_sites(len(skip_sites(net)))
            tuned = list(scorer.iter_fid(net, seeds, solver=run_solver, nfe=run_nfe, schedule=sched,
                                         batch_size=batch_size))[-1][1]
        gain = f"{(base - tuned) / base * 100:+.1f}%" if tuned is not None else "—"
        table.add_row(run_solver, str(run_nfe), f"{base:.3f}", f"{tuned:.3f}" if tuned is not None else "—", gain,
                      f"{searched:.3f}" if searched is not None else "—")
    console.print(table)


@command
def reference(
    data: Annotated[Path, typer.Argument(help="Image folder, zip of images, or .npz image array.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Statistics .npz to write.")],
    features: Annotated[str, typer.Option(help="inception-v3-compat or skipsearch-digits.")] = "inception-v3-compat",
    features_weights: Annotated[Optional[str], typer.Option(help="Local weights file for the extractor.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 250,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
) -> None:
    """Compute reference statistics (mu, sigma) of a data set for proxy FID."""
    from .metrics import compute_reference, save_reference

    stats = compute_reference(data, features=features, device=device, batch_size=batch_size,
                              weights_path=features_weights)
    save_reference(stats, output)
    console.print(f"wrote {output}: {stats.count} images, {len(stats.mu)}-dim {features} statistics, "
                  f"sha256 {stats.sha256[:12]}")


from . import cli_search  # noqa: E402,F401  (registers launch/worker/status/export/dashboard)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        raise SystemExit(130) from None
