"""Text-to-image pipelines as search targets: a diffusers Stable Diffusion 1.x/2.x or SDXL folder
(`model_index.json`) read without executing code from it, wrapped as a prompt-conditioned denoiser.

- Loading: every component is built from its config and filled by `read_weights` (safetensors, or
  a `.bin` through torch's weights-only loader); tokenizers are data files. Any other pipeline
  class, or a component of another class, is refused in one line.
- Prompts are the denoiser's classes: seed s samples prompt s mod P (`label_rule = "seed"`). Their
  embeddings are computed once, when the prompts are set, and the text encoders are then dropped.
- Classifier-free guidance evaluates the negative and the prompted branch in one batched UNet call
  (the NFE counts that pair once, as diffusers users count steps) and combines them as the
  pipelines do: ε = ε_neg + cfg·(ε_prompt − ε_neg), which is the same combination of D.
- SDXL's pooled text embedding and its size and crop conditioning (the folder's default size, no
  crop) go to the UNet as the SDXL pipeline sends them.
- The pipeline's own VAE decodes samples to images for the feature extractor (`PipelineDecoder`).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UsageError
from ..fileio import read_mapping
from ..prompts import Prompts
from .diffusers import (DiffusersDenoiser, _scheduler_config, build_from_folder, is_diffusers_folder, read_weights,
                        unet_folder_config)

__all__ = ["PIPELINES", "PromptedDenoiser", "PipelineDecoder", "is_pipeline_folder", "load_pipeline", "pipeline_variant"]

PIPELINES = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
_TOKENIZERS = ("CLIPTokenizer", "CLIPTokenizerFast")
_COMPONENTS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "sd": {"unet": ("diffusers", ("UNet2DConditionModel",)), "vae": ("diffusers", ("AutoencoderKL",)),
           "text_encoder": ("transformers", ("CLIPTextModel",)), "tokenizer": ("transformers", _TOKENIZERS)},
    "sdxl": {"unet": ("diffusers", ("UNet2DConditionModel",)), "vae": ("diffusers", ("AutoencoderKL",)),
             "text_encoder": ("transformers", ("CLIPTextModel",)), "tokenizer": ("transformers", _TOKENIZERS),
             "text_encoder_2": ("transformers", ("CLIPTextModelWithProjection",)),
             "tokenizer_2": ("transformers", _TOKENIZERS)},
}
_ENCODE_BATCH = 64


def is_pipeline_folder(path: Path) -> bool:
    """A text-conditioned pipeline folder: a supported class, a text encoder or a conditional UNet.
    An unconditional one (DDPMPipeline and its UNet2DModel) stays with the `diffusers` format."""
    if not (path.is_dir() and (path / "model_index.json").is_file()):
        return False
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # damaged: loading says so in one line
    if not isinstance(index, dict):
        return True
    unet = index.get("unet")
    return (index.get("_class_name") in PIPELINES or any(str(k).startswith("text_encoder") for k in index)
            or "transformer" in index or (isinstance(unet, list) and "UNet2DConditionModel" in unet))


def _quiet() -> Any:
    """transformers and diffusers talk while building models; none of it is the user's business."""
    loggers = [logging.getLogger(name) for name in ("transformers", "diffusers")]
    levels = [logger.level for logger in loggers]

    class Quiet:
        def __enter__(self) -> None:
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.simplefilter("ignore")

        def __exit__(self, *exc: object) -> None:
            self._warnings.__exit__(*exc)
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)

    return Quiet()


def _text_encoder(part: Path, class_name: str) -> nn.Module:
    try:
        import transformers
    except ImportError:
        raise CheckpointError("text-to-image pipelines need transformers for their text encoders: "
                              "pip install 'skipsearch[pipelines]'") from None
    config = {k: v for k, v in read_mapping(part / "config.json", "text encoder config").items() if not k.startswith("_")}
    try:
        with _quiet():
            model = getattr(transformers, class_name)(transformers.CLIPTextConfig(**config))
    except Exception as e:  # noqa: BLE001 - transformers raises many types for a damaged config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot build the {class_name} of {part}: {first}") from None
    tensors = read_weights(part)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        raise CheckpointError(f"{part}: the weights do not fit the config ({len(missing)} missing, {len(wrong)} with "
                              f"the wrong shape, e.g. {(missing or wrong)[0]})")
    model.load_state_dict({k: tensors[k] for k in expected}, strict=True)
    return model.eval().requires_grad_(False)


