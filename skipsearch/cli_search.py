"""Search commands of the CLI: launch, worker, status, export, dashboard.

They read and write the Optuna storage only through `skipsearch.search` and `skipsearch.export`;
every URL they print is masked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.live import Live
from rich.table import Table

from .cli import CheckpointOpt, UsageError, command, console, err_console
from .search.config import StudyConfig, load_preset
from .search.storage import StorageSettings, mask_url, open_storage, quiet_optuna, resolve_url
from .search.study import StudySummary

StorageOpt = Annotated[
    Optional[str],
    typer.Option("--storage", help="Optuna storage URL (default $SKIPSEARCH_STORAGE, else sqlite:///skipsearch.db)."),
]


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def _gain_text(s: StudySummary) -> str:
    if s.gain is None:
        return "—"
    text = f"{s.gain * 100:+.1f}%"
    if s.significant is False:
        return f"[yellow]{text} (within noise ±{s.noise:.2f})[/yellow]"
    return f"[green]{text}[/green]" if s.gain > 0 else text


def summary_table(summaries: list[StudySummary], title: str = "skipsearch studies", elapsed: float | None = None) -> Table:
    table = Table(title=title + (f"  ({elapsed:.0f}s)" if elapsed is not None else ""))
    table.add_column("study", no_wrap=True)
    for col in ("done", "run", "pruned", "failed", "baseline", "best", "gain"):
        table.add_column(col, justify="right", no_wrap=col != "gain")
    for s in summaries:
        table.add_row(s.name, f"{s.complete + s.pruned}/{s.config.trials}", str(s.running), str(s.pruned),
                      str(s.failed), _fmt(s.baseline), _fmt(s.best), _gain_text(s))
    return table


def best_lines(summaries: list[StudySummary]) -> list[str]:
    lines = []
    for s in summaries:
        if s.best_trial is None:
            continue
        params = " ".join(f"{k}={v:.3g}" for k, v in s.best_params.items())
        rate = f", {s.images_per_s:.0f} img/s" if s.images_per_s else ""
        lines.append(f"{s.name}: best trial {s.best_trial}: {params}{rate}")
    return lines


def _warn_noise(summaries: list[StudySummary]) -> None:
    """Say plainly when the best trial's gain is within the proxy's seed noise."""
    for s in summaries:
        if s.significant is False:
            console.print(f"[yellow]{s.name}: the best trial does not beat the baseline by more than the proxy's "
                          f"seed noise (±{s.noise:.2f} FID); treat it as no gain.[/yellow]")


def _nfe_list(nfe: list[int] | None, extra: list[str]) -> list[int] | None:
    values = list(nfe or [])
    for arg in extra:
        try:
            values.append(int(arg))
        except ValueError:
            raise UsageError(f"unexpected argument {arg!r}; NFEs are integers, e.g. --nfe 9 11 19") from None
    return values or None


def build_configs(
    preset: str | None,
    overrides: dict[str, Any],
    nfes: list[int] | None,
) -> list[StudyConfig]:
    """Preset values, then CLI overrides; one config per NFE."""
    from .models.loading import model_name, resolve_model_source

    checkpoint = overrides.get("checkpoint")
    if preset is None:
        preset = "demo" if checkpoint is None and (overrides.get("model") or "edm") == "edm" else None
    data: dict[str, Any] = (
        load_preset(preset) if preset else {"solver": "dpmpp_2m", "features": "inception-v3-compat", "reference": None}
    )
    if checkpoint is not None and preset == "demo":
        raise UsageError("--checkpoint needs --ref and --features for your network; the demo preset is for the built-in model")
    if checkpoint is None and preset is None:
        raise UsageError("give --checkpoint (your EDM network) or --preset")
    preset_nfes = data.pop("nfe", [10])
    data.update({k: v for k, v in overrides.items() if v is not None})
    if data.get("reference") is None:
        raise UsageError("--ref is required for your checkpoint: an EDM fid-refs .npz, or make one with `skipsearch reference`")
    source = resolve_model_source(data.get("model", "edm"), data.pop("checkpoint", None))
    data["checkpoint"] = source
    data["model_name"] = overrides.get("model_name") or model_name(source)
    nfes = nfes or (preset_nfes if isinstance(preset_nfes, list) else [preset_nfes])
    configs = [StudyConfig.from_dict({**data, "nfe": int(n)}) for n in nfes]
    from .solvers import get_solver

    for c in configs:
        get_solver(c.solver).steps_for_nfe(c.nfe)  # impossible pairs fail before any study is created
    return configs


@command(context_settings={"allow_extra_args": True})
def launch(
    ctx: typer.Context,
    preset: Annotated[Optional[str], typer.Option(help="Study preset name (see studies/) or TOML file.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model family ('edm') or builtin:NAME.")] = None,
    checkpoint: CheckpointOpt = None,
    solver: Annotated[Optional[str], typer.Option(help="Solver (default dpmpp_2m; the demo preset uses euler).")] = None,
    nfe: Annotated[Optional[list[int]], typer.Option(help="NFE(s); one study each: --nfe 9 11 19.")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Trial budget per study (complete + pruned).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Samples per trial (proxy FID sample count).")] = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="Reference statistics .npz (EDM fid-refs format).")] = None,
    features: Annotated[Optional[str], typer.Option(help="Feature extractor: inception-v3-compat, skipsearch-digits.")] = None,
    features_weights: Annotated[Optional[str], typer.Option(help="Local weights file for the extractor.")] = None,
    storage: StorageOpt = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Model name to file studies under.")] = None,
    space: Annotated[Optional[str], typer.Option(help="linear, stages or linear+window.")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="gp (default), tpe or random.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampler seed.")] = None,
    rho_bounds: Annotated[Optional[tuple[float, float]], typer.Option(help="Search range of each ρ (default 0.3 1.1).")] = None,
    curve_bounds: Annotated[Optional[tuple[float, float]], typer.Option(help="Search range of curve (default -2 2).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per network call.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Run one worker on this device (default: every GPU, else CPU).")] = None,
    workers: Annotated[bool, typer.Option("--workers/--no-workers", help="Run local workers after creating studies.")] = True,
    heartbeat: Annotated[int, typer.Option(help="Heartbeat interval, seconds.")] = 60,
    grace: Annotated[int, typer.Option(help="Seconds without heartbeat before a trial is failed and retried.")] = 300,
) -> None:
    """Create one study per NFE and run local workers until the budgets are met."""
    from .search.launch import prepare_studies, spawn_workers, stop_workers, watch, worker_devices

    nfes = _nfe_list(nfe, ctx.args)
    overrides = dict(model=model, checkpoint=str(checkpoint) if checkpoint else None, solver=solver, trials=trials,
                     samples=samples, reference=ref, features=features, features_weights=features_weights,
                     model_name=study, space=space, sampler=sampler, sampler_seed=seed, batch_size=batch_size,
                     rho_bounds=list(rho_bounds) if rho_bounds else None,
                     curve_bounds=list(curve_bounds) if curve_bounds else None)
    configs = prepare_studies(storage, build_configs(preset, overrides, nfes))
    url = resolve_url(storage)
    console.print(f"storage {mask_url(url)}: " + ", ".join(c.study_name for c in configs))
    if not workers:
        return
    settings = StorageSettings(heartbeat_interval=heartbeat, grace_period=grace)
    procs = spawn_workers(url, [c.study_name for c in configs], worker_devices(device), Path(configs[0].artifacts) / "logs",
                          settings)
    console.print(f"{len(procs)} worker(s) on {', '.join(p.device for p in procs)}; logs in {procs[0].log.parent}")
    try:
        with Live(console=console, refresh_per_second=2, transient=True) as live:
            codes = watch(url, configs, procs, lambda s, t: live.update(summary_table(s, "search", t)))
    except KeyboardInterrupt:
        stop_workers(procs)
        err_console.print("[yellow]interrupted: running trials were marked failed[/yellow]")
        raise typer.Exit(130) from None
    _print_status(url, [c.study_name for c in configs])
    failed = [(p, c) for p, c in zip(procs, codes) if c != 0]
    if failed:
        p, code = failed[0]
        tail = p.log.read_text(errors="replace").strip().splitlines()[-1:] if p.log.exists() else []
        raise UsageError(f"worker {p.index} exited with code {code}: {' '.join(tail) or 'see ' + str(p.log)}")


@command
def worker(
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Study to join (default: all unfinished).")] = None,
    storage: StorageOpt = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    index: Annotated[int, typer.Option(help="Worker index (varies the sampler seed).")] = 0,
    checkpoint: CheckpointOpt = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="This node's path to the study's reference .npz.")] = None,
    features_weights: Annotated[Optional[str], typer.Option(help="Local weights file for the extractor.")] = None,
    heartbeat: Annotated[int, typer.Option(help="Heartbeat interval, seconds.")] = 60,
    grace: Annotated[int, typer.Option(help="Seconds without heartbeat before a trial is retried.")] = 300,
) -> None:
    """Join existing studies and run trials until their budgets are met."""
    from .search.worker import run_worker

    overrides = dict(checkpoint=str(checkpoint) if checkpoint else None, reference=ref, features_weights=features_weights)
    settings = StorageSettings(heartbeat_interval=heartbeat, grace_period=grace)
    ran = run_worker(storage, study, device=device, worker_index=index, overrides=overrides, settings=settings)
    console.print(f"worker done: {ran} trial(s) run")
    _print_status(resolve_url(storage), study)


def _summaries(storage: str | None, names: list[str] | None = None, model: str | None = None,
               nfe: list[int] | None = None) -> list[StudySummary]:
    from .export import study_summaries

    quiet_optuna()
    found = study_summaries(open_storage(storage), model, nfe)
    return [s for s in found if not names or s.name in names]


def _print_status(storage: str | None, names: list[str] | None = None) -> None:
    summaries = _summaries(storage, names)
    console.print(summary_table(summaries))
    for line in best_lines(summaries):
        console.print(line, highlight=False)
    _warn_noise(summaries)


@command
def status(
    storage: StorageOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show every study: trials, baseline vs best proxy FID, gain, best parameters."""
    summaries = _summaries(storage)
    if as_json:
        typer.echo(json.dumps({"storage": mask_url(resolve_url(storage)),
                               "studies": [s.to_json() for s in summaries]}, indent=2))
        return
    if not summaries:
        console.print(f"no skipsearch studies in {mask_url(resolve_url(storage))}; start one with `skipsearch launch`")
        return
    _print_status(storage)


