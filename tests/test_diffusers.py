"""diffusers UNets: as search targets (a saved UNet2DModel folder) and as consumers of exported
schedules (UNet2DModel and UNet2DConditionModel, alone and inside a stock pipeline). Every network
is a tiny random one built here; nothing is downloaded."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from skipsearch import SkipSchedule, load_schedules, skip_sites  # noqa: E402
from skipsearch.errors import ScheduleError, ScheduleFileError  # noqa: E402
from skipsearch.integrations.diffusers import apply_schedule, install_schedule, timestep_sigma, unet_sites  # noqa: E402
from skipsearch.models.diffusers import DiffusersDenoiser, sigma_table, sigma_to_t  # noqa: E402


def tiny_unet2d(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                  norm_num_groups=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4)
    config.update(overrides)
    return diffusers.UNet2DModel(**config).eval()


def tiny_unet2d_condition(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


def explicit_skip_scaling(unet: torch.nn.Module, rho: list[float]) -> list[Any]:
    """The reference: wrap each up block so the skip tensors handed to it are multiplied by their
    site's ρ before the block concatenates them (site = push position: conv_in first)."""
    remaining = len(rho)
    originals = []
    for block in unet.up_blocks:
        n = len(block.resnets)
        first = remaining - n
        remaining = first
        original = block.forward

        def forward(*args: Any, _original: Any = original, _first: int = first, **kwargs: Any) -> Any:
            key = "res_hidden_states_tuple"
            res = kwargs[key] if key in kwargs else args[1]
            scaled = tuple(r * rho[_first + k] for k, r in enumerate(res))
            if key in kwargs:
                kwargs[key] = scaled
            else:
                args = (args[0], scaled, *args[2:])
            return _original(*args, **kwargs)

        block.forward = forward
        originals.append((block, original))
    assert remaining == 0
    return originals


def restore(originals: list[Any]) -> None:
    for block, original in originals:
        block.forward = original


def run_unet(unet: torch.nn.Module, x: torch.Tensor, t: Any, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return unet(x, t, **kwargs).sample


CONDITION = {"encoder_hidden_states": torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3))}


@pytest.mark.parametrize("build,channels,extra", [(tiny_unet2d, 3, {}), (tiny_unet2d_condition, 4, CONDITION)],
                         ids=["UNet2DModel", "UNet2DConditionModel"])
def test_rho_scales_exactly_the_skip_tensors(build: Any, channels: int, extra: dict[str, Any]) -> None:
    unet = build()
    sites = unet_sites(unet)
    assert len(sites) == 4 and all(s.startswith("up_blocks.") and ".resnets." in s for s in sites)
    x = torch.randn(2, channels, 8, 8, generator=torch.Generator().manual_seed(1))
    stock = run_unet(unet, x, 500, **extra)

    with apply_schedule(unet, SkipSchedule([1.0] * len(sites))):
        assert torch.equal(run_unet(unet, x, 500, **extra), stock)  # ρ = 1: bit-identical, no hooks at all

    rng = random.Random(7)
    for _ in range(3):
        rho = [round(rng.uniform(0.3, 1.3), 3) for _ in sites]
        with apply_schedule(unet, SkipSchedule(rho)):
            tuned = run_unet(unet, x, 500, **extra)
        originals = explicit_skip_scaling(unet, rho)
        try:
            reference = run_unet(unet, x, 500, **extra)
        finally:
            restore(originals)
        assert torch.allclose(tuned, reference, rtol=0, atol=1e-6), (tuned - reference).abs().max()
        assert not torch.allclose(tuned, stock, atol=1e-4)
    assert torch.equal(run_unet(unet, x, 500, **extra), stock)  # restored


def test_sites_follow_push_order_with_their_channels() -> None:
    unet = tiny_unet2d()
    sites = skip_sites(unet)
    assert [s.producer for s in sites] == ["conv_in", "down_blocks.0.resnets.0", "down_blocks.0.downsamplers.0",
                                           "down_blocks.1.resnets.0"]
    assert [s.consumer for s in sites] == ["up_blocks.1.resnets.1", "up_blocks.1.resnets.0", "up_blocks.0.resnets.1",
                                           "up_blocks.0.resnets.0"]
    assert [s.channels for s in sites] == [8, 8, 8, 16]
    assert [s.resolution for s in sites] == [8, 8, 4, 4]


