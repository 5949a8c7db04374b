"""What many workers pay the storage and the sampler: throughput with 1–16 worker processes on
PostgreSQL, and the default sampler's time per trial as a study grows.

1. Workers: N real `run_worker` processes (sampler, pruner, heartbeats, storage, artifacts) on one
   study, with a fixed-cost objective (a timed wait standing in for GPU work, reporting the
   fidelity steps). Throughput = finished trials per second between the first start and the last
   finish; printed as a ratio to one worker. Goal: ≥ 7× at 8 workers.
2. Sampler: the time of one suggestion (the study's default GPSampler) with 50, 100, 200 and 500
   finished trials, on the linear space (3 dims) and the joint spaces linear+steps (6) and
   stages+steps (7: four resolution stages). Goal: under 5% of a 30-second GPU trial (1.5 s).

Needs a PostgreSQL server: $SKIPSEARCH_TEST_POSTGRES or 127.0.0.1:5432 (a fresh database is made).

    python benchmarks/storage_scale.py [--workers 1,2,4,8,16] [--cost 4] [--trials-per-worker 6]
    python benchmarks/storage_scale.py --sampler-only --sizes 200 [--spaces linear,linear+steps]
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


def sampler_seconds(finished: int, space_name: str = "linear", repeats: int = 3) -> tuple[float, int]:
    """One suggestion of the default sampler with `finished` complete trials in a study of
    `space_name` (12 sites at four resolutions); returns (median seconds, dimensions)."""
    from skipsearch.schedule import SkipSite
    from skipsearch.search import SPACES, StudyConfig

    [config] = StudyConfig.from_preset("demo", trials=finished + repeats, space=space_name)
    space = SPACES.lookup(config.space)
    sites = [SkipSite(i, 64 >> (i // 3), 16, "", "") for i in range(12)]  # 4 stages, as EDM ImageNet-64
    dists = space.distributions(config, sites)  # type: ignore[arg-type]
    rng = torch.Generator().manual_seed(0)
    study = optuna.create_study(direction="minimize")
    for _ in range(finished):  # a smooth landscape over the unit cube of the space's parameters
        unit = [float(v) for v in torch.rand(len(dists), generator=rng)]
        params = {name: d.low + u * (d.high - d.low) for (name, d), u in zip(dists.items(), unit)}  # type: ignore[attr-defined]
        value = 20 + 40 * sum((u - 0.4) ** 2 for u in unit)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    times = []
    for r in range(repeats):
        study.sampler = config.make_sampler(finished + r, lambda p: space.vector(p, config, sites))  # type: ignore[arg-type]
        start = time.perf_counter()
        trial = study.ask()
        for name, dist in dists.items():
            trial.suggest_float(name, dist.low, dist.high, log=dist.log)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - start)
        study.tell(trial, 30.0)
    return statistics.median(times), len(dists)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8,16")
    parser.add_argument("--cost", type=float, default=4.0, help="seconds of 'GPU work' per trial")
    parser.add_argument("--trials-per-worker", type=int, default=6)
    parser.add_argument("--sizes", default="50,100,200,500")
    parser.add_argument("--spaces", default="linear,linear+steps,stages+steps",
                        help="search spaces whose sampler time to measure")
    parser.add_argument("--sampler-only", action="store_true", help="skip the worker throughput part (no database)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(os.environ["SKIPSEARCH_STORAGE"], args.cost)
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.sampler_only:
        sampler_report(args.sizes, args.spaces)
        return

    folder = Path(tempfile.mkdtemp(prefix="storage-scale-"))
    print(f"{os.cpu_count()} CPU cores; fixed-cost trials of {args.cost:g} s; {args.trials_per_worker} trials per worker")
    base = None
    for n in (int(v) for v in args.workers.split(",")):
        rate, count = run_workers(n, args.cost, args.trials_per_worker, folder)
        base = base or rate
        ideal = n / args.cost
        print(f"{n:3d} workers: {count:4d} trials, {rate:6.2f} trials/s = {rate / base:5.2f}x one worker "
              f"({100 * rate / ideal:5.1f}% of {n} x 1/{args.cost:g} s)")
    sampler_report(args.sizes, args.spaces)


def sampler_report(sizes: str, spaces: str) -> None:
    budget = 0.05 * 30.0
    for space in spaces.split(","):
        for size in (int(v) for v in sizes.split(",")):
            seconds, dims = sampler_seconds(size, space)
            verdict = "ok" if seconds <= budget else "over"
            print(f"sampler, {space} ({dims} dims), {size:4d} finished trials: {seconds:6.3f} s per suggestion "
                  f"({100 * seconds / 30:4.1f}% of a 30 s trial; {verdict} against 5%)")


if __name__ == "__main__":
    main()
