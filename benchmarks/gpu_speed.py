"""GPU speed path, measured in one run (called by benchmarks/gpu_check.sh; ≤ 8 minutes on one GPU).

1. images/s of one denoiser evaluation of the released ImageNet-64 ADM configuration (random
   weights, 296 M parameters) in fp32 (TF32 on), fp16 (EDM's own path), bf16 (autocast), each with
   and without channels_last, and compiled (fp16 + channels_last, per-block torch.compile), at
   batch 64 and 256. CUDA events; warm-up first.
2. skip-tuned / untuned time on the GPU (fp16, channels_last, batch 256, ρ linear 1.0 → 0.8).
3. proxy FID of the demo model in fp16 vs fp32 (Euler NFE 10, 1,000 samples), against the
   proxy's seed noise (the fp32 baseline on a second seed set).
4. Stable Diffusion 1.5 sized UNet2DConditionModel (random weights, 860 M parameters, 64×64×4
   latents, 77×768 text context): images/s of one guided denoiser evaluation (the CFG pair as one
   batch of 2B, fp16 autocast as a search runs it), and of the SD VAE decoder (512×512, fp16). Needs
   diffusers; skipped without it.

    python benchmarks/gpu_speed.py [--quick]      # --quick: a small network, for a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from skipsearch import SkipSchedule, load_network, skip_sites, skip_tuned
from skipsearch.models.edm import EDMPrecond
from skipsearch.recipe import SamplingRecipe
from skipsearch.scoring import make_scorer
from skipsearch.target import Target

ARCH = Path(__file__).resolve().parent.parent / "tests" / "data" / "edm-architectures.json"


def adm(quick: bool) -> EDMPrecond:
    kwargs = json.loads(ARCH.read_text())["edm-imagenet-64x64-cond-adm"]["constructor_kwargs"]
    if quick:
        kwargs = dict(kwargs, model_channels=32, img_resolution=16, label_dim=10)
    torch.manual_seed(0)
    return EDMPrecond(**kwargs).eval().requires_grad_(False)


def timed(fn, device: torch.device, reps: int) -> float:  # type: ignore[no-untyped-def]
    """Median seconds of one call, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward(net: EDMPrecond, batch: int, device: torch.device, precision: str, channels_last: bool):  # type: ignore[no-untyped-def]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, net.img_channels, net.img_resolution, net.img_resolution, device=device).to(memory_format=fmt)
    sigma = torch.full([batch], 2.5, device=device)
    labels = torch.eye(net.label_dim, device=device)[torch.arange(batch, device=device) % net.label_dim]

    def call() -> None:
        with torch.inference_mode():
            if precision == "bf16":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    net(x, sigma, labels)
            else:
                net(x, sigma, labels)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small network and sample count (CPU smoke run)")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    batches = (8, 16) if args.quick else (64, 256)
    reps = 2 if args.quick else args.reps

    net = adm(args.quick).to(device)
    rows: list[tuple[str, int, float]] = []
    variants = [("fp32", False), ("fp32", True), ("fp16", False), ("fp16", True), ("bf16", False), ("bf16", True)]
    for batch in batches:
        for precision, channels_last in variants:
            if device.type == "cpu" and precision != "fp32":
                continue  # half precision on a CPU is slower, not faster: the speed path is GPU-only
            net.use_fp16 = precision == "fp16"
            net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            seconds = timed(forward(net, batch, device, precision, channels_last), device, reps)
            rows.append((f"{precision}{' channels_last' if channels_last else ''}", batch, batch / seconds))
    if not args.no_compile:
        net.use_fp16 = device.type == "cuda"
        net.to(memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
        start = time.perf_counter()
        Target("adm", net, skip_sites(net)).compile()
        for batch in batches:
            seconds = timed(forward(net, batch, device, "fp16", device.type == "cuda"), device, reps)
            rows.append((f"{'fp16 channels_last' if device.type == 'cuda' else 'fp32'} compiled", batch, batch / seconds))
        print(f"compile (per-block) + first calls: {time.perf_counter() - start:.0f} s")

    print(f"{'variant':<26} {'batch':>5} {'images/s':>10} {'vs fp32':>8}")
    base = {b: r for v, b, r in rows if v == "fp32"}
    for variant, batch, rate in rows:
        print(f"{variant:<26} {batch:>5} {rate:>10.1f} {rate / base[batch]:>7.2f}x")

    # Skip-tuned / untuned on the fastest eager setting.
    net = adm(args.quick).to(device)
    net.use_fp16 = device.type == "cuda"
    cl = device.type == "cuda"
    net.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
    call = forward(net, batches[-1], device, "fp16" if cl else "fp32", cl)
    schedule = SkipSchedule.linear(len(skip_sites(net)), 1.0, 0.8)
    ratios = []
    for _ in range(5):
        plain = timed(call, device, reps)
        with skip_tuned(net, schedule):
            tuned = timed(call, device, reps)
        ratios.append(tuned / plain)
    print(f"skip-tuned / untuned time at batch {batches[-1]}: {statistics.median(ratios):.3f} (median of 5 pairs)")

    # Proxy FID in half vs full precision on the demo model.
    demo = load_network("builtin:edm-digits", device=device)
    scorer = make_scorer(demo, device=device)
    samples = 200 if args.quick else 1000

    def fid(precision: str, start: int = 0) -> float:
        recipe = SamplingRecipe(solver="euler", nfe=10, batch_size=250, precision=precision)
        return list(scorer.iter_fid(demo, range(start, start + samples), recipe))[-1][1]

    full = fid("fp32")
    noise = abs(fid("fp32", 1_000_000) - full)
    half = "fp16" if device.type == "cuda" else "bf16"
    reduced = fid(half)
    print(f"demo proxy FID ({samples} samples): fp32 {full:.3f}, {half} {reduced:.3f}, |difference| "
          f"{abs(reduced - full):.3f} vs seed noise {noise:.3f} ({'within' if abs(reduced - full) < noise else 'OUTSIDE'})")

    stable_diffusion_rates(args.quick, device, reps)


def stable_diffusion_rates(quick: bool, device: torch.device, reps: int) -> None:
    try:
        from diffusers import AutoencoderKL, UNet2DConditionModel
    except ImportError:
        print("Stable Diffusion UNet: skipped (pip install 'skipsearch[pipelines]')")
        return
    torch.manual_seed(0)
    if quick:
        unet = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                                    cross_attention_dim=32, attention_head_dim=4,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        vae = AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
        context_dim, batches = 32, (2, 4)
    else:  # diffusers' defaults are SD 1.x's UNet but for the text width
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        context_dim, batches = 768, (8, 16)
    unet = unet.to(device).eval().requires_grad_(False)
    vae = vae.to(device).eval().requires_grad_(False)
    size = unet.config.sample_size
    half = device.type == "cuda"
    print(f"Stable Diffusion UNet: {sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M parameters, "
          f"{size}×{size}×4 latents, {'fp16 autocast' if half else 'fp32'}")
    for batch in batches:
        x = torch.randn(2 * batch, 4, size, size, device=device)
        t = torch.full([2 * batch], 500.0, device=device)
        context = torch.randn(2 * batch, 77, context_dim, device=device)
        z = torch.randn(batch, 4, size, size, device=device)

        def guided() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=half):
                unet(x, t, encoder_hidden_states=context)

        def decode() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=half):
                vae.decode(z)

        print(f"  batch {batch:>3}: {batch / timed(guided, device, reps):8.1f} images/s per guided evaluation "
              f"(UNet batch {2 * batch}), VAE decode {batch / timed(decode, device, reps):8.1f} images/s")


if __name__ == "__main__":
    main()