@command
def export(
    output: Annotated[Path, typer.Option("-o", "--output", help="JSON file to write (atomically).")],
    storage: StorageOpt = None,
    model: Annotated[Optional[str], typer.Option(help="Only this model name.")] = None,
    nfe: Annotated[Optional[list[int]], typer.Option(help="Only these NFEs.")] = None,
) -> None:
    """Write the best schedule of each study as a skipsearch.schedules/v1 file."""
    from .export import export_schedules

    quiet_optuna()
    doc, summaries = export_schedules(open_storage(storage), output, model=model, nfe=nfe)
    console.print(f"wrote {output}: {len(doc.entries)} schedule(s)")
    _warn_noise(summaries)


@command
def dashboard(
    storage: StorageOpt = None,
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8080,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    artifacts: Annotated[Path, typer.Option(help="Artifact folder of the studies.")] = Path("skipsearch-artifacts"),
) -> None:
    """Serve optuna-dashboard on the same storage and artifact folder."""
    from .search.dashboard import serve

    url = resolve_url(storage)
    console.print(f"optuna-dashboard for {mask_url(url)} on http://{host}:{port} (Ctrl-C to stop)")
    serve(url, host=host, port=port, artifacts=artifacts)


__all__ = ["launch", "worker", "status", "export", "dashboard", "summary_table", "best_lines", "build_configs"]
