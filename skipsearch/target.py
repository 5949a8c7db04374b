"""What a search evaluates: a network named by a model family and checkpoint, with its identity.

The search and the CLI reach networks only through here: `resolve_source` turns CLI-level
(--model, --checkpoint) into a loadable source with a clear error naming the valid choices, and a
`Target` carries the loaded network with what a study records about it (name, sha256, skip sites,
its own proxy-FID defaults for built-ins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ScheduleFileError, UsageError
from .models.builtin import builtin_info
from .registry import BUILTIN_PREFIX
from .models.vae import LatentCodec, LatentDecoder, load_vae
from .models.loading import checkpoint_sha256, load_network, model_choices, model_name, resolve_model_source
from .prompts import Prompts
from .recipe import SamplingRecipe
from .sampling import recipe_sigma_list, resolve_precision
from .schedule import SkipSchedule, SkipSite
from .schedule_file import ScheduleDocument, ScheduleEntry
from .skiptune import find_unet, site_paths, skip_sites

__all__ = ["Target", "load_target", "resolve_source", "source_name", "source_sha256", "model_choices", "pipeline_variant",
           "BUILTIN_PREFIX"]


def resolve_source(model: str, checkpoint: str | Path | None = None) -> str:
    """`builtin:NAME` or a checkpoint path, from --model (a family or builtin:NAME) and --checkpoint."""
    return resolve_model_source(model, checkpoint)


def pipeline_variant(source: str) -> str:
    """sd1, sd2 or sdxl for a text-to-image pipeline folder, "" for any other network (reads two small
    JSON files; an unsupported pipeline is refused in one line)."""
    if source.startswith(BUILTIN_PREFIX):
        return ""
    from .models.pipelines import pipeline_variant as variant

    return variant(Path(source))


def source_name(source: str) -> str:
    return model_name(source)


def source_sha256(source: str) -> str:
    return checkpoint_sha256(source)


@dataclass
class Target:
    source: str
    net: nn.Module
    sites: list[SkipSite] = field(default_factory=list)

    @property
    def name(self) -> str:
        return model_name(self.source)

    @cached_property
    def sha256(self) -> str:
        return checkpoint_sha256(self.source)

    @property
    def default_features(self) -> str | None:
        info = builtin_info(self.net)
        return info.features if info else None

    @property
    def default_reference(self) -> str | None:
        info = builtin_info(self.net)
        return info.reference if info else None

    @property
    def resolution(self) -> int:
        return int(self.net.img_resolution)

    @cached_property
    def unet_path(self) -> str:
        unet = find_unet(self.net)
        return next(name for name, module in self.net.named_modules() if module is unet)

    def site_info(self) -> list[dict[str, object]]:
        """Each skip site in the network's own terms (module paths), for a schedule's consumers."""
        # Paths start at the object a user holds: the denoiser for EDM/EDM2 pickles, the UNet itself
        # for a diffusers folder (our wrapper around it names its UNet `native_root`).
        root = getattr(self.net, "native_root", "")
        path = self.unet_path
        if root and (path == root or path.startswith(f"{root}.")):
            path = path[len(root) + 1:]
        prefix = f"{path}." if path else ""
        return [{"index": s.index, "resolution": s.resolution, "channels": s.channels,
                 "block": f"{prefix}{block}", "encoder": f"{prefix}{encoder}"}
                for s, (block, encoder) in zip(self.sites, site_paths(find_unet(self.net)), strict=True)]

    def sigmas(self, recipe: SamplingRecipe) -> list[float]:
        """The σ steps `recipe` takes on this network (a grid is clamped to the network's σ range)."""
        return recipe_sigma_list(recipe, self.net)

    def precision(self, requested: str, device: str | torch.device) -> str:
        """The precision this network samples in on `device` (`auto` resolved; see sampling)."""
        return resolve_precision(requested, self.net, device)

    @property
    def pipeline(self) -> bool:
        """A text-to-image pipeline: prompt-conditioned, decoded by its own VAE."""
        return callable(getattr(self.net, "set_prompts", None))

    @property
    def latent(self) -> bool:
        """Its samples are VAE latents (EDM2 img512, a pipeline's), decoded before features see them."""
        return self.pipeline or LatentCodec.of(self.net).kind == "vae"

    def decoder(self, vae: str | None, device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What turns this network's samples into uint8 images: None (EDM's RGB conversion) for a pixel
        network; for a latent one, the VAE decoder loaded from the local folder `vae` (a pipeline's own)."""
        if self.pipeline:
            if vae is not None:
                raise CheckpointError(f"{self.source} decodes with its pipeline's own VAE: drop --vae {vae}")
            from .models.pipelines import PipelineDecoder

            return PipelineDecoder(self.net.vae, upcast=self.net.variant == "sdxl")
        if not self.latent:
            if vae is not None:
                raise CheckpointError(f"{self.source} samples images, not VAE latents: drop --vae {vae}")
            return None
        if vae is None:
            codec = LatentCodec.of(self.net)
            raise CheckpointError(f"{self.source} samples VAE latents: give --vae, the local folder of {codec.vae_name} "
                                  "(diffusers save_pretrained layout); nothing is downloaded")
        return LatentDecoder(load_vae(vae, device), LatentCodec.of(self.net))

    def compile(self, backend: str = "inductor") -> None:
        """torch.compile each encoder and decoder block's own forward, leaving the skip-scaling
        hooks (which run in the block's call, outside its forward) eager: the compiled graphs serve
        every schedule, so a search compiles once (minutes, up front) and never again."""
        import torch._dynamo

        unet = find_unet(self.net)
        blocks = [b for b in [*unet.enc.values(), *unet.dec.values()] if not getattr(b, "_skipsearch_compiled", False)]
        # One cache entry per block instance at most: keep Dynamo from giving up after the default 8.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, len(blocks) + 8)
        for block in blocks:
            block.forward = torch.compile(block.forward, dynamic=False, backend=backend)
            block.__dict__["_skipsearch_compiled"] = True

    def check_finite(self, sigma: float = 1.0) -> None:
        """One untuned evaluation on seeded noise: a damaged checkpoint (NaN or infinite weights)
        is refused before a study is created, not discovered trial after trial."""
        net = self.net
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        generator = torch.Generator(device).manual_seed(0)
        shape = [2, int(net.img_channels), self.resolution, self.resolution]
        x = torch.randn(shape, generator=generator, device=device) * sigma
        labels = None
        if int(getattr(net, "label_dim", 0)):
            labels = torch.eye(int(net.label_dim), device=device)[[0, 1 % int(net.label_dim)]]
        with torch.inference_mode():
            out = net(x, torch.full([2], sigma, device=device), labels)
        if not bool(torch.isfinite(out).all()):
            raise CheckpointError(f"{self.source}: the network gives non-finite output (NaN or inf) for ordinary input; "
                                  "the checkpoint is damaged")

    def linear_schedule(self, rho_top: float, rho_bottom: float = 1.0, curve: float = 0.0) -> SkipSchedule:
        return SkipSchedule.linear(len(self.sites), rho_top, rho_bottom, curve)

    def entries(self, doc: ScheduleDocument, *, nfe: int | None = None, solver: str | None = None) -> list[ScheduleEntry]:
        """The file's schedules for this network: filed under its name (or its sha256), with one ρ per
        site, and never one exported for a different checkpoint that happens to share the name."""
        found = doc.select(model=self.name, nfe=nfe, solver=solver) or doc.select(model=self.sha256, nfe=nfe, solver=solver)
        if not found:
            doc.entry(model=self.name, nfe=nfe, solver=solver)  # raises, listing what the file holds
        for entry in found:
            if entry.model_sha256 and entry.model_sha256.lower() != self.sha256:
                raise ScheduleFileError(
                    f"schedule {entry.label} was exported for a different checkpoint (sha256 {entry.model_sha256[:12]}…, "
                    f"this one is {self.sha256[:12]}…); use a schedule searched on this network"
                )
            entry.check_num_skips(len(self.sites))
        return found


def load_target(source: str, device: str | torch.device = "cpu", prompts: Prompts | None = None) -> Target:
    """The network in `source` on `device`; a text-to-image pipeline embeds `prompts` once here."""
    net = load_network(source, device=device)
    if prompts is not None:
        if not callable(getattr(net, "set_prompts", None)):
            raise UsageError(f"{source} is not a text-to-image pipeline: it takes no prompts")
        net.set_prompts(prompts)
    return Target(source, net, skip_sites(net))
