"""`launch` and `worker`: start a search and take part in one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.live import Live

from ..errors import UsageError
from ..search import (
    Interrupted,
    StorageSettings,
    StudyConfig,
    mask_url,
    prepare_studies,
    queue_confirmations,
    resolve_url,
    run_worker,
    signals_interrupt,
    spawn_workers,
    stop_workers,
    watch,
    worker_devices,
)
from ._output import console, err_console, interactive, live_view
from ._options import CheckpointOpt, FeaturesWeightsOpt, StorageOpt
from .studies import print_status

__all__ = ["launch", "worker", "confirm"]

HeartbeatOpt = Annotated[float, typer.Option(help="Seconds between a running trial's heartbeats.")]
GraceOpt = Annotated[float, typer.Option(help="Seconds without a heartbeat before a trial is re-queued.")]
OutageOpt = Annotated[float, typer.Option(help="Seconds a worker waits out an unreachable database before it stops.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the network's blocks (minutes up front; "
                                                             "pays off in long GPU searches).")]


def _nfe_list(nfe: list[int] | None, extra: list[str]) -> list[int] | None:
    values = list(nfe or [])
    for arg in extra:
        try:
            values.append(int(arg))
        except ValueError:
            raise UsageError(f"unexpected argument {arg!r}; NFEs are integers, e.g. --nfe 9 11 19") from None
    return values or None


def launch(
    ctx: typer.Context,
    preset: Annotated[Optional[str], typer.Option(help="Study preset (see `skipsearch presets`) or a TOML file.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model family (edm, edm2, diffusers) or builtin:NAME.")] = None,
    checkpoint: CheckpointOpt = None,
    solver: Annotated[Optional[str], typer.Option(help="Solver (default dpmpp_2m; the demo preset uses euler).")] = None,
    nfe: Annotated[Optional[list[int]], typer.Option(help="NFE(s); one study each: --nfe 9 11 19.")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Trial budget per study; more than a study has extends it.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Samples per trial (proxy FID sample count).")] = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="Reference statistics .npz (EDM fid-refs format).")] = None,
    features: Annotated[Optional[str], typer.Option(help="Feature extractor registered with torch-fidelity.")] = None,
    features_weights: FeaturesWeightsOpt = None,
    storage: StorageOpt = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Model name to file studies under.")] = None,
    space: Annotated[Optional[str], typer.Option(help="linear, stages or linear+window.")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="gp (default), tpe or random.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampler seed.")] = None,
    rho_bounds: Annotated[Optional[tuple[float, float]], typer.Option(help="Search range of each ρ (default 0.3 1.1).")] = None,
    curve_bounds: Annotated[Optional[tuple[float, float]], typer.Option(help="Search range of curve (default -2 2).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per network call.")] = None,
    guide: Annotated[Optional[Path], typer.Option(help="Autoguidance: the guiding network's checkpoint.")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance strength g: D_guide + g(D_net - D_guide).")] = None,
    tune_guide: Annotated[Optional[bool], typer.Option("--tune-guide/--no-tune-guide",
                                                       help="Apply each schedule to the guide too.")] = None,
    vae: Annotated[Optional[Path], typer.Option(help="Latent networks (EDM2 img512): the local VAE folder.")] = None,
    report_features: Annotated[Optional[list[str]], typer.Option(
        "--report", help="Also report this distance (feature extractor name), e.g. dinov2-vit-l-14-edm2.")] = None,
    confirm_top: Annotated[Optional[int], typer.Option(help="Best schedules to confirm on held-out seeds once the "
                                                            "budget is spent (default 3; 0: none).")] = None,
    confirm_samples: Annotated[Optional[int], typer.Option(help="Held-out samples per confirmed schedule "
                                                                "(default 4 x --samples).")] = None,
    device: Annotated[str, typer.Option(help="auto (every visible GPU, else the CPU), cpu, cuda:1, ...")] = "auto",
    gpus: Annotated[Optional[str], typer.Option(help="With --device auto: all, or GPU indices like 0,1.")] = None,
    workers: Annotated[bool, typer.Option("--workers/--no-workers", help="Run local workers after creating studies.")] = True,
    heartbeat: HeartbeatOpt = 60.0,
    grace: GraceOpt = 300.0,
    outage_limit: OutageOpt = 600.0,
    compile: CompileOpt = False,
) -> None:
    """Create one study per NFE and run local workers until the budgets are met."""
    configs = StudyConfig.from_preset(
        preset, nfe=_nfe_list(nfe, ctx.args), model=model, checkpoint=str(checkpoint) if checkpoint else None,
        solver=solver, trials=trials, samples=samples, reference=ref, features=features,
        features_weights=features_weights, model_name=study, space=space, sampler=sampler, sampler_seed=seed,
        batch_size=batch_size, confirm_top=confirm_top, confirm_samples=confirm_samples,
        guide=str(guide) if guide else None, guidance=guidance, tune_guide=tune_guide, vae=str(vae) if vae else None,
        report_features=list(report_features) if report_features else None,
        rho_bounds=list(rho_bounds) if rho_bounds else None,
        curve_bounds=list(curve_bounds) if curve_bounds else None,
    )
    devices = worker_devices(device, gpus) if workers else []
    settings = StorageSettings(heartbeat_interval=heartbeat, grace_period=grace, outage_limit=outage_limit)
    url = resolve_url(storage)
    prepared = prepare_studies(url, configs, settings)
    names = [p.config.study_name for p in prepared]
    console.print(f"storage {mask_url(url)}")
    for p in prepared:
        what = "created" if p.created else "joined"
        extra = f", budget raised from {p.previous_budget} to {p.budget} trials" if p.previous_budget else ""
        console.print(f"{what} study {p.config.study_name} ({p.budget} trials{extra})")
    done = [p for p in prepared if p.complete]
    if len(done) == len(prepared):
        for p in done:
            console.print(f"study {p.config.study_name} is complete ({p.budget}/{p.budget} trials); "
                          f"extend it with `skipsearch launch ... --trials {2 * p.budget}`")
        print_status(url, names)
        return
    if not workers:
        console.print("no local workers (--no-workers): start them with `skipsearch worker` on any node")
        return
    log_dir = Path(prepared[0].config.artifacts) / "logs"
    procs = spawn_workers(url, names, devices, log_dir, settings, compile=compile)
    console.print(f"{len(procs)} worker(s) on {', '.join(p.device for p in procs)}; logs in {log_dir}")
    codes: list[int | None] = []
    with signals_interrupt():
        try:
            codes = _follow(url, names, procs, settings)
        except Interrupted as stop:
            err_console.print(f"[yellow]{stop}: stopping workers; their running trials are re-queued[/yellow]")
            stop_workers(procs)
            raise typer.Exit(128 + stop.signum) from None
        finally:
            stop_workers(procs)  # never leave a worker behind, whatever ended the watch
    print_status(url, names)
    failed = [(p, c) for p, c in zip(procs, codes) if c not in (0, None)]
    if failed:
        p, code = failed[0]
        tail = p.log.read_text(errors="replace").strip().splitlines()[-1:] if p.log and p.log.exists() else []
        raise UsageError(f"worker {p.index} exited with code {code}: {' '.join(tail) or 'see ' + str(p.log)}")


def _follow(url: object, names: list[str], procs: list, settings: StorageSettings) -> list[int | None]:
    """Live progress in a terminal; one plain line per finished trial otherwise."""
    codes: list[int | None] = []
    log = lambda message: err_console.print(f"[yellow]{message}[/yellow]")  # noqa: E731
    if interactive():
        with Live(console=console, refresh_per_second=2, transient=True) as live:
            for state in watch(url, names, procs, settings=settings, log=log):  # type: ignore[arg-type]
                for event in state.events:
                    live.console.print(event.line(), highlight=False)
                live.update(live_view(state.summaries, state.elapsed))
                codes = state.exit_codes
    else:
        for state in watch(url, names, procs, settings=settings, log=log):  # type: ignore[arg-type]
            for event in state.events:
                console.print(event.line(), highlight=False, soft_wrap=True)
            codes = state.exit_codes
    return codes


def worker(
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Study to join (default: all unfinished).")] = None,
    storage: StorageOpt = None,
    device: Annotated[str, typer.Option(help="auto (one worker per visible GPU, else the CPU), cpu, cuda:1, ...")] = "auto",
    gpus: Annotated[Optional[str], typer.Option(help="With --device auto: all, or GPU indices like 0,1.")] = None,
    checkpoint: CheckpointOpt = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="This node's path to the study's reference .npz.")] = None,
    features_weights: FeaturesWeightsOpt = None,
    artifacts: Annotated[Optional[Path], typer.Option(help="This node's artifact folder (sample grids).")] = None,
    guide: Annotated[Optional[Path], typer.Option(help="This node's path to the study's guiding network.")] = None,
    vae: Annotated[Optional[Path], typer.Option(help="This node's VAE folder (latent networks).")] = None,
    heartbeat: HeartbeatOpt = 60.0,
    grace: GraceOpt = 300.0,
    outage_limit: OutageOpt = 600.0,
    compile: CompileOpt = False,
) -> None:
    """Join existing studies and run their queued trials until none is left (one process per GPU)."""
    devices = worker_devices(device, gpus)
    settings = StorageSettings(heartbeat_interval=heartbeat, grace_period=grace, outage_limit=outage_limit)
    url = resolve_url(storage)
    node_paths = {"--checkpoint": checkpoint, "--ref": ref, "--features-weights": features_weights,
                  "--artifacts": artifacts, "--guide": guide, "--vae": vae}
    if len(devices) > 1:
        _supervise(url, study or [], devices, settings, node_paths, compile)
        return
    overrides = dict(checkpoint=str(checkpoint) if checkpoint else None, reference=ref,
                     features_weights=features_weights, artifacts=str(artifacts) if artifacts else None,
                     guide=str(guide) if guide else None, vae=str(vae) if vae else None)
    with signals_interrupt():
        try:
            prefix = os.environ.get("SKIPSEARCH_LOG_PREFIX", "")
            report = run_worker(url, study, device=devices[0], overrides=overrides, settings=settings,
                                log=lambda m: console.print(prefix + m, highlight=False, soft_wrap=True),
                                compile=compile)
        except Interrupted as stop:
            err_console.print(f"[yellow]worker stopped by {stop}; its running trial was re-queued[/yellow]")
            raise typer.Exit(128 + stop.signum) from None
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(report.outcomes.items())) or "none"
    if not report.studies:
        console.print(f"no skipsearch studies in {mask_url(url)}; create them with `skipsearch launch`")
        return
    console.print(f"worker done: {report.ran} trial(s) run by this worker ({outcomes})")
    print_status(url, report.studies)


def _supervise(url: object, names: list[str], devices: list[str], settings: StorageSettings,
               node_paths: dict[str, object], compile: bool) -> None:
    """One worker process per GPU of this node, pinned with CUDA_VISIBLE_DEVICES; their output is
    this command's output; signals reach all of them."""
    extra = []
    for flag, value in node_paths.items():
        if value is not None:
            extra += [flag, str(value)]
    procs = spawn_workers(url, names, devices, None, settings, extra_args=extra, compile=compile)  # type: ignore[arg-type]
    console.print(f"{len(procs)} worker(s) on {', '.join(p.device for p in procs)}")
    with signals_interrupt():
        try:
            codes = [p.process.wait() for p in procs]
        except Interrupted as stop:
            err_console.print(f"[yellow]{stop}: stopping workers; their running trials are re-queued[/yellow]")
            stop_workers(procs)
            raise typer.Exit(128 + stop.signum) from None
        finally:
            stop_workers(procs)
    failed = [c for c in codes if c != 0]
    if failed:
        raise typer.Exit(failed[0] if 0 < failed[0] < 256 else 1)


