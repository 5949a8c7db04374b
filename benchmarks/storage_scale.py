"""What many workers pay the storage and the sampler: throughput with 1–16 worker processes on
PostgreSQL, and the default sampler's time per trial as a study grows.

1. Workers: N real `run_worker` processes (sampler, pruner, heartbeats, storage, artifacts) on one
   study, with a fixed-cost objective (a timed wait standing in for GPU work, reporting the
   fidelity steps). Throughput = finished trials per second between the first start and the last
   finish; printed as a ratio to one worker. Goal: ≥ 7× at 8 workers.
2. Sampler: the time of one suggestion (the study's default GPSampler on the linear space) with
   50, 100, 200 and 500 finished trials. Goal: under 5% of a 30-second GPU trial (1.5 s).

Needs a PostgreSQL server: $SKIPSEARCH_TEST_POSTGRES or 127.0.0.1:5432 (a fresh database is made).

    python benchmarks/storage_scale.py [--workers 1,2,4,8,16] [--cost 4] [--trials-per-worker 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import sqlalchemy as sa
import torch

PG = os.environ.get("SKIPSEARCH_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def fixed_cost(seconds: float):  # type: ignore[no-untyped-def]
    """An objective that waits `seconds` per trial (split over the fidelity steps) and returns a
    smooth function of ρ, so the sampler and pruner see a landscape, not noise."""

    def evaluate(run):  # type: ignore[no-untyped-def]
        config, record, on_images, stream = run.config, run.record, run.on_images, run.stream
        rho = torch.tensor(run.schedule.rho)
        value = 20.0 + 40.0 * float(((rho[0] - 0.45) ** 2 + 0.2 * ((rho[1:] - 1.0) ** 2).mean()))
        steps = config.steps
        for n in steps:
            new = n - (steps[steps.index(n) - 1] if steps.index(n) else 0)
            time.sleep(seconds * new / config.samples)
            if stream is not None:  # the baseline keeps its features for the seed-noise estimate
                stream.add(torch.randint(0, 256, (new, 1, 16, 16), dtype=torch.uint8))
            if on_images is not None and n == steps[0]:
                on_images(torch.zeros(8, 1, 16, 16, dtype=torch.uint8))
            if record is not None:
                record.samples = n
                record.fids[n] = value * (1 + 50 / n)
            yield n, value * (1 + 50 / n)

    return evaluate


def child(url: str, cost: float) -> None:
    from skipsearch.search import StorageSettings, WorkerOptions, run_worker

    run_worker(url, None, WorkerOptions(objective=fixed_cost(cost)), log=lambda m: None,
               settings=StorageSettings(heartbeat_interval=5, grace_period=60))


def fresh_database() -> tuple[str, sa.Engine, str]:
    engine = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    name = f"skipsearch_bench_{uuid.uuid4().hex[:10]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return PG.rsplit("/", 1)[0] + f"/{name}", engine, name


def run_workers(n: int, cost: float, per_worker: int, folder: Path) -> tuple[float, int]:
    from skipsearch.search import StudyConfig, prepare_studies
    from skipsearch.search.storage import open_storage

    url, engine, name = fresh_database()
    try:
        [config] = StudyConfig.from_preset("demo", trials=n * per_worker, artifacts=str(folder / f"a{n}"))
        prepare_studies(url, [config])
        env = dict(os.environ, OMP_NUM_THREADS="1", SKIPSEARCH_STORAGE=url)
        procs = [subprocess.Popen([sys.executable, __file__, "--child", "--cost", str(cost)], env=env)
                 for _ in range(n)]
        for p in procs:
            p.wait()
        study = optuna.load_study(study_name=config.study_name, storage=open_storage(url))
        trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete]
        span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
        return len(trials) / span, len(trials)
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def sampler_seconds(finished: int, repeats: int = 3) -> float:
    """One suggestion of the default sampler with `finished` complete trials in the study."""
    from skipsearch.search import SPACES, StudyConfig

    [config] = StudyConfig.from_preset("demo", trials=finished + repeats)
    space = SPACES.lookup(config.space)
    rng = torch.Generator().manual_seed(0)
    study = optuna.create_study(direction="minimize")
    sites = list(range(6))
    for _ in range(finished):
        top, bottom, curve = (float(v) for v in torch.rand(3, generator=rng))
        params = {"rho_top": 0.3 + 0.8 * top, "rho_bottom": 0.3 + 0.8 * bottom, "curve": -2 + 4 * curve}
        value = 20 + 40 * ((params["rho_top"] - 0.45) ** 2 + 0.2 * (params["rho_bottom"] - 1) ** 2) + 0.1 * curve
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=space.distributions(config, sites), value=value))  # type: ignore[arg-type]
    times = []
    for r in range(repeats):
        study.sampler = config.make_sampler(finished + r, lambda p: [p["rho_top"], p["rho_bottom"], p["curve"]])
        start = time.perf_counter()
        trial = study.ask()
        for name, dist in space.distributions(config, sites).items():  # type: ignore[arg-type]
            trial.suggest_float(name, dist.low, dist.high)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - start)
        study.tell(trial, 30.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8,16")
    parser.add_argument("--cost", type=float, default=4.0, help="seconds of 'GPU work' per trial")
    parser.add_argument("--trials-per-worker", type=int, default=6)
    parser.add_argument("--sizes", default="50,100,200,500")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(os.environ["SKIPSEARCH_STORAGE"], args.cost)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    folder = Path(tempfile.mkdtemp(prefix="storage-scale-"))
    print(f"{os.cpu_count()} CPU cores; fixed-cost trials of {args.cost:g} s; {args.trials_per_worker} trials per worker")
    base = None
    for n in (int(v) for v in args.workers.split(",")):
        rate, count = run_workers(n, args.cost, args.trials_per_worker, folder)
        base = base or rate
        ideal = n / args.cost
        print(f"{n:3d} workers: {count:4d} trials, {rate:6.2f} trials/s = {rate / base:5.2f}x one worker "
              f"({100 * rate / ideal:5.1f}% of {n} x 1/{args.cost:g} s)")
    budget = 0.05 * 30.0
    for size in (int(v) for v in args.sizes.split(",")):
        seconds = sampler_seconds(size)
        verdict = "ok" if seconds <= budget else "over"
        print(f"sampler with {size:4d} finished trials: {seconds:6.3f} s per suggestion "
              f"({100 * seconds / 30:4.1f}% of a 30 s trial; {verdict} against 5%)")


if __name__ == "__main__":
    main()
