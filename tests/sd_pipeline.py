"""A tiny Stable Diffusion pipeline folder, built here from random weights (nothing downloaded): a
UNet2DConditionModel on 8×8×4 latents, an AutoencoderKL (16×16 RGB images), a CLIP text encoder and a
CLIP tokenizer over a vocabulary written here (letters and a few words)."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

PROMPTS = ["a red cat", "the blue sea", "a tree", "the sun at dawn", "a dog in snow"]


def _vocabulary(folder: Path) -> tuple[Path, Path, dict[str, int]]:
    tokens = list(string.ascii_lowercase) + [c + "</w>" for c in string.ascii_lowercase]
    tokens += ["th", "the</w>", "re", "red</w>", "<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\nr e\nre d</w>\n")
    return folder / "vocab.json", folder / "merges.txt", vocab


def _vae_and_scheduler(timestep_spacing: str, prediction_type: str = "epsilon") -> tuple[Any, Any]:
    """A 16×16 RGB AutoencoderKL over 8×8×4 latents, and SD's Euler scheduler."""
    import diffusers

    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8), latent_channels=4,
        norm_num_groups=4, sample_size=16, layers_per_block=1)
    scheduler = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                                 beta_schedule="scaled_linear", timestep_spacing=timestep_spacing,
                                                 prediction_type=prediction_type)
    return vae.eval(), scheduler


def write_tiny_sd(folder: Path, seed: int = 0, *, timestep_spacing: str = "linspace",
                  prediction_type: str = "epsilon") -> Path:
    """SD 1.x's layout; `prediction_type="v_prediction"` as SD 2.x's 768 models."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    vocab_file, merges_file, vocab = _vocabulary(folder.parent / f"{folder.name}-vocab")
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=12)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=12, projection_dim=8, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])).eval()
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae, scheduler = _vae_and_scheduler(timestep_spacing, prediction_type)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                             unet=unet.eval(), scheduler=scheduler, safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def write_prompts(path: Path, prompts: list[str] = PROMPTS) -> Path:
    path.write_text("\n".join(prompts) + "\n")
    return path


def write_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """The SDXL layout: two CLIP text encoders (the second with a projection: the pooled embedding),
    two tokenizers, a UNet with SDXL's size-and-crop conditioning ("text_time")."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    vocab_file, merges_file, vocab = _vocabulary(folder.parent / f"{folder.name}-vocab")
    text_config = dict(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=12, projection_dim=8,
                       bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                       pad_token_id=vocab["<|endoftext|>"])
    tokenizers = [CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=12) for _ in range(2)]
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, cross_attention_dim=16, attention_head_dim=2, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae, scheduler = _vae_and_scheduler("linspace")
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)).eval(),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text_config)).eval(), tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1], unet=unet.eval(), scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
