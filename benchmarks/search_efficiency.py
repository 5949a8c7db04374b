"""How many evaluations the search needs on the built-in model, against an exhaustive grid.

1. Reference: a 7×7 grid over (ρ_top, curve) with ρ_bottom = 1 (the demo's gain lives in the
   outermost skip) gives the optimum; the baseline on a second seed set gives the proxy's noise.
2. Searches: the real worker, in-process, on the demo preset (Euler NFE 10, 1,000 samples, default
   budget), with the default (GP + structural probes), and GP, TPE and random search without the
   probes, 5 seeds each: evaluations until the best complete trial is within the noise (and within
   1 FID) of the grid optimum.
   Goals: ≤ 12 evaluations for the default (median), and 5 of 5 seeds within the default budget.
3. Pruning: samples evaluated with vs without the pruner, at equal best. Goal ≤ 0.5×.
4. Four concurrent worker processes: the share of trials that nearly duplicate (max-norm distance
   of the per-site ρ < 2% of the range) a trial running when they started. Goal 0.

    python benchmarks/search_efficiency.py [--seeds 5] [--parts grid,search,pruning,parallel]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from skipsearch import SkipSchedule, load_network, skip_sites
from skipsearch.scoring import make_scorer
from skipsearch.search import (
    SPACES,
    StorageSettings,
    StudyConfig,
    prepare_studies,
    run_worker,
    spawn_workers,
    study_summaries,
)
from skipsearch.search.storage import open_storage

GRID_RHO = np.linspace(0.3, 1.1, 7)
GRID_CURVE = np.linspace(-2.0, 2.0, 7)


def grid(cache: Path) -> dict:
    if cache.is_file():
        return json.loads(cache.read_text())
    net = load_network("builtin:edm-digits")
    k = len(skip_sites(net))
    scorer = make_scorer(net)
    config = StudyConfig.from_preset("demo")[0]

    def fid(schedule: SkipSchedule | None, seeds: range) -> float:
        return list(scorer.iter_fid(net, seeds, config.recipe().with_(precision="fp32"), schedule))[-1][1]

    start = time.perf_counter()
    values = [[fid(SkipSchedule.linear(k, float(r), 1.0, float(c)), config.seeds) for c in GRID_CURVE] for r in GRID_RHO]
    baseline = fid(None, config.seeds)
    second = fid(None, range(1_000_000, 1_000_000 + config.samples))
    out = {"values": values, "baseline": baseline, "noise": abs(second - baseline),
           "seconds_per_eval": (time.perf_counter() - start) / (len(values) * len(values[0]) + 2)}
    cache.write_text(json.dumps(out))
    return out


def run_search(folder: Path, sampler: str, seed: int, pruner: str = "median", workers: int = 1,
               probes: bool = True) -> list:
    url = f"sqlite:///{folder / f'{sampler}-{pruner}-{seed}-{workers}-{probes}.db'}"
    [config] = StudyConfig.from_preset("demo", sampler=sampler, sampler_seed=seed, pruner=pruner,
                                       artifacts=str(folder / "artifacts"), enqueue_probes=probes)
    prepare_studies(url, [config])
    if workers == 1:
        run_worker(url, None, log=lambda m: None)
    else:
        procs = spawn_workers(url, [config.study_name], ["cpu"] * workers, folder / "logs", StorageSettings())
        for p in procs:
            p.process.wait()
    import optuna

    study = optuna.load_study(study_name=config.study_name, storage=open_storage(url))
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def evaluations_to(trials: list, threshold: float) -> int | None:
    """1-based count of trials (in the order they finished) until a complete one is ≤ threshold."""
    order = sorted(trials, key=lambda t: t.datetime_complete)
    for i, t in enumerate(order, 1):
        if t.state.name == "COMPLETE" and t.value <= threshold:
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--parts", default="grid,search,pruning,parallel")
    parser.add_argument("--samplers", default="gp,tpe,random")
    parser.add_argument("--no-probes", action="store_true", help="only the searches without structural probes")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "skipsearch-demo-grid.json")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    folder = Path(tempfile.mkdtemp(prefix="search-efficiency-"))

    ref = grid(args.cache)
    values = np.array(ref["values"])
    i, j = np.unravel_index(values.argmin(), values.shape)
    best, noise = float(values[i, j]), float(ref["noise"])
    print(f"grid 7x7 over rho_top {GRID_RHO[0]:.2f}..{GRID_RHO[-1]:.2f} x curve {GRID_CURVE[0]:.0f}..{GRID_CURVE[-1]:.0f} "
          f"(rho_bottom 1): best {best:.2f} at rho_top {GRID_RHO[i]:.3f}, curve {GRID_CURVE[j]:.2f}; baseline "
          f"{ref['baseline']:.2f}; proxy noise ±{noise:.2f}; {ref['seconds_per_eval']:.1f} s per evaluation")
    if "grid" in parts:
        print("grid (rows rho_top, columns curve):")
        for r, row in zip(GRID_RHO, values):
            print(f"  {r:5.3f} " + " ".join(f"{v:6.2f}" for v in row))

    results: dict[str, list] = {}
    if "search" in parts:
        variants = [(s, True) for s in args.samplers.split(",") if s == "gp" and not args.no_probes]
        variants += [(s, False) for s in args.samplers.split(",")]
        for sampler, probes in variants:
            counts, counts1, bests = [], [], []
            for seed in range(args.seeds):
                trials = run_search(folder, sampler, seed, probes=probes)
                done = [t.value for t in trials if t.state.name == "COMPLETE"]
                bests.append(min(done))
                counts.append(evaluations_to(trials, best + noise))
                counts1.append(evaluations_to(trials, best + 1.0))
                results.setdefault(f"{sampler}-{probes}", []).append(trials)
            reached = [c for c in counts if c is not None]
            reached1 = [c for c in counts1 if c is not None]
            med = statistics.median(c if c is not None else 99 for c in counts)
            med1 = statistics.median(c if c is not None else 99 for c in counts1)
            label = f"{sampler}{' + probes' if probes else ', no probes'}"
            print(f"{label:>16}: within noise of the grid best after {counts} evaluations (median {med}); "
                  f"within 1 FID after {counts1} (median {med1}); reached {len(reached)}/{args.seeds} and "
                  f"{len(reached1)}/{args.seeds} in {len(trials)} trials; best per seed {[round(b, 2) for b in bests]}")

    if "pruning" in parts:
        ratios = []
        for seed in range(args.seeds):
            pruned = results.get("gp-True", [None] * args.seeds)[seed] or run_search(folder, "gp", seed)
            full = run_search(folder, "gp", seed, pruner="none")
            samples_p = sum(t.user_attrs.get("samples", 0) for t in pruned)
            samples_f = sum(t.user_attrs.get("samples", 0) for t in full)
            best_p = min(t.value for t in pruned if t.state.name == "COMPLETE")
            best_f = min(t.value for t in full if t.state.name == "COMPLETE")
            ratios.append(samples_p / samples_f)
            print(f"  seed {seed}: with pruning {samples_p} samples, best {best_p:.2f}; without {samples_f}, "
                  f"best {best_f:.2f}; ratio {samples_p / samples_f:.2f}")
        print(f"pruning: samples with / without, median {statistics.median(ratios):.2f} (goal ≤ 0.5 at equal best)")

    if "parallel" in parts:
        trials = run_search(folder, "gp", 0, workers=4)
        config = StudyConfig.from_preset("demo")[0]
        net = load_network("builtin:edm-digits")
        sites = skip_sites(net)
        space = SPACES.lookup(config.space)
        near = 0
        for t in trials:
            mine = np.array(space.vector(t.params, config, sites))
            for other in trials:
                if other.number == t.number or other.datetime_start is None or t.datetime_start is None:
                    continue
                running = other.datetime_start <= t.datetime_start <= (other.datetime_complete or t.datetime_start)
                if running and np.max(np.abs(mine - np.array(space.vector(other.params, config, sites)))) < 0.02:
                    near += 1
                    break
        print(f"4 workers: {near}/{len(trials)} trials nearly duplicate a running one (goal 0)")
        [summary] = study_summaries(open_storage(f"sqlite:///{folder / 'gp-median-0-4-True.db'}"))
        print(f"  best {summary.best:.2f} in {summary.finished} trials")


if __name__ == "__main__":
    main()
