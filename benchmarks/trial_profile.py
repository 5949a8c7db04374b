"""Where a demo trial's time goes: network passes, decoding samples to images (EDM's RGB
conversion; the VAE decoder for latent networks), feature passes, FID math, storage and sampler
calls, and everything else. Goal: ≥ 97% of a trial in network and feature passes.

Runs the real worker on a fresh SQLite study of the built-in model (the demo preset: Euler NFE 10,
1,000 samples, fidelity steps at 250/500/1000) and times each part with forward hooks and
wrappers; the baseline trial is left out of the per-trial figures (it also scores a second seed
set for the noise estimate).

    python benchmarks/trial_profile.py [--trials 4] [--samples 1000] [--batch-size 250]
    python benchmarks/trial_profile.py --pipeline tiny       # a text-to-image pipeline (tiny SD on CPU)
    python benchmarks/trial_profile.py --pipeline FOLDER --prompts prompts.txt --ref REF

The pipeline case (Euler NFE 6, the --space linear search) adds "text encoding", timed wherever it
happens: it must be 0 inside the trials (prompts are embedded once, when the worker loads the
pipeline), and the VAE decode is its own line ("decode").
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from skipsearch.metrics import fid as fid_module
from skipsearch.search import StudyConfig, StudyStore, WorkerOptions, prepare_studies, run_worker

PARTS = ("network", "decode", "features", "fid math", "storage + sampler", "text encoding", "other")


class Clock:
    def __init__(self) -> None:
        self.spent: collections.Counter[str] = collections.Counter()
        self.trial_start: float | None = None
        self.per_trial: list[dict[str, float]] = []

    def wrap(self, part: str, fn):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[part] += time.perf_counter() - start

        return timed

    def hook(self, module: torch.nn.Module, part: str) -> None:
        starts: list[float] = []
        module.register_forward_pre_hook(lambda m, a: starts.append(time.perf_counter()))

        def after(m, a, out):  # type: ignore[no-untyped-def]
            self.spent[part] += time.perf_counter() - starts.pop()

        module.register_forward_hook(after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--pipeline", help="a text-to-image pipeline folder, or 'tiny' (written here, random weights)")
    parser.add_argument("--prompts", help="with --pipeline FOLDER: the prompts file")
    parser.add_argument("--ref", default="builtin:edm-digits", help="with --pipeline FOLDER: reference statistics")
    parser.add_argument("--features", default="skipsearch-digits", help="with --pipeline: the feature extractor")
    args = parser.parse_args()

    clock = Clock()
    folder = Path(tempfile.mkdtemp(prefix="trial-profile-"))
    url = f"sqlite:///{folder / 'profile.db'}"
    if args.pipeline:
        config = pipeline_config(args, folder)
    else:
        [config] = StudyConfig.from_preset("demo", trials=args.trials, samples=args.samples,
                                           batch_size=args.batch_size, pruner="none",
                                           artifacts=str(folder / "artifacts"))
    prepare_studies(url, [config])

    # Storage and sampler: every call the worker makes into Optuna goes through the store.
    store_call = StudyStore.__call__
    StudyStore.__call__ = lambda self, fn, *a, **k: clock.wrap("storage + sampler", store_call)(self, fn, *a, **k)
    fid_module.fid_from_statistics = clock.wrap("fid math", fid_module.fid_from_statistics)
    fid_module.FeatureMoments.update = clock.wrap("fid math", fid_module.FeatureMoments.update)

    # Network, decode and feature passes: hooks on what the worker loads, once.
    hooked: set[int] = set()

    def loaded(target, scorer) -> None:  # type: ignore[no-untyped-def]
        if id(target.net) not in hooked:
            hooked.add(id(target.net))
            clock.hook(target.net, "network")
            clock.hook(scorer.extractor, "features")

    @contextmanager
    def timed_trial(number: int):  # type: ignore[no-untyped-def]
        before = dict(clock.spent)
        start = time.perf_counter()
        yield
        wall = time.perf_counter() - start
        parts = {p: clock.spent[p] - before.get(p, 0.0) for p in PARTS[:-1]}
        parts["other"] = wall - sum(parts.values())
        parts["wall"] = wall
        clock.per_trial.append(parts)

    # EDM's RGB conversion (or a VAE for latent networks) is the recipe's decoder: time it there.
    import skipsearch.scoring as scoring

    scoring.to_uint8 = clock.wrap("decode", scoring.to_uint8)
    if args.pipeline:
        from skipsearch.models import pipelines

        pipelines.PipelineDecoder.__call__ = clock.wrap("decode", pipelines.PipelineDecoder.__call__)
        pipelines.TextEncoders.embed = clock.wrap("text encoding", pipelines.TextEncoders.embed)
    run_worker(url, None, WorkerOptions(on_loaded=loaded, around_trial=timed_trial), log=lambda m: None)

    kind = f"pipeline {config.model_name} ({config.prompt_count} prompts, CFG {config.cfg:g})" if args.pipeline else "demo"
    print(f"{kind} trial profile: {config.solver} NFE {config.nfe}, {config.samples} samples, batch {config.batch_size}, "
          f"{torch.get_num_threads()} threads")
    inside = sum(p["text encoding"] for p in clock.per_trial)
    print(f"text encoding: {clock.spent['text encoding'] - inside:.3f} s at load, {inside:.3f} s inside the trials")
    print(f"{'trial':>5} {'wall s':>7} " + " ".join(f"{p:>18}" for p in PARTS))
    for i, parts in enumerate(clock.per_trial):
        shares = " ".join(f"{parts[p]:8.3f} s {100 * parts[p] / parts['wall']:5.1f}%" for p in PARTS)
        print(f"{i:>5} {parts['wall']:7.2f} {shares}{'  (baseline: also the noise re-score)' if i == 0 else ''}")
    search = clock.per_trial[1:] or clock.per_trial
    wall = sum(p["wall"] for p in search)
    passes = sum(p["network"] + p["features"] for p in search)
    print(f"network + feature passes: {100 * passes / wall:.1f}% of the non-baseline trials' time (goal ≥ 97%)")


def pipeline_config(args: argparse.Namespace, folder: Path) -> StudyConfig:
    """A --space linear study of a pipeline folder; 'tiny' writes the tests' tiny Stable Diffusion."""
    source, prompts = args.pipeline, args.prompts
    if source == "tiny":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from sd_pipeline import write_prompts, write_tiny_sd

        source, prompts = str(write_tiny_sd(folder / "tiny-sd")), str(write_prompts(folder / "prompts.txt"))
    if not prompts:
        raise SystemExit("--pipeline FOLDER needs --prompts FILE")
    [config] = StudyConfig.from_preset(None, nfe=[6], checkpoint=source, model="diffusers", prompts=prompts,
                                       reference=args.ref, features=args.features, solver="euler",
                                       trials=args.trials, samples=args.samples,
                                       batch_size=min(args.batch_size, 50), pruner="none",
                                       artifacts=str(folder / "artifacts"))
    return config


if __name__ == "__main__":
    main()
