"""`launch`, `worker` and `confirm`: start a search, take part in one, confirm its best.

Each command parses, makes one call into `skipsearch.search` and prints; signals and errors end
at the app's boundary (`_app`). The search is imported inside the commands, so `--help` is fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ._output import LaunchView, console
from ._options import CheckpointOpt, FeaturesWeightsOpt, StorageOpt

__all__ = ["launch", "worker", "confirm"]

HeartbeatOpt = Annotated[float, typer.Option(help="Seconds between a running trial's heartbeats.")]
GraceOpt = Annotated[float, typer.Option(help="Seconds without a heartbeat before a trial is re-queued.")]
OutageOpt = Annotated[float, typer.Option(help="Seconds a worker waits out an unreachable or full database.")]
PoolOpt = Annotated[int, typer.Option(help="PostgreSQL connections per worker process (at most).")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the network's blocks (long GPU searches).")]
RefOpt = Annotated[Optional[str], typer.Option("--ref", help="This node's path to the study's reference.")]


def _nfe_list(nfe: list[int] | None, extra: list[str]) -> list[int] | None:
    values = list(nfe or [])
    for arg in extra:
        try:
            values.append(int(arg))
        except ValueError:
            raise UsageError(f"unexpected argument {arg!r}; NFEs are integers, e.g. --nfe 9 11 19") from None
    return values or None


def _path(value: Path | None) -> str | None:
    return str(value) if value is not None else None


def launch(
    ctx: typer.Context,
    preset: Annotated[Optional[str], typer.Option(help="Study preset (`skipsearch presets`) or a TOML file.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="edm, edm2, diffusers or builtin:NAME.")] = None,
    checkpoint: CheckpointOpt = None,
    solver: Annotated[Optional[str], typer.Option(help="Solver (default dpmpp_2m; the demo: euler).")] = None,
    nfe: Annotated[Optional[list[int]], typer.Option(metavar="N...", help="NFE(s), one study each: --nfe 9 11 19.")] = None,
    trials: Annotated[Optional[int], typer.Option(help="Trial budget per study (more extends one).")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Samples per trial (proxy FID).")] = None,
    ref: Annotated[Optional[str], typer.Option("--ref", help="Reference statistics (.npz, EDM2 .pkl).")] = None,
    features: Annotated[Optional[str], typer.Option(help="Feature extractor (torch-fidelity name).")] = None,
    features_weights: FeaturesWeightsOpt = None,
    storage: StorageOpt = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Model name to file studies under.")] = None,
    space: Annotated[Optional[str], typer.Option(help="linear, stages, linear+window; steps, linear+steps, "
                                                      "stages+steps (the σ steps too); freeu.")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="gp (default), tpe or random.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampler seed.")] = None,
    rho_bounds: Annotated[Optional[tuple[float, float]], typer.Option(
        metavar="LO HI", help="Range of each ρ (default 0.3 1.1).")] = None,
    curve_bounds: Annotated[Optional[tuple[float, float]], typer.Option(
        metavar="LO HI", help="Range of curve (default -2 2).")] = None,
    exponent_bounds: Annotated[Optional[tuple[float, float]], typer.Option(
        metavar="LO HI", help="Steps spaces: range of the time exponent (default 2 20; EDM's is 7).")] = None,
    crowd_bounds: Annotated[Optional[tuple[float, float]], typer.Option(
        metavar="LO HI", help="Steps spaces: range of the step warp (default -1 1, at most ±2).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per network call.")] = None,
    guide: Annotated[Optional[Path], typer.Option(help="Autoguidance: the guiding network.")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance strength g (with --guide).")] = None,
    tune_guide: Annotated[Optional[bool], typer.Option("--tune-guide", help="Apply each schedule to the guide too.",
                                                       show_default=False)] = None,
    vae: Annotated[Optional[Path], typer.Option(help="Latent networks: the local VAE folder.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="Text-to-image pipelines: prompts file (a line each, a "
                                                         "JSON list or COCO captions); seed s gets prompt s mod P.")] = None,
    cfg: Annotated[Optional[float], typer.Option(help="Text-to-image pipelines: classifier-free guidance scale "
                                                      "(default 7.5; SDXL 5).")] = None,
    negative_prompt: Annotated[Optional[str], typer.Option(help="Text-to-image pipelines: CFG's negative prompt.")] = None,
    report_features: Annotated[Optional[list[str]], typer.Option(
        "--report", metavar="NAME", help="Also report this distance (feature extractor).")] = None,
    confirm_top: Annotated[Optional[int], typer.Option(help="Best schedules to confirm on held-out seeds "
                                                            "(default 3; 0: none).")] = None,
    confirm_samples: Annotated[Optional[int], typer.Option(help="Held-out samples each (default 4 × --samples).")] = None,
    device: Annotated[str, typer.Option(help="auto (every visible GPU, else the CPU), cpu, cuda:1.")] = "auto",
    gpus: Annotated[Optional[str], typer.Option(help="With --device auto: all, or indices like 0,1.")] = None,
    no_workers: Annotated[bool, typer.Option("--no-workers", help="Only create the studies; run workers "
                                                                   "elsewhere (`skipsearch worker`).")] = False,
    heartbeat: HeartbeatOpt = 60.0,
    grace: GraceOpt = 300.0,
    outage_limit: OutageOpt = 600.0,
    pool_size: PoolOpt = 2,
    compile: CompileOpt = False,
) -> None:
    """Create one study per NFE and run local workers until the budgets are met."""
    from ..search import LaunchPlan, StorageSettings, StudyConfig, launch_studies, worker_devices

    configs = StudyConfig.from_preset(
        preset, nfe=_nfe_list(nfe, ctx.args), model=model, checkpoint=_path(checkpoint),
        solver=solver, trials=trials, samples=samples, reference=ref, features=features,
        features_weights=features_weights, model_name=study, space=space, sampler=sampler, sampler_seed=seed,
        batch_size=batch_size, confirm_top=confirm_top, confirm_samples=confirm_samples,
        guide=_path(guide), guidance=guidance, tune_guide=tune_guide, vae=_path(vae),
        prompts=_path(prompts), cfg=cfg, negative_prompt=negative_prompt,
        report_features=list(report_features) if report_features else None,
        rho_bounds=list(rho_bounds) if rho_bounds else None,
        curve_bounds=list(curve_bounds) if curve_bounds else None,
        exponent_bounds=list(exponent_bounds) if exponent_bounds else None,
        crowd_bounds=list(crowd_bounds) if crowd_bounds else None,
    )
    if (exponent_bounds or crowd_bounds) and not any("steps" in c.space.split("+") for c in configs):
        raise UsageError(f"--exponent-bounds and --crowd-bounds shape the σ steps, which --space {configs[0].space} "
                         "does not search; use --space steps, linear+steps or stages+steps")
    plan = LaunchPlan(configs, [] if no_workers else worker_devices(device, gpus),
                      StorageSettings(heartbeat_interval=heartbeat, grace_period=grace, outage_limit=outage_limit,
                                      pool_size=pool_size),
                      compile=compile)
    with LaunchView() as view:
        launched = launch_studies(storage, plan, view)
    if not launched.workers:
        complete = [p for p in launched.prepared if p.complete]
        if len(complete) == len(launched.prepared):
            for p in complete:
                console.print(f"study {p.config.study_name} is complete ({p.budget}/{p.budget} trials); "
                              f"extend it with `skipsearch launch ... --trials {2 * p.budget}`")
        elif no_workers:
            console.print("no local workers (--no-workers): start them with `skipsearch worker` on any node")
            return
    from .studies import print_status

    print_status(launched.store, launched.names)
    launched.raise_for_workers()


def worker(
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Study to join (default: all unfinished).")] = None,
    storage: StorageOpt = None,
    device: Annotated[str, typer.Option(help="auto (one worker per visible GPU, else the CPU), cpu, cuda:1.")] = "auto",
    gpus: Annotated[Optional[str], typer.Option(help="With --device auto: all, or indices like 0,1.")] = None,
    checkpoint: CheckpointOpt = None,
    ref: RefOpt = None,
    features_weights: FeaturesWeightsOpt = None,
    artifacts: Annotated[Optional[Path], typer.Option(help="This node's artifact folder (sample grids).")] = None,
    guide: Annotated[Optional[Path], typer.Option(help="This node's path to the study's guiding network.")] = None,
    vae: Annotated[Optional[Path], typer.Option(help="This node's VAE folder (latent networks).")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="This node's copy of the study's prompts file.")] = None,
    heartbeat: HeartbeatOpt = 60.0,
    grace: GraceOpt = 300.0,
    outage_limit: OutageOpt = 600.0,
    pool_size: PoolOpt = 2,
    compile: CompileOpt = False,
) -> None:
    """Join existing studies and run their queued trials until none is left (one process per GPU)."""
    from ..search import NodePaths, StorageSettings, StudyStore, WorkerOptions, run_worker, supervise_workers
    from ..search import worker_devices

    devices = worker_devices(device, gpus)
    if pool_size < 1:
        raise UsageError("--pool-size must be at least 1")
    settings = StorageSettings(heartbeat_interval=heartbeat, grace_period=grace, outage_limit=outage_limit,
                               pool_size=pool_size)
    node = NodePaths(checkpoint=_path(checkpoint), reference=ref, features_weights=features_weights,
                     artifacts=_path(artifacts), guide=_path(guide), vae=_path(vae), prompts=_path(prompts))
    log = lambda m: console.print(prefix + m, highlight=False, soft_wrap=True)  # noqa: E731
    prefix = os.environ.get("SKIPSEARCH_LOG_PREFIX", "")
    store = StudyStore.open(storage, settings, log=log, wait=True)  # a database restarting or full is waited out
    if len(devices) > 1:
        console.print(f"{len(devices)} worker(s) on {', '.join(devices)}")
        failed = [code for code in supervise_workers(store, study or [], devices, node.args(), compile) if code]
        if failed:
            raise typer.Exit(failed[0] if 0 < failed[0] < 256 else 1)
        return
    report = run_worker(store, study, WorkerOptions(devices[0], node, compile), log=log)
    if not report.studies:
        console.print(f"no skipsearch studies in {store.masked}; create them with `skipsearch launch`")
        return
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(report.outcomes.items())) or "none"
    console.print(f"worker done: {report.ran} trial(s) run by this worker ({outcomes})")
    from .studies import print_status

    print_status(store, report.studies)


def confirm(
    study: Annotated[Optional[list[str]], typer.Option("--study", help="Study to confirm (default: all).")] = None,
    storage: StorageOpt = None,
    top: Annotated[Optional[int], typer.Option(help="Confirm this many best schedules (default: the study's).")] = None,
    now: Annotated[bool, typer.Option("--now", help="Confirm the current best of a study still searching.")] = False,
    device: Annotated[str, typer.Option(help="auto (GPU 0 if any, else the CPU), cpu, cuda:1.")] = "auto",
    checkpoint: CheckpointOpt = None,
    ref: RefOpt = None,
    features_weights: FeaturesWeightsOpt = None,
) -> None:
    """Re-score the best schedules and the baseline on held-out seeds, with 95% intervals.

    Workers do this by themselves once a study's budget is spent; this runs it now, here."""
    from ..search import NodePaths, StudyStore, WorkerOptions, queue_confirmations, run_worker, worker_devices

    if top is not None and top < 1:
        raise UsageError("--top must be at least 1")
    store = StudyStore.open(storage)
    names = queue_confirmations(store, study, top=top, now=now)
    if not names:
        console.print("nothing to confirm: no study has a complete trial yet")
        return
    node = NodePaths(checkpoint=_path(checkpoint), reference=ref, features_weights=features_weights)
    run_worker(store, names, WorkerOptions(worker_devices(device)[0], node, confirm_only=True),
               log=lambda m: console.print(m, highlight=False, soft_wrap=True))
    from .studies import print_status

    print_status(store, names)
