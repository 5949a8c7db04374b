"""Does skip-tuning help the built-in model? Grids with common random numbers, then held-out seeds.

For each (solver, NFE): proxy FID over a (ρ_top, ρ_bottom) grid on seeds 0…4n−1, read at n and 4n
samples in one pass (Spearman between the two tells whether the cheap proxy ranks like the
expensive one); then the grid's best and the untuned baseline are re-scored on held-out seeds
(100000…) with more samples. Also prints the real-data noise floor and seconds per evaluation.

    python benchmarks/demo_gain.py [--n 150] [--holdout 2000] [--grid 5] [--configs euler:6,euler:10,...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from skipsearch import SkipSchedule, load_network, skip_sites
from skipsearch.metrics import real_data_floor
from skipsearch.recipe import SamplingRecipe
from skipsearch.scoring import ProxyFID, resolve_metric_defaults

DEFAULT_CONFIGS = "euler:6,euler:10,dpmpp_2m:10,heun:5,heun:7,heun:9,dpmpp_2m:5,dpmpp_2m:6"
HOLDOUT_START = 100_000


def evaluate(scorer: ProxyFID, net, solver: str, nfe: int, schedule, seeds, steps) -> dict[int, float]:
    return dict(scorer.iter_fid(net, seeds, SamplingRecipe(solver=solver, nfe=nfe, batch_size=250), schedule, steps=steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="cheap proxy sample count (the grid also reads 4n)")
    parser.add_argument("--holdout", type=int, default=2000, help="samples for the held-out re-score")
    parser.add_argument("--grid", type=int, default=5, help="grid points per axis over [0.3, 1.1]")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--extra", action="store_true", help="also try ρ > 1, inner-only and σ-window variants")
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args()

    net = load_network("builtin:edm-digits")
    k = len(skip_sites(net))
    features, reference = resolve_metric_defaults(net, None, None)
    scorer = ProxyFID(features, reference)
    axis = np.round(np.linspace(0.3, 1.1, args.grid), 3).tolist()
    seeds = range(4 * args.n)
    holdout = range(HOLDOUT_START, HOLDOUT_START + args.holdout)
    report: dict = {"k": k, "n": args.n, "holdout": args.holdout, "grid": axis, "configs": {}}

    t0 = time.perf_counter()
    floor = real_data_floor()
    report["noise_floor"] = floor
    print(f"real-data noise floor (two halves of the 1,797 digits): {floor:.2f}  [{time.perf_counter() - t0:.1f}s]")

    t0 = time.perf_counter()
    evaluate(scorer, net, "euler", 10, None, range(2000), [2000])
    report["seconds_per_eval_2000_nfe10"] = time.perf_counter() - t0
    print(f"one evaluation (2,000 samples, Euler NFE 10): {report['seconds_per_eval_2000_nfe10']:.1f}s")

    for spec in args.configs.split(","):
        solver, nfe = spec.split(":")[0], int(spec.split(":")[1])
        t0 = time.perf_counter()
        points = [(1.0, 1.0)] + [p for p in itertools.product(axis, axis) if p != (1.0, 1.0)]
        if args.extra:
            points += [(rt, 1.0) for rt in (1.15, 1.3)] + [(1.0, rb) for rb in (1.15, 1.3)]
        cheap, full = [], []
        for rho_top, rho_bottom in points:
            sched = SkipSchedule.linear(k, rho_top, rho_bottom)
            fids = evaluate(scorer, net, solver, nfe, sched, seeds, [args.n, 4 * args.n])
            cheap.append(fids[args.n])
            full.append(fids[4 * args.n])
        best = int(np.argmin(full))
        rho_best = points[best]
        rho = spearmanr(cheap, full).statistic
        held_base = evaluate(scorer, net, solver, nfe, None, holdout, [args.holdout])[args.holdout]
        held_best = evaluate(scorer, net, solver, nfe, SkipSchedule.linear(k, *rho_best), holdout, [args.holdout])[args.holdout]
        entry = {
            "baseline_grid": full[0], "best_grid": full[best], "best_point": rho_best,
            "gain_grid": (full[0] - full[best]) / full[0],
            "baseline_holdout": held_base, "best_holdout": held_best, "gain_holdout": (held_base - held_best) / held_base,
            "spearman_n_4n": rho, "seconds": time.perf_counter() - t0,
            "grid_fid_4n": {f"{p[0]},{p[1]}": f for p, f in zip(points, full)},
        }
        report["configs"][spec] = entry
        print(f"{solver:9s} NFE {nfe:2d}: grid {full[0]:7.2f} -> {full[best]:7.2f} at (ρ_top, ρ_bottom)={rho_best} "
              f"({entry['gain_grid'] * 100:+.1f}%); held-out {held_base:7.2f} -> {held_best:7.2f} "
              f"({entry['gain_holdout'] * 100:+.1f}%); Spearman(n, 4n) {rho:.3f}  [{entry['seconds']:.0f}s]")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
