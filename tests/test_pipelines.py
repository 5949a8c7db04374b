"""Text-to-image pipelines: a tiny Stable Diffusion folder written here (tests/sd_pipeline.py), sampled
by skipsearch and by diffusers' own StableDiffusionPipeline on the same seeds and prompts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from helpers import run_cli, trials_of  # noqa: E402
from sd_pipeline import PROMPTS, write_prompts, write_tiny_sd  # noqa: E402

from skipsearch import ScheduleEntry, load_network, load_schedules, sample, skip_sites  # noqa: E402
from skipsearch.errors import CheckpointError, UsageError  # noqa: E402
from skipsearch.integrations.diffusers import apply_schedule, schedule_steps  # noqa: E402
from skipsearch.models.diffusers import folder_sha256  # noqa: E402
from skipsearch.prompts import read_prompts  # noqa: E402
from skipsearch.schedule import FreeU, SkipSchedule  # noqa: E402
from skipsearch.steps import TimeSteps  # noqa: E402

SEEDS = [3, 4, 5, 6, 7, 8]  # six seeds over five prompts: prompt s mod 5, one prompt twice


@pytest.fixture(scope="module")
def sd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sd")
    return write_tiny_sd(root / "tiny-sd"), write_prompts(root / "prompts.txt")


@pytest.fixture(scope="module")
def net(sd: tuple[Path, Path]) -> Any:
    folder, prompts = sd
    network = load_network(str(folder))
    network.set_prompts(read_prompts(prompts))
    return network


@pytest.fixture(scope="module")
def pipe(sd: tuple[Path, Path]) -> Any:
    diffusers.utils.logging.disable_progress_bar()
    pipeline = diffusers.StableDiffusionPipeline.from_pretrained(sd[0], safety_checker=None,
                                                                 requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _entry(folder: Path, net: Any, rho: float, freeu: dict[str, float] | None) -> ScheduleEntry:
    steps = TimeSteps(sigma_min=net.sigma_min, sigma_max=net.sigma_max, time_exponent=5.0, warp=(0.4, -0.3))
    return ScheduleEntry(model_family="diffusers", model_name=folder.name, model_sha256=folder_sha256(folder),
                         solver="euler", nfe=6, rho=tuple([rho] * len(skip_sites(net))), sigma_min=net.sigma_min,
                         sigma_max=net.sigma_max, time_exponent=5.0, warp=(0.4, -0.3), sigmas=steps.sigma_list(6),
                         freeu=freeu)


def _theirs(pipe: Any, entry: ScheduleEntry, *, rho: bool, freeu: bool) -> torch.Tensor:
    """StableDiffusionPipeline's latents for SEEDS: the same noise, prompt s mod P, CFG 7.5, the
    entry's σ list; ρ through apply_schedule, FreeU through the pipeline's own enable_freeu."""
    noise = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in SEEDS])
    prompts = [PROMPTS[s % len(PROMPTS)] for s in SEEDS]
    if freeu:
        pipe.enable_freeu(**entry.freeu)
    else:
        pipe.disable_freeu()
    call = dict(prompt=prompts, latents=noise, guidance_scale=7.5, output_type="latent",
                **schedule_steps(pipe.scheduler, entry))
    try:
        with torch.no_grad():
            if not rho:
                return pipe(**call).images
            with apply_schedule(pipe.unet, dataclasses.replace(entry, freeu=None), scheduler=pipe.scheduler):
                return pipe(**call).images
    finally:
        pipe.disable_freeu()


def test_the_pipeline_loads_as_a_prompted_denoiser(net: Any) -> None:
    assert type(net).__name__ == "PromptedDenoiser"
    assert (net.label_dim, net.img_channels, net.variant, len(skip_sites(net))) == (5, 4, "sd1", 4)
    assert net.text is None, "the text encoders are released once the prompts are embedded"


def test_freeu_equals_diffusers_enable_freeu_output_for_output(sd: tuple[Path, Path]) -> None:
    """The same UNet call with skipsearch's FreeU hooks and with diffusers' enable_freeu: equal."""
    unet = diffusers.UNet2DConditionModel.from_pretrained(sd[0] / "unet").eval()
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    context = torch.randn(3, 12, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([900.0, 400.0, 20.0])
    sites = len(skip_sites(unet))
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=context).sample
        for factors in ({"b1": 1.5, "b2": 1.6, "s1": 0.9, "s2": 0.2}, {"b1": 0.7, "b2": 1.2, "s1": 0.3, "s2": 1.4}):
            unet.enable_freeu(**factors)
            theirs = unet(x, t, encoder_hidden_states=context).sample
            unet.disable_freeu()
            with apply_schedule(unet, SkipSchedule([1.0] * sites, freeu=FreeU(**factors))):
                ours = unet(x, t, encoder_hidden_states=context).sample
            assert (ours - theirs).abs().max().item() <= 1e-6, factors
            assert (ours - plain).abs().max().item() > 1e-2, "FreeU changed nothing: the test would prove nothing"
        after = unet(x, t, encoder_hidden_states=context).sample
    assert torch.equal(after, plain), "the hooks are removed on exit"


@pytest.mark.parametrize("case", ["rho", "freeu", "both"])
def test_stable_diffusion_pipeline_reproduces_what_skipsearch_samples(sd: tuple[Path, Path], net: Any, pipe: Any,
                                                                      case: str) -> None:
    """skipsearch's euler on a PromptedDenoiser (what a trial scores) against diffusers'
    StableDiffusionPipeline with EulerDiscreteScheduler, same seeds, prompts and σ list.

    Tolerance 5e-4 on latents of size ~10: diffusers keeps σ in float32, the project's solver works
    in float64 (measured about 1e-4). The control (the pipeline without the schedule) differs by
    more than 100× that."""
    freeu = {"s1": 0.9, "s2": 0.2, "b1": 1.5, "b2": 1.6} if case != "rho" else None
    entry = _entry(sd[0], net, 0.6 if case != "freeu" else 1.0, freeu)
    with torch.no_grad():
        ours = sample(net, SEEDS, schedule=entry).float()
    theirs = _theirs(pipe, entry, rho=case != "freeu", freeu=case != "rho")
    gap = (ours - theirs).abs().max().item()
    print(f"\n{case}: StableDiffusionPipeline vs skipsearch, max |Δ| = {gap:.2e} (latents up to "
          f"{ours.abs().max().item():.1f})")
    assert gap < 5e-4, gap
    control = _theirs(pipe, entry, rho=False, freeu=False)
    assert (ours - control).abs().max().item() > 100 * max(gap, 5e-6)


def test_apply_schedule_refuses_freeu_twice(sd: tuple[Path, Path], net: Any, pipe: Any) -> None:
    entry = _entry(sd[0], net, 1.0, {"s1": 0.9, "s2": 0.2, "b1": 1.5, "b2": 1.6})
    pipe.enable_freeu(**entry.freeu)
    try:
        with pytest.raises(Exception, match="FreeU enabled already"):
            with apply_schedule(pipe.unet, entry):
                pass
    finally:
        pipe.disable_freeu()


def test_the_pipeline_decoder_is_the_pipelines_own_vae_decode(sd: tuple[Path, Path], net: Any, pipe: Any) -> None:
    from skipsearch.models.pipelines import PipelineDecoder

    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 2
    ours = PipelineDecoder(net.vae)(latents.double())
    with torch.no_grad():
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    theirs = pipe.image_processor.postprocess(decoded, output_type="pt") * 255
    assert ours.shape == (3, 3, 16, 16)
    assert (ours.float() - theirs).abs().max().item() <= 0.5 + 1e-3  # ours rounds to uint8 levels


def test_prompts_files_lines_json_and_coco(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "b.json").write_text(json.dumps(["a cat", "a dog"]))
    (tmp_path / "c.json").write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "a cat"},
                                                                 {"image_id": 2, "caption": "a dog"}]}))
    read = [read_prompts(tmp_path / name) for name in ("a.txt", "b.json", "c.json")]
    assert [p.texts for p in read] == [("a cat", "a dog")] * 3
    assert len({p.sha256 for p in read}) == 1, "the fingerprint is of the prompts, not of the file's format"
    assert read_prompts(tmp_path / "a.txt", negative="blurry").key != read[0].key
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(UsageError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")


def test_a_pickle_weight_file_in_a_pipeline_is_refused(tmp_path: Path) -> None:
    import pickle

    folder = write_tiny_sd(tmp_path / "sd")
    weights = next((folder / "text_encoder").glob("*.safetensors"))
    weights.unlink()

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("code ran",))

    (folder / "text_encoder" / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(CheckpointError) as caught:
        load_network(str(folder))
    assert "\n" not in str(caught.value)


# -- end to end: launch on the pipeline folder in real processes, export, reproduce in diffusers ------


@pytest.mark.slow
@pytest.mark.parametrize("space", ["linear", "freeu"])
def test_launch_on_a_pipeline_folder_exports_what_the_pipeline_reproduces(sd: tuple[Path, Path], net: Any,
                                                                           pipe: Any, tmp_path: Path,
                                                                           space: str) -> None:
    folder, prompts = sd
    url = f"sqlite:///{tmp_path / 's.db'}"
    launch = run_cli("launch", "--checkpoint", str(folder), "--prompts", str(prompts), "--ref", "builtin:edm-digits",
                  "--features", "skipsearch-digits", "--nfe", "6", "--solver", "euler", "--space", space,
                  "--samples", "16", "--batch-size", "8", "--trials", "4", "--confirm-top", "1",
                  "--confirm-samples", "16", "--storage", url, "--device", "cpu", cwd=tmp_path)
    assert launch.returncode == 0, launch.stdout + launch.stderr
    assert "tiny-sd/euler/nfe6" in launch.stdout
    if space == "freeu":  # FreeU's published SD 1.x factors follow the baseline
        assert "b1=1.5 b2=1.6 s1=0.9 s2=0.2" in launch.stdout, launch.stdout
    out = tmp_path / "schedules.json"
    export = run_cli("export", "--storage", url, "-o", str(out), cwd=tmp_path)
    assert export.returncode == 0, export.stdout + export.stderr
    assert run_cli("validate", str(out), cwd=tmp_path).returncode == 0
    raw = json.loads(out.read_text())
    [row] = raw["schedules"]
    assert row["conditioning"] == {"prompts": 5, "prompts_sha256": read_prompts(prompts).sha256,
                                   "negative_prompt": None, "cfg": 7.5}
    assert raw["format"] == "skipsearch.schedules/v1.3"
    entry = load_schedules(out).entries[0]
    if space == "freeu":
        assert set(row["freeu"]) == {"b1", "b2", "s1", "s2"} and row["rho"] == [1.0] * 4
        pipe.enable_freeu(**row["freeu"])  # what a user does with the block, as is
    with torch.no_grad():
        ours = sample(net, SEEDS, schedule=entry).float()
    noise = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in SEEDS])
    call = dict(prompt=[PROMPTS[s % len(PROMPTS)] for s in SEEDS], latents=noise, guidance_scale=row["conditioning"]["cfg"],
                output_type="latent", **schedule_steps(pipe.scheduler, out))
    try:
        with torch.no_grad():
            if space == "freeu":
                theirs = pipe(**call).images
            else:
                with apply_schedule(pipe.unet, out, scheduler=pipe.scheduler):
                    theirs = pipe(**call).images
    finally:
        pipe.disable_freeu()
    assert (ours - theirs).abs().max().item() < 5e-4
    if space == "freeu":  # sampling it on other prompts is allowed (held-out prompts), and said
        other = tmp_path / "other.txt"
        other.write_text("a green frog\n")
        grid = run_cli("sample", "--checkpoint", str(folder), "--prompts", str(other), "--schedule", str(out),
                       "--count", "2", "-o", str(tmp_path / "grid.png"), cwd=tmp_path)
        assert grid.returncode == 0 and "other prompts than the schedule was searched with" in grid.stderr, grid.stderr
        assert "FreeU s1=" in grid.stdout and (tmp_path / "grid.png").is_file()


def test_an_sdxl_pipeline_samples_as_stable_diffusion_xl_does(tmp_path: Path) -> None:
    """SDXL's two text encoders (penultimate hidden states concatenated, the second's pooled
    projection), size-and-crop time ids at the folder's default size, zero negative embeddings and
    CFG 5: skipsearch's euler against StableDiffusionXLPipeline, same seeds, prompts and σ list."""
    from sd_pipeline import write_tiny_sdxl

    from skipsearch.steps import edm_sigma_list

    folder = write_tiny_sdxl(tmp_path / "tiny-sdxl")
    network = load_network(str(folder))
    network.set_prompts(read_prompts(write_prompts(tmp_path / "prompts.txt")))
    assert (network.variant, network.cfg) == ("sdxl", 5.0)
    seeds = SEEDS[:3]
    sigmas = edm_sigma_list(6, network.sigma_min, network.sigma_max)
    with torch.no_grad():
        ours = sample(network, seeds, solver="euler", nfe=6, sigmas=sigmas).float()
        xl = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
        xl.set_progress_bar_config(disable=True)
        noise = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
        theirs = xl(prompt=[PROMPTS[s % len(PROMPTS)] for s in seeds], latents=noise, guidance_scale=5.0,
                    output_type="latent", sigmas=sigmas).images
        other = xl(prompt=[PROMPTS[(s + 1) % len(PROMPTS)] for s in seeds], latents=noise, guidance_scale=5.0,
                   output_type="latent", sigmas=sigmas).images
    gap = (ours - theirs).abs().max().item()
    assert gap < 5e-4, gap
    assert (ours - other).abs().max().item() > 100 * max(gap, 5e-6), "the prompts must matter for the test to hold"