def confirm(
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Study to confirm (default: all).")] = None,
    storage: StorageOpt = None,
    top: Annotated[Optional[int], typer.Option(help="Confirm this many best schedules (default: the study's, 3).")] = None,
    now: Annotated[bool, typer.Option("--now", help="Confirm the current best of a study that is still searching.")] = False,
    device: Annotated[str, typer.Option(help="auto (GPU 0 if any, else the CPU), cpu, cuda:1, ...")] = "auto",
    checkpoint: CheckpointOpt = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="This node's path to the study's reference .npz.")] = None,
    features_weights: FeaturesWeightsOpt = None,
) -> None:
    """Re-score the best schedules and the baseline on held-out seeds, with 95% intervals.

    Workers do this by themselves once a study's budget is spent; this runs it now, here."""
    if top is not None and top < 1:
        raise UsageError("--top must be at least 1")
    url = resolve_url(storage)
    names = queue_confirmations(url, study, top=top, now=now)
    if not names:
        console.print("nothing to confirm: no study has a complete trial yet")
        return
    overrides = dict(checkpoint=str(checkpoint) if checkpoint else None, reference=ref,
                     features_weights=features_weights)
    with signals_interrupt():
        try:
            run_worker(url, names, device=worker_devices(device)[0], overrides=overrides, confirm_only=True,
                       log=lambda m: console.print(m, highlight=False, soft_wrap=True))
        except Interrupted as stop:
            err_console.print(f"[yellow]stopped by {stop}; the running confirmation was re-queued[/yellow]")
            raise typer.Exit(128 + stop.signum) from None
    print_status(url, names)
