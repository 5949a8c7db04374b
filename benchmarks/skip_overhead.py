"""Cost of skip-tuning while sampling: time with a non-trivial schedule / time without.

Same network, solver, NFE, batch and seeds; the two variants are interleaved and each ratio is
taken within a pair, so drifting machine load cancels. Goal: median ratio ≤ 1.02.

    python benchmarks/skip_overhead.py [--model builtin:edm-digits] [--nfe 10] [--batch 64] [--reps 9]
    python benchmarks/skip_overhead.py --channels 32 --resolution 32   # a small random EDM network
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from skipsearch import SkipSchedule, load_network, sample, skip_sites
from skipsearch.models.edm import EDMPrecond


def _network(model: str | None, channels: int, resolution: int) -> torch.nn.Module:
    if model:
        return load_network(model)
    torch.manual_seed(0)  # a random DDPM++ network, 3 levels, 2 blocks per level
    return EDMPrecond(img_resolution=resolution, img_channels=3, model_type="SongUNet", model_channels=channels,
                      channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[resolution // 4],
                      dropout=0.0).eval().requires_grad_(False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint or builtin:NAME (default: random demo-sized net)")
    parser.add_argument("--solver", default="euler")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--channels", type=int, default=32, help="random network width (without --model)")
    parser.add_argument("--resolution", type=int, default=32, help="random network resolution (without --model)")
    args = parser.parse_args()

    net = _network(args.model, args.channels, args.resolution)
    k = len(skip_sites(net))
    tuned = SkipSchedule.linear(k, 0.5, 0.9, curve=-1.0)
    seeds = list(range(args.batch))
    run = lambda schedule: sample(net, seeds, solver=args.solver, nfe=args.nfe, schedule=schedule,  # noqa: E731
                                  batch_size=args.batch)
    run(None), run(tuned)  # warm-up

    ratios, base_times, tuned_times = [], [], []
    for rep in range(args.reps):
        order = [None, tuned] if rep % 2 == 0 else [tuned, None]
        times = {}
        for schedule in order:
            t0 = time.perf_counter()
            run(schedule)
            times[schedule is None] = time.perf_counter() - t0
        base_times.append(times[True])
        tuned_times.append(times[False])
        ratios.append(times[False] / times[True])
    print(f"network: {args.model or f'random DDPM++ {args.channels}ch {args.resolution}x{args.resolution}'} ({k} skip sites), {args.solver} NFE {args.nfe}, "
          f"batch {args.batch}, {args.reps} interleaved pairs, torch threads {torch.get_num_threads()}")
    print(f"untuned  median {statistics.median(base_times) * 1e3:8.1f} ms")
    print(f"tuned    median {statistics.median(tuned_times) * 1e3:8.1f} ms")
    print(f"ratio tuned/untuned: median {statistics.median(ratios):.3f}  (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