def test_install_schedule_keeps_it_until_removed_and_refuses_nesting() -> None:
    unet = tiny_unet2d()
    x = torch.randn(1, 3, 8, 8)
    stock = run_unet(unet, x, 10)
    handle = install_schedule(unet, SkipSchedule([0.5, 1.0, 1.0, 0.8]))
    tuned = run_unet(unet, x, 10)
    assert not torch.equal(tuned, stock) and torch.equal(run_unet(unet, x, 10), tuned)
    with pytest.raises(ScheduleError, match="nesting"):
        install_schedule(unet, SkipSchedule([0.9] * 4))
    handle.remove()
    assert torch.equal(run_unet(unet, x, 10), stock)


def test_timestep_sigma_matches_the_search_wrappers_sigma_table() -> None:
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    table = sigma_table(scheduler.alphas_cumprod)
    sigma_from = timestep_sigma(scheduler.alphas_cumprod)
    for t in (0, 1, 250, 999):
        assert torch.allclose(sigma_from((None, torch.tensor(t)), {}), table[t:t + 1])
        assert torch.allclose(sigma_from((None,), {"timestep": t}), table[t:t + 1])
    fractional = torch.tensor([0.5, 17.25, 998.9], dtype=torch.float64)
    assert torch.allclose(sigma_to_t(sigma_from((None, fractional), {}), table), fractional, atol=1e-6)


def test_sigma_window_follows_the_pipeline_timesteps() -> None:
    """In a stock DDIM pipeline, a window covering no step changes nothing; one covering every
    step equals the unwindowed schedule; one covering the noisy half differs from both."""
    unet = tiny_unet2d()
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def images() -> torch.Tensor:
        out = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
        return torch.as_tensor(out.images)

    stock = images()
    rho = [0.6, 0.9, 1.0, 0.7]
    with apply_schedule(unet, SkipSchedule(rho)):
        everywhere = images()
    table = sigma_table(scheduler.alphas_cumprod)
    with apply_schedule(unet, SkipSchedule(rho, (float(table[0]), float(table[-1]))), scheduler=scheduler):
        assert torch.equal(images(), everywhere)
    with apply_schedule(unet, SkipSchedule(rho, (1e3, 2e3)), scheduler=scheduler):
        assert torch.equal(images(), stock)
    with apply_schedule(unet, SkipSchedule(rho, (2.0, float(table[-1]))), scheduler=scheduler):
        half = images()
    assert not torch.equal(half, stock) and not torch.equal(half, everywhere)
    with pytest.raises(ScheduleError, match="scheduler=pipe.scheduler"):
        with apply_schedule(unet, SkipSchedule(rho, (2.0, 10.0))):
            pass


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # inside diffusers
def test_a_continuous_time_euler_scheduler_is_read_as_log_sigma() -> None:
    """EulerDiscreteScheduler(timestep_type="continuous") passes ln(σ)/4, not an index: a σ window
    must still fire exactly at the steps whose σ lies in it."""
    scheduler = diffusers.EulerDiscreteScheduler(timestep_type="continuous", prediction_type="v_prediction")
    scheduler.set_timesteps(5)
    unet = tiny_unet2d()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    rho = [0.5, 1.0, 1.0, 1.0]
    inside = [1.0 <= s <= 20.0 for s in scheduler.sigmas[:-1].tolist()]
    assert inside == [False, True, True, False, False]  # σ ≈ 157, 17.3, 3.4, 0.96, 0.01
    for t, expected_inside in zip(scheduler.timesteps, inside):
        stock = run_unet(unet, x, t)
        with apply_schedule(unet, SkipSchedule(rho)):
            tuned = run_unet(unet, x, t)
        with apply_schedule(unet, SkipSchedule(rho, (1.0, 20.0)), scheduler=scheduler):
            windowed = run_unet(unet, x, t)
        assert torch.equal(windowed, tuned if expected_inside else stock)


def test_a_schedule_for_another_network_is_refused(tmp_path: Path) -> None:
    from skipsearch import ScheduleEntry, dump_schedules

    unet = tiny_unet2d()
    entry = ScheduleEntry(model_family="diffusers", model_name="other", solver="euler", nfe=4, rho=(0.5, 1, 1, 1),
                          sigma_min=None, sigma_max=None, time_exponent=None,
                          sites=[{"index": i, "resolution": 8, "channels": 8, "encoder": "conv_in",
                                  "block": "up_blocks.9.resnets.0" if i == 2 else block}
                                 for i, block in enumerate(unet_sites(unet))])
    path = tmp_path / "schedules.json"
    dump_schedules([entry], path)
    with pytest.raises(ScheduleError, match="different network"):
        install_schedule(unet, path)
    with pytest.raises(ScheduleFileError, match="network has 2 skip sites"):
        install_schedule(tiny_unet2d(layers_per_block=1, block_out_channels=(8,), down_block_types=("DownBlock2D",),
                                     up_block_types=("UpBlock2D",)), entry)