def test_dpm_solver_in_diffusers_is_close_to_the_searched_dpmpp_2m(sd: tuple[Path, Path], net: Any) -> None:
    """The sd15 preset searches dpmpp_2m; diffusers' DPMSolverMultistepScheduler (0.42) takes no σ
    list, so `schedule_steps` gives it the nearest training timesteps. Its images are then close to
    the search's, not equal (measured: max |Δ| 0.14 to 0.24 on latents up to 58 at NFE 6 to 20),
    and far closer than another solver's (Euler: 2 to 6)."""
    folder, _ = sd
    steps = TimeSteps(sigma_min=net.sigma_min, sigma_max=net.sigma_max)
    entry = dataclasses.replace(_entry(folder, net, 0.9, None), solver="dpmpp_2m", time_exponent=7.0, warp=(0.0, 0.0),
                                sigmas=steps.sigma_list(6))
    with torch.no_grad():
        ours = sample(net, SEEDS, schedule=entry).float()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in SEEDS])
    prompts = [PROMPTS[s % len(PROMPTS)] for s in SEEDS]
    gaps = {}
    for name, scheduler in (("dpm", diffusers.DPMSolverMultistepScheduler.from_config(
            pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")),
                            ("euler", diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config))):
        pipe.scheduler = scheduler
        call = schedule_steps(pipe.scheduler, entry)
        with torch.no_grad(), apply_schedule(pipe.unet, entry, scheduler=pipe.scheduler):
            theirs = pipe(prompt=prompts, latents=noise, guidance_scale=7.5, output_type="latent", **call).images
        gaps[name] = (ours - theirs).abs().max().item() / ours.abs().max().item()
        assert set(call) == ({"timesteps"} if name == "dpm" else {"sigmas"})
    assert gaps["dpm"] < 0.01 and gaps["euler"] > 10 * gaps["dpm"], gaps


def test_the_fingerprint_covers_every_part_a_score_depends_on(tmp_path: Path) -> None:
    """A study and an export record the folder's fingerprint, and a worker or `apply_schedule` with
    another one is refused: another VAE, text encoder or tokenizer scores other images, so it counts;
    a safety checker, or a file the pipeline never reads, does not."""
    import shutil

    folder = write_tiny_sd(tmp_path / "tiny-sd")
    before = folder_sha256(folder)
    for part in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        changed = tmp_path / f"changed-{part}"
        shutil.copytree(folder, changed)
        config = next(f for f in sorted((changed / part).iterdir()) if f.suffix in (".json", ".txt"))
        config.write_text(config.read_text() + "\n")
        assert folder_sha256(changed) != folder_sha256(folder), part
    (folder / "safety_checker").mkdir()
    (folder / "safety_checker" / "config.json").write_text("{}")
    (folder / "README.md").write_text("a model card")
    assert folder_sha256(folder) == before


@pytest.mark.slow
def test_a_worker_on_another_node_needs_the_same_prompts(sd: tuple[Path, Path], tmp_path: Path) -> None:
    """A worker reads its node's copy of the prompts file (--prompts): the same prompts at another
    path run the study; different prompts are refused in one line and nothing is scored."""
    folder, prompts = sd
    url = f"sqlite:///{tmp_path / 's.db'}"
    mine = tmp_path / "mine.txt"
    mine.write_text(prompts.read_text())
    launch = run_cli("launch", "--checkpoint", str(folder), "--prompts", str(mine), "--ref", "builtin:edm-digits",
                     "--features", "skipsearch-digits", "--nfe", "4", "--solver", "euler", "--samples", "8",
                     "--batch-size", "8", "--trials", "2", "--confirm-top", "0", "--storage", url, "--no-workers",
                     cwd=tmp_path)
    assert launch.returncode == 0, launch.stdout + launch.stderr
    mine.unlink()  # the launching node's path is gone: workers give their own
    other = tmp_path / "other.txt"
    other.write_text("a green frog\n")
    refused = run_cli("worker", "--storage", url, "--prompts", str(other), cwd=tmp_path)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode != 0 and len(lines) == 1 and "differs" in lines[0], refused.stdout + refused.stderr
    assert not [t for t in trials_of(url, "tiny-sd/euler/nfe4") if t.state.is_finished()]
    copy = tmp_path / "node" / "prompts.txt"
    copy.parent.mkdir()
    copy.write_text(prompts.read_text())
    worker = run_cli("worker", "--storage", url, "--prompts", str(copy), cwd=tmp_path)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert len([t for t in trials_of(url, "tiny-sd/euler/nfe4") if t.state.is_finished()]) == 2


def test_a_v_prediction_pipeline_samples_as_its_pipeline_does(tmp_path: Path) -> None:
    """SD 2.x's 768-pixel models predict v: the same comparison with diffusers' pipeline."""
    from skipsearch.steps import edm_sigma_list

    folder = write_tiny_sd(tmp_path / "tiny-sd-v", prediction_type="v_prediction")
    network = load_network(str(folder))
    network.set_prompts(read_prompts(write_prompts(tmp_path / "prompts.txt")))
    sigmas = edm_sigma_list(6, network.sigma_min, network.sigma_max)
    noise = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in SEEDS])
    with torch.no_grad():
        ours = sample(network, SEEDS, solver="euler", nfe=6, sigmas=sigmas).float()
        pipeline = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                                     requires_safety_checker=False)
        pipeline.set_progress_bar_config(disable=True)
        theirs = pipeline(prompt=[PROMPTS[s % len(PROMPTS)] for s in SEEDS], latents=noise, guidance_scale=7.5,
                          output_type="latent", sigmas=sigmas).images
    assert (ours - theirs).abs().max().item() < 5e-4
