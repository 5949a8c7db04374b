"""EDM networks (Karras et al. 2022), written from the published architecture facts (ARCHITECTURE.md).

State-dict compatible with NVlabs EDM's released checkpoints: what must match is kept exactly —
module names (`enc`/`dec` entries such as `32x32_block2`, `map_noise`, `norm0`, `qkv`), parameter
and buffer names and shapes, the order entries run in — so a snapshot's tensors load unchanged.
Everything else (the table-driven walk, the resampling helpers, the block's structure) is this
project's own. Only what sampling needs is here (no dropout at inference, no training-time label
dropout); `EDMPrecond` is the only preconditioning. Skip-Tuning is applied from outside
(skipsearch.skiptune), by structure, as for NVlabs' own objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "Linear",
    "Conv2d",
    "GroupNorm",
    "PositionalEmbedding",
    "FourierEmbedding",
    "UNetBlock",
    "SongUNet",
    "DhariwalUNet",
    "EDMPrecond",
    "MODEL_TYPES",
    "edm_precondition",
]


def _init_weight(shape: Sequence[int], fan_in: int, fan_out: int, mode: str) -> torch.Tensor:
    """Random init; only the distribution's scale matters here (real weights come from checkpoints)."""
    if mode == "xavier_uniform":
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == "kaiming_normal":
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f"unknown init mode {mode!r}")


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "xavier_uniform") -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(_init_weight([out_features, in_features], in_features, out_features, init_mode))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)
        return x


def _resample_kernel(taps: Sequence[float]) -> torch.Tensor:
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Conv2d(nn.Module):
    """Square conv with optional 2x FIR up/down-sampling; kernel 0 means resample only."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused_resample: bool = False,
        init_mode: str = "xavier_uniform",
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("Conv2d cannot both upsample and downsample")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        fan_in, fan_out = in_channels * kernel * kernel, out_channels * kernel * kernel
        self.weight = (
            nn.Parameter(_init_weight([out_channels, in_channels, kernel, kernel], fan_in, fan_out, init_mode))
            if kernel
            else None
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        self.register_buffer("resample_filter", _resample_kernel(resample_filter) if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) if self.weight is not None else None
        taps = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        if taps is not None and weight is not None and self.fused_resample:
            x = _fused_up(x, weight, taps) if self.up else _fused_down(x, weight, taps)
        else:
            if taps is not None:
                x = _upsample(x, taps) if self.up else _downsample(x, taps)
            if weight is not None:
                x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


# 2× FIR resampling, one filter per channel (depthwise); `taps` is the normalised 2-D filter [1,1,L,L].
def _pad(kernel: torch.Tensor) -> int:
    return (kernel.shape[-1] - 1) // 2


def _upsample(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    return F.conv_transpose2d(x, (taps * 4).tile([channels, 1, 1, 1]), stride=2, padding=_pad(taps), groups=channels)


def _downsample(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    return F.conv2d(x, taps.tile([channels, 1, 1, 1]), stride=2, padding=_pad(taps), groups=channels)


def _fused_up(x: torch.Tensor, weight: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Upsample, then convolve, with the two paddings merged (the pair crops what a separate pad adds)."""
    channels, filter_pad, weight_pad = x.shape[1], _pad(taps), weight.shape[-1] // 2
    x = F.conv_transpose2d(x, (taps * 4).tile([channels, 1, 1, 1]), stride=2, padding=max(filter_pad - weight_pad, 0),
                           groups=channels)
    return F.conv2d(x, weight, padding=max(weight_pad - filter_pad, 0))