def _tokenizer(part: Path) -> Any:
    from transformers import CLIPTokenizer

    if not part.is_dir():
        raise CheckpointError(f"{part}: no tokenizer folder")
    try:
        with _quiet():
            return CLIPTokenizer.from_pretrained(str(part), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged tokenizer folder fails in many ways
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read the tokenizer in {part}: {first}") from None


def _check_index(folder: Path) -> tuple[str, dict[str, Any]]:
    index = read_mapping(folder / "model_index.json", "pipeline index")
    cls = index.get("_class_name")
    if cls not in PIPELINES:
        raise CheckpointError(f"{folder}: a {cls!r} pipeline; skipsearch searches {' and '.join(PIPELINES)} folders")
    kind = PIPELINES[cls]
    for name, (library, classes) in _COMPONENTS[kind].items():
        entry = index.get(name)
        if not (isinstance(entry, list) and len(entry) == 2 and entry[1] in classes):
            raise CheckpointError(f"{folder}: component {name} is {entry!r}; a {cls} needs {library} "
                                  f"{' or '.join(classes)}")
    return kind, index


def pipeline_variant(path: Path) -> str:
    """sd1, sd2 or sdxl for a supported pipeline folder, "" for anything else; an unsupported
    pipeline class or component is refused in one line. Reads two small JSON files only."""
    if not is_pipeline_folder(path):
        if path.is_dir() and is_diffusers_folder(path):
            unet_folder_config(path)  # a conditional UNet without its pipeline is refused here
        return ""
    kind, _ = _check_index(path)
    unet = read_mapping(path / "unet" / "config.json", "UNet config")
    return _variant(kind, int(unet.get("cross_attention_dim") or 768))


def _variant(kind: str, cross_attention_dim: int) -> str:
    """sd1, sd2 or sdxl: which published FreeU factors apply (SD 2.x's text width is 1024)."""
    return "sdxl" if kind == "sdxl" else ("sd2" if cross_attention_dim >= 1024 else "sd1")


def load_pipeline(path: str | Path) -> PromptedDenoiser:
    """The pipeline in `path` as a prompt-conditioned denoiser (prompts are set afterwards)."""
    folder = Path(path)
    kind, index = _check_index(folder)
    try:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    except ImportError:
        raise CheckpointError("text-to-image pipelines need diffusers: pip install 'skipsearch[pipelines]'") from None
    unet = build_from_folder(UNet2DConditionModel, folder / "unet", read_mapping(folder / "unet" / "config.json",
                                                                                 "UNet config"))
    vae = build_from_folder(AutoencoderKL, folder / "vae", read_mapping(folder / "vae" / "config.json", "VAE config"))
    scheduler = _scheduler_config(folder)
    if not ({"beta_schedule", "trained_betas"} & set(scheduler)):
        raise CheckpointError(f"{folder}: a {scheduler.get('_class_name')!r} scheduler without a discrete β schedule")
    try:
        table = DDPMScheduler.from_config(scheduler).alphas_cumprod
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for a damaged config
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read the scheduler of {folder}: {first}") from None
    names = ["text_encoder", "text_encoder_2"] if kind == "sdxl" else ["text_encoder"]
    encoders = [_text_encoder(folder / name, index[name][1]) for name in names]
    tokenizers = [_tokenizer(folder / name.replace("text_encoder", "tokenizer")) for name in names]
    text = TextEncoders(kind, encoders, tokenizers, bool(index.get("force_zeros_for_empty_prompt", True)))
    return PromptedDenoiser(unet, table, scheduler.get("prediction_type", "epsilon"), text, vae)


@dataclass
class TextEncoders:
    """A pipeline's tokenizers and text encoders, used once to embed a prompt set."""

    kind: str  # sd or sdxl
    encoders: list[nn.Module]
    tokenizers: list[Any]
    zeros_for_empty_negative: bool = True  # SDXL: no negative prompt means zero embeddings

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(per-token embeddings [N, L, D], pooled embedding [N, P] for SDXL else None)."""
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            ids = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt")
            mask = ids.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
            encoder = encoder.to(device)
            if self.kind == "sdxl":
                out = encoder(ids.input_ids.to(device), attention_mask=mask, output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                if getattr(out, "text_embeds", None) is not None:
                    pooled = out.text_embeds
            else:
                hidden.append(encoder(ids.input_ids.to(device), attention_mask=mask)[0])
        return torch.cat(hidden, dim=-1), pooled


class PromptedDenoiser(DiffusersDenoiser):
    """D(x; σ, prompt) of a Stable Diffusion UNet with classifier-free guidance; the prompt is the
    class label (one-hot over the prompt set). `cfg` is the guidance scale (≤ 1: the prompt alone)."""

    label_rule = "seed"  # seed s → prompt s mod P
    prefers_fp16 = True  # released in fp16 and sampled so by everyone: autocast fp16 on a GPU

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, prediction_type: str, text: TextEncoders,
                 vae: nn.Module) -> None:
        super().__init__(unet, alphas_cumprod, prediction_type)
        self.vae = vae
        self.text: TextEncoders | None = text
        self.variant = _variant(text.kind, int(unet.config.cross_attention_dim))
        self.kind = text.kind
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.label_dim = 0  # until prompts are set
        self.cfg = 7.5 if text.kind == "sd" else 5.0  # the pipelines' usual scales
        self.prompts: Prompts | None = None
        self.register_buffer("cond", torch.zeros(0), persistent=False)
        self.register_buffer("uncond", torch.zeros(0), persistent=False)
        self.register_buffer("pooled", torch.zeros(0), persistent=False)
        self.register_buffer("pooled_uncond", torch.zeros(0), persistent=False)
        self.register_buffer("time_ids", torch.zeros(0), persistent=False)

    @property
    def image_size(self) -> int:
        return self.img_resolution * self.vae_scale_factor

    def set_prompts(self, prompts: Prompts, batch_size: int = _ENCODE_BATCH) -> None:
        """Embed `prompts` (and the negative prompt) once; the text encoders are released afterwards."""
        if self.text is None:
            raise UsageError("this pipeline's prompts are set already (its text encoders were released); load it again")
        device = self.cond.device
        store = torch.float16 if device.type == "cuda" else torch.float32
        parts = [self.text.embed(prompts.texts[i : i + batch_size], device)
                 for i in range(0, len(prompts.texts), batch_size)]
        cond = torch.cat([p[0] for p in parts]).to(store)
        pooled = torch.cat([p[1] for p in parts]).to(store) if parts[0][1] is not None else None
        if self.kind == "sdxl" and prompts.negative is None and self.text.zeros_for_empty_negative:
            uncond = torch.zeros_like(cond[:1])
            pooled_uncond = torch.zeros_like(pooled[:1]) if pooled is not None else None
        else:
            uncond, pooled_uncond = self.text.embed([prompts.negative or ""], device)
            uncond = uncond.to(store)
            pooled_uncond = pooled_uncond.to(store) if pooled_uncond is not None else None
        self.cond, self.uncond = cond, uncond
        if pooled is not None:
            size = self.image_size
            self.pooled, self.pooled_uncond = pooled, pooled_uncond
            self.time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=store, device=device)
        self.label_dim = len(prompts.texts)
        self.prompts = prompts
        self.text = None  # a few hundred MB (SDXL: GBs) that no trial needs

    def _unet_output(self, x_in: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        if self.prompts is None or class_labels is None:
            raise UsageError("a text-to-image pipeline samples prompts: give --prompts FILE (or net.set_prompts)")
        idx = class_labels.argmax(dim=1).to(self.cond.device)
        cond = self.cond[idx]
        guided = self.cfg > 1.0
        n = x_in.shape[0]
        if guided:
            x_in, t = torch.cat([x_in, x_in]), torch.cat([t, t])
            context = torch.cat([self.uncond.expand(n, -1, -1), cond])
        else:
            context = cond
        extra: dict[str, Any] = {}
        if self.pooled.numel():
            pooled = self.pooled[idx]
            if guided:
                pooled = torch.cat([self.pooled_uncond.expand(n, -1), pooled])
            extra["added_cond_kwargs"] = {"text_embeds": pooled.to(torch.float32),
                                          "time_ids": self.time_ids.to(torch.float32).expand(pooled.shape[0], -1)}
        out = self.unet(x_in.to(torch.float32), t.to(torch.float32), encoder_hidden_states=context.to(torch.float32),
                        **extra).sample.to(torch.float32)
        if not guided:
            return out
        negative, prompted = out.chunk(2)
        return negative + self.cfg * (prompted - negative)


class PipelineDecoder:
    """Latents → uint8 images by the pipeline's own VAE, as its image processor does: z/scaling
    (+ shift), decode, (x/2 + ½) clamped to [0, 1], ·255 rounded. In batches of `batch_size`, in fp16 on
    a GPU (fp32 for an SDXL VAE that asks for it: `force_upcast`)."""

    def __init__(self, vae: nn.Module, batch_size: int = 8, upcast: bool = False) -> None:
        self.vae = vae
        self.upcast = upcast  # SDXL's VAE overflows in fp16 (diffusers upcasts it too)
        self.batch_size = batch_size
        self.scaling = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)
        self.shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.vae.parameters()).device
        half = device.type == "cuda" and not (self.upcast and getattr(self.vae.config, "force_upcast", True))
        out = []
        for start in range(0, len(x), self.batch_size):
            z = x[start : start + self.batch_size].to(device, torch.float32) / self.scaling + self.shift
            with torch.autocast("cuda", dtype=torch.float16, enabled=half):
                images = self.vae.decode(z).sample.float()
            out.append(((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8))
        return torch.cat(out)