def save_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny-ddpm"
    unet = tiny_unet2d(seed=5)
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    return folder


def test_the_denoiser_wraps_the_unet_on_its_sigma_table(tmp_path: Path) -> None:
    from skipsearch import load_network

    folder = save_folder(tmp_path)
    net = load_network(str(folder))
    assert isinstance(net, DiffusersDenoiser) and net.img_resolution == 8 and net.img_channels == 3
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    x0 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = 300
    sigma = float(sigma_table(scheduler.alphas_cumprod)[t])
    x = x0 + sigma * eps  # the VE view of x_t = √ᾱ x0 + √(1 − ᾱ) ε, scaled by 1/√ᾱ
    with torch.no_grad():
        denoised = net(x, torch.tensor(sigma))
        predicted_eps = net.unet(x / (sigma**2 + 1) ** 0.5, t).sample
    assert torch.allclose(denoised, x - sigma * predicted_eps, atol=1e-5)


@pytest.mark.slow
def test_a_search_runs_on_a_saved_folder_and_the_pipeline_applies_its_export(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole loop: `launch` on a UNet2DModel folder, export, then a stock DDIMPipeline built
    from the same folder applies the exported file through the integration."""
    from typer.testing import CliRunner

    from skipsearch.cli import app

    folder = save_folder(tmp_path)
    monkeypatch.chdir(tmp_path)  # the artifacts folder
    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "schedules.json"
    result = runner.invoke(app, ["launch", "--checkpoint", str(folder), "--model", "diffusers", "--nfe", "3",
                                 "--solver", "euler", "--samples", "16", "--batch-size", "8", "--trials", "3",
                                 "--features", "skipsearch-digits", "--ref", "builtin:edm-digits",
                                 "--storage", url, "--confirm-top", "0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["export", "--storage", url, "--output", str(out)])
    assert result.exit_code == 0, result.output
    doc = load_schedules(out)
    entry = doc.entries[0]
    assert entry.model_family == "diffusers"
    assert [s["block"] for s in entry.sites] == unet_sites(diffusers.UNet2DModel.from_pretrained(folder / "unet"))
    assert json.loads(out.read_text())["schedules"][0]["model"]["sha256"]

    pipe = diffusers.DDIMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    with apply_schedule(pipe.unet, out, scheduler=pipe.scheduler, nfe=3):
        image = pipe(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                     output_type="np").images
    assert image.shape == (1, 8, 8, 3)


def test_folders_it_cannot_wrap_are_refused_in_one_line(tmp_path: Path) -> None:
    from skipsearch import load_network
    from skipsearch.errors import CheckpointError

    folder = save_folder(tmp_path)
    config_path = folder / "scheduler" / "scheduler_config.json"
    ddpm = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000,
                                       "sigma_min": 0.01, "sigma_max": 1348.0}))
    with pytest.raises(CheckpointError, match="without a discrete β schedule"):  # not DDPM's defaults
        load_network(str(folder))
    config_path.write_text(json.dumps(dict(ddpm, _class_name="EulerDiscreteScheduler", timestep_type="continuous")))
    with pytest.raises(CheckpointError, match="without a discrete β schedule"):
        load_network(str(folder))
    config_path.write_text(json.dumps(ddpm))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(folder / "unet" / "part-1.safetensors")
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    for weight_map, needle in [({"a": "part-1.safetensors", "b": 2}, "not a mapping of tensor names to file names"),
                               (["part-1.safetensors"], "not a mapping of tensor names to file names"),
                               ({"a": "../part-1.safetensors"}, "a shard outside its folder")]:
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(CheckpointError, match=needle):
            load_network(str(folder))
    (folder / "unet" / "config.json").write_text("{\n")
    with pytest.raises(CheckpointError, match="cannot read the UNet config"):
        load_network(str(folder))


def test_a_steps_schedule_in_a_diffusers_euler_loop_equals_the_projects_euler(tmp_path: Path) -> None:
    """The same UNet folder, σ list, noise and ρ: diffusers' EulerDiscreteScheduler, fed
    `schedule_steps` and wrapped by `apply_schedule`, gives the project's own euler images.

    Tolerance 2e-4 (images in about [-1, 1]): diffusers holds σ and timesteps in float32 while the
    project's solver works in float64; measured 3e-5. The controls differ by > 100× that: the
    same loop on EDM's steps, and the same steps without the schedule's ρ."""
    from skipsearch import ScheduleEntry, load_network, sample, skip_sites
    from skipsearch.integrations.diffusers import schedule_steps
    from skipsearch.models.diffusers import folder_sha256
    from skipsearch.skiptune import site_paths
    from skipsearch.steps import TimeSteps, edm_sigma_list

    folder = save_folder(tmp_path)
    net = load_network(str(folder))
    sigmas = TimeSteps(sigma_min=0.05, sigma_max=60.0, time_exponent=4.0, warp=(0.8, -0.6)).sigma_list(6)
    sites = [{"index": s.index, "resolution": s.resolution, "channels": s.channels, "block": block, "encoder": enc}
             for s, (block, enc) in zip(skip_sites(net), site_paths(net.unet))]
    entry = ScheduleEntry(model_family="diffusers", model_name=folder.name, model_sha256=folder_sha256(folder),
                          solver="euler", nfe=6, rho=(0.55, 0.7, 0.85, 1.0), sigma_min=0.05, sigma_max=60.0,
                          time_exponent=4.0, warp=(0.8, -0.6), sigmas=sigmas, sites=sites)
    seeds = [11, 12]
    with torch.no_grad():
        ours = sample(net, seeds, schedule=entry).float()
    noise = torch.stack([torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])

    unet = diffusers.UNet2DModel.from_pretrained(folder / "unet").eval()
    # "linspace" spacing starts from noise·σ_max as the project does; DDPM's "leading" starts from
    # noise·√(σ_max² + 1) (diffusers' convention for it), 0.007% more here, 0.03 in the images.
    scheduler = diffusers.EulerDiscreteScheduler.from_pretrained(folder / "scheduler", timestep_spacing="linspace")

    def pipeline_euler(step_args: dict[str, Any], schedule: Any = None) -> torch.Tensor:
        scheduler.set_timesteps(**step_args)
        x = noise * scheduler.init_noise_sigma
        with torch.no_grad():
            if schedule is None:
                for t in scheduler.timesteps:
                    x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
                return x
            with apply_schedule(unet, schedule, scheduler=scheduler):
                for t in scheduler.timesteps:
                    x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
        return x

    step_args = schedule_steps(scheduler, entry)
    assert step_args == {"sigmas": sigmas}
    theirs = pipeline_euler(step_args, entry)
    gap = (ours - theirs).abs().max().item()
    print(f"\ndiffusers Euler vs project euler, max |Δ| = {gap:.2e}")
    assert gap < 2e-4, gap
    on_edm_steps = pipeline_euler({"sigmas": edm_sigma_list(6, 0.05, 60.0)}, entry)
    without_rho = pipeline_euler(step_args)
    assert (ours - on_edm_steps).abs().max().item() > 100 * max(gap, 2e-6)
    assert (ours - without_rho).abs().max().item() > 100 * max(gap, 2e-6)


def test_apply_schedule_and_schedule_steps_take_a_family_and_an_nfe(tmp_path: Path) -> None:
    from skipsearch import ScheduleDocument, ScheduleEntry, dump_schedules
    from skipsearch.family import ScheduleFamily
    from skipsearch.integrations.diffusers import schedule_steps

    unet = tiny_unet2d()
    sites = [{"index": i, "resolution": 8, "channels": 8, "block": block, "encoder": "conv_in"}
             for i, block in enumerate(unet_sites(unet))]
    fam = ScheduleFamily(model_name="tiny", model_family="diffusers", solver="euler", space="linear+steps",
                         nfe_range=(4, 12), fit={"rho_top": (0.1, 0.2), "rho_bottom": (1.0, 0.0), "curve": (0.0, 0.0),
                                                 "steps.exponent": (7.0, 0.0), "steps.crowd_high": (0.5, 0.0),
                                                 "steps.crowd_low": (0.0, 0.0)},
                         bounds={}, studies=[], sites=sites, sigma_min=0.02, sigma_max=80.0)
    path = tmp_path / "family.json"
    dump_schedules(ScheduleDocument([], "2026-12-01T00:00:00Z", families=[fam]), path)
    at7 = ScheduleEntry(**fam.entry_fields(7))
    scheduler = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000)
    assert schedule_steps(scheduler, path, nfe=7) == {"sigmas": list(at7.sigmas)}
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with apply_schedule(unet, path, nfe=7, check_model=False):
        tuned = run_unet(unet, x, 10)
    with apply_schedule(unet, at7.schedule, check_model=False):
        expected = run_unet(unet, x, 10)
    assert torch.equal(tuned, expected) and not torch.equal(tuned, run_unet(unet, x, 10))
    with pytest.raises(ScheduleFileError, match="outside"):
        install_schedule(unet, path, nfe=20, check_model=False)