def _fused_down(x: torch.Tensor, weight: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Convolve at full resolution with both paddings, then downsample the result (NCSN++'s residual input)."""
    x = F.conv2d(x, weight, padding=weight.shape[-1] // 2 + _pad(taps))
    channels = x.shape[1]
    return F.conv2d(x, taps.tile([channels, 1, 1, 1]), stride=2, groups=channels)


class GroupNorm(nn.Module):
    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class PositionalEmbedding(nn.Module):
    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    def __init__(self, num_channels: int, scale: float = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        self.num_heads = 0 if not attention else (num_heads if num_heads is not None else out_channels // channels_per_head)
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1)
            self.proj = Conv2d(out_channels, out_channels, kernel=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shortcut = self.skip(x) if self.skip is not None else x
        out = (self._residual(x, emb) + shortcut) * self.skip_scale
        return self._attend(out) if self.num_heads else out

    def _residual(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """norm → SiLU → conv (resampling here), the noise embedding (scale and shift, or added),
        norm → SiLU → conv; dropout is the identity when sampling."""
        h = self.conv0(F.silu(self.norm0(x)))
        conditioning = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = conditioning.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + conditioning))
        return self.conv1(F.dropout(h, p=self.dropout, training=self.training))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over positions, its softmax in float32, added back residually."""
        n, c, height, width = x.shape
        head = c // self.num_heads
        q, k, v = self.qkv(self.norm2(x)).reshape(n * self.num_heads, head, 3, height * width).unbind(2)
        logits = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(head)).float())  # scaled first, as EDM
        mixed = torch.einsum("nqk,nck->ncq", logits.softmax(dim=2).to(q.dtype), v)
        return (self.proj(mixed.reshape(n, c, height, width)) + x) * self.skip_scale


# -- the UNet walk ------------------------------------------------------------------------------
# A pass keeps the main features `x`, the skip stack, and for NCSN++-style networks a second,
# image-like signal (`image`): the input image carried down the encoder level by level ("skip" and
# "residual" encoders), or the output image built up level by level ("skip" decoder). Each entry of
# `enc`/`dec` is registered with the step it takes; only the entry names are NVlabs' (the
# checkpoints' keys), the walk itself is table-driven.


@dataclass
class _Pass:
    x: torch.Tensor
    emb: torch.Tensor
    image: torch.Tensor | None
    skips: list[torch.Tensor] = field(default_factory=list)
    head: torch.Tensor | None = None  # normalised features waiting for their output conv


Step = Callable[[_Pass, nn.Module], None]


def _push(p: _Pass, entry: nn.Module) -> None:
    p.x = entry(p.x, p.emb) if isinstance(entry, UNetBlock) else entry(p.x)
    p.skips.append(p.x)


def _downsample_image(p: _Pass, entry: nn.Module) -> None:
    p.image = entry(p.image)


def _add_image(p: _Pass, entry: nn.Module) -> None:
    """'skip' encoder: the level's image, projected, is added to the features just pushed."""
    p.x = p.skips[-1] = p.x + entry(p.image)


def _merge_image(p: _Pass, entry: nn.Module) -> None:
    """'residual' encoder: features and the downsampled image averaged (variance-preserving), and
    the result carried on as the next level's image."""
    p.x = p.skips[-1] = p.image = (p.x + entry(p.image)) / math.sqrt(2)


def _pop(p: _Pass, entry: nn.Module) -> None:
    """A decoder block takes the top skip when its input is wider than the running features (the
    rule skipsearch.skiptune reads from the structure too)."""
    if p.x.shape[1] != entry.in_channels:
        p.x = torch.cat([p.x, p.skips.pop()], dim=1)
    p.x = entry(p.x, p.emb)


def _normalise_head(p: _Pass, entry: nn.Module) -> None:
    p.head = entry(p.x)


def _emit_image(p: _Pass, entry: nn.Module) -> None:
    out = entry(F.silu(p.head))
    p.image = out if p.image is None else out + p.image


# Steps by name: what a network records of its walk is plain data (it pickles like its weights).
STEPS: dict[str, Step] = {step.__name__.lstrip("_"): step for step in (
    _push, _downsample_image, _add_image, _merge_image, _pop, _normalise_head, _emit_image)}


class _SkipUNet(nn.Module):
    """Encoder entries push, decoder entries pop: the part SongUNet and DhariwalUNet share."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[str, str] = {}  # "enc.NAME" / "dec.NAME" -> the step that entry takes

    def _encoder(self, name: str, entry: nn.Module, step: Step = _push) -> None:
        self.enc[name] = entry
        self.steps[f"enc.{name}"] = step.__name__.lstrip("_")

    def _decoder(self, name: str, entry: nn.Module, step: Step = _pop) -> None:
        self.dec[name] = entry
        self.steps[f"dec.{name}"] = step.__name__.lstrip("_")

    def _pushed_channels(self) -> list[int]:
        return [entry.out_channels for name, entry in self.enc.items() if self.steps[f"enc.{name}"] == "push"]

    def _walk(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        down = _Pass(x, emb, image=x)
        for name, entry in self.enc.items():
            STEPS[self.steps[f"enc.{name}"]](down, entry)
        up = _Pass(down.x, emb, image=None, skips=down.skips)
        for name, entry in self.dec.items():
            STEPS[self.steps[f"dec.{name}"]](up, entry)
        return up.x if up.image is None else up.image


def _tag(resolution: int) -> str:
    return f"{resolution}x{resolution}"


class SongUNet(_SkipUNet):
    """DDPM++ (positional embedding, standard encoder) and NCSN++ (Fourier, residual encoder)
    backbones of Song et al., as EDM's `-vp` and `-ve` checkpoints hold them."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[int] = (1, 1),
    ) -> None:
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', not {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', not {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', not {decoder_type!r}")
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_width, noise_width = model_channels * channel_mult_emb, model_channels * channel_mult_noise

        def block(width_in: int, width_out: int, **kind: Any) -> UNetBlock:
            return UNetBlock(width_in, width_out, emb_channels=emb_width, num_heads=1, dropout=dropout,
                             skip_scale=math.sqrt(0.5), eps=1e-6, resample_filter=resample_filter,
                             resample_proj=True, adaptive_scale=False, **kind)

        self.map_noise = (PositionalEmbedding(noise_width, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_width))
        self.map_label = Linear(label_dim, noise_width) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_width, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_width, emb_width)
        self.map_layer1 = Linear(emb_width, emb_width)

        widths = [model_channels * m for m in channel_mult]
        deepest = len(widths) - 1
        self.enc = nn.ModuleDict()
        width, image_width = model_channels, in_channels
        for level, level_width in enumerate(widths):
            tag, attention = _tag(img_resolution >> level), (img_resolution >> level) in attn_resolutions
            if level == 0:
                self._encoder(f"{tag}_conv", Conv2d(in_channels, width, kernel=3))
            else:
                self._encoder(f"{tag}_down", block(width, width, down=True))
                if encoder_type == "skip":
                    self._encoder(f"{tag}_aux_down", Conv2d(image_width, image_width, kernel=0, down=True,
                                                             resample_filter=resample_filter), _downsample_image)
                    self._encoder(f"{tag}_aux_skip", Conv2d(image_width, width, kernel=1), _add_image)
                elif encoder_type == "residual":
                    self._encoder(f"{tag}_aux_residual", Conv2d(image_width, width, kernel=3, down=True,
                                                                 resample_filter=resample_filter,
                                                                 fused_resample=True), _merge_image)
                    image_width = width
            for i in range(num_blocks):
                self._encoder(f"{tag}_block{i}", block(width, level_width, attention=attention))
                width = level_width

        skip_widths = self._pushed_channels()
        self.dec = nn.ModuleDict()
        for level in range(deepest, -1, -1):
            tag, attention = _tag(img_resolution >> level), (img_resolution >> level) in attn_resolutions
            if level == deepest:
                self._decoder(f"{tag}_in0", block(width, width, attention=True))
                self._decoder(f"{tag}_in1", block(width, width))
            else:
                self._decoder(f"{tag}_up", block(width, width, up=True))
            for i in range(num_blocks + 1):  # the last block of a level attends where the level does
                self._decoder(f"{tag}_block{i}", block(width + skip_widths.pop(), widths[level],
                                                       attention=attention and i == num_blocks))
                width = widths[level]
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < deepest:
                    self._decoder(f"{tag}_aux_up", Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                          resample_filter=resample_filter), _downsample_image)
                self._decoder(f"{tag}_aux_norm", GroupNorm(width, eps=1e-6), _normalise_head)
                self._decoder(f"{tag}_aux_conv", Conv2d(width, out_channels, kernel=3), _emit_image)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # sin half first
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError("this network is class-conditional: pass class_labels")
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        return self._walk(x, emb)


class DhariwalUNet(_SkipUNet):
    """ADM backbone of Dhariwal & Nichol (the EDM ImageNet-64 network)."""

    def __init__(
        self,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_resolution = img_resolution
        self.label_dropout = label_dropout
        emb_width = model_channels * channel_mult_emb

        def block(width_in: int, width_out: int, **kind: Any) -> UNetBlock:
            return UNetBlock(width_in, width_out, emb_channels=emb_width, channels_per_head=64, dropout=dropout, **kind)

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_width)
        self.map_layer1 = Linear(emb_width, emb_width)
        self.map_label = Linear(label_dim, emb_width, bias=False, init_mode="kaiming_normal") if label_dim else None

        widths = [model_channels * m for m in channel_mult]
        deepest = len(widths) - 1
        self.enc = nn.ModuleDict()
        width = widths[0]
        for level, level_width in enumerate(widths):
            tag, attention = _tag(img_resolution >> level), (img_resolution >> level) in attn_resolutions
            if level == 0:
                self._encoder(f"{tag}_conv", Conv2d(in_channels, width, kernel=3))
            else:
                self._encoder(f"{tag}_down", block(width, width, down=True))
            for i in range(num_blocks):
                self._encoder(f"{tag}_block{i}", block(width, level_width, attention=attention))
                width = level_width

        skip_widths = self._pushed_channels()
        self.dec = nn.ModuleDict()
        for level in range(deepest, -1, -1):
            tag, attention = _tag(img_resolution >> level), (img_resolution >> level) in attn_resolutions
            if level == deepest:
                self._decoder(f"{tag}_in0", block(width, width, attention=True))
                self._decoder(f"{tag}_in1", block(width, width))
            else:
                self._decoder(f"{tag}_up", block(width, width, up=True))
            for i in range(num_blocks + 1):  # every block of a level attends where the level does
                self._decoder(f"{tag}_block{i}", block(width + skip_widths.pop(), widths[level], attention=attention))
                width = widths[level]
        self.out_norm = GroupNorm(width)
        self.out_conv = Conv2d(width, out_channels, kernel=3)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            if class_labels is None:
                raise ValueError("this network is class-conditional: pass class_labels")
            emb = emb + self.map_label(class_labels)
        features = self._walk(x, F.silu(emb))
        return self.out_conv(F.silu(self.out_norm(features)))


def edm_precondition(
    x: torch.Tensor, sigma: torch.Tensor | float, class_labels: torch.Tensor | None, label_dim: int, sigma_data: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """EDM's preconditioning, shared by EDM and EDM2 (Karras et al. 2022, table 1): float32 inputs,
    σ as a column, class labels as a batch (zeros when a conditional net gets none), and the
    (c_skip, c_out, c_in) scalings of D(x; σ) = c_skip·x + c_out·F(c_in·x; ln(σ)/4)."""
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
    if label_dim == 0:
        class_labels = None
    elif class_labels is None:
        # Not "unconditional": a zero class embedding, broadcast over the batch.
        class_labels = torch.zeros([1, label_dim], device=x.device)
    else:
        class_labels = class_labels.to(torch.float32).reshape(-1, label_dim)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    return x, sigma, class_labels, (c_skip, c_out, c_in)


MODEL_TYPES: dict[str, type[_SkipUNet]] = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


class EDMPrecond(nn.Module):
    """EDM preconditioning: D(x; σ) = c_skip·x + c_out·F(c_in·x, ln(σ)/4)."""

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = False,
        sigma_min: float = 0.0,
        sigma_max: float = float("inf"),
        sigma_data: float = 0.5,
        model_type: str = "DhariwalUNet",
        **model_kwargs: Any,
    ) -> None:
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {model_type!r}; expected one of {sorted(MODEL_TYPES)}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model_type = model_type
        self.init_kwargs: dict[str, Any] = dict(
            img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, use_fp16=use_fp16,
            sigma_min=sigma_min, sigma_max=sigma_max, sigma_data=sigma_data, model_type=model_type, **model_kwargs,
        )
        self.model = MODEL_TYPES[model_type](
            img_resolution=img_resolution, in_channels=img_channels, out_channels=img_channels, label_dim=label_dim,
            **model_kwargs,
        )

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        x, sigma, class_labels, (c_skip, c_out, c_in) = edm_precondition(
            x, sigma, class_labels, self.label_dim, self.sigma_data)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if use_half else torch.float32
        c_noise = sigma.log() / 4
        F_x = self.model((c_in * x).to(dtype), c_noise.flatten(), class_labels=class_labels, **model_kwargs)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(sigma)
