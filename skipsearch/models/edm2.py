"""EDM2 networks (Karras et al. 2024, magnitude-preserving UNet), reimplemented from published facts.

Written from the architecture description in the project's EDM2 notes, not from NVlabs' code (which
is CC BY-NC-SA). State-dict compatible with the released `edm2-*.pkl` networks: module names,
parameter names, shapes and their order match, so a snapshot's tensors load unchanged.
Only what sampling needs is here: the training-time in-place weight renormalisation is omitted
(always sample in eval mode); dropout is kept so that `train()` behaves as documented.

Skip-Tuning applies from outside (skipsearch.skiptune), by structure: the UNet holds `enc`/`dec`
ModuleDicts, every encoder entry has an integer `out_channels`, every decoder block an integer
`in_channels`, and a decoder block that consumes a skip receives mp_cat(main, skip) whose trailing
channels are the skip half, so scaling them scales the skip (mp_cat weights each half by a constant).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .edm import edm_precondition

__all__ = [
    "normalize",
    "mp_silu",
    "mp_sum",
    "mp_cat",
    "resample",
    "MPConv",
    "MPFourier",
    "EDM2Block",
    "EDM2UNet",
    "EDM2Precond",
    "EncoderInfo",
    "ENCODER_ATTR",
]

FLAVORS = ("enc", "dec")
ENCODER_ATTR = "skipsearch_encoder"  # where a loaded EDM2 network keeps its EncoderInfo
RESAMPLE_MODES = ("keep", "down", "up")


# --------------------------------------------------------------------------------------------
# Magnitude-preserving primitives


def normalize(x: torch.Tensor, dim: Sequence[int] | int | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Divide by (eps + RMS); the norm is taken in float32 even for half inputs, as EDM2 does."""
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = eps + norm * math.sqrt(norm.numel() / x.numel())
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU rescaled so a unit-variance normal input keeps unit magnitude."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Blend with weight t on `b`, renormalised so two independent unit inputs give a unit output."""
    return ((1 - t) * a + t * b) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenate with `a` first, each half weighted so it carries its share (1−t : t) of the energy.

    The result is a fresh tensor: skiptune scales the trailing `b` half of it in place.
    """
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    wa = c / math.sqrt(na) * (1 - t)
    wb = c / math.sqrt(nb) * t
    return torch.cat([wa * a, wb * b], dim=dim)


def _resample_kernel(taps: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    f = torch.as_tensor(list(taps), dtype=torch.float32, device=device)
    return (torch.outer(f, f) / f.sum().square()).to(dtype)[None, None]


def resample(x: torch.Tensor, f: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """2x per-channel FIR resampling; with the [1,1] filter: 2x2 average down, nearest-neighbour up."""
    if mode == "keep":
        return x
    channels = x.shape[1]
    kernel = _resample_kernel(f, x.dtype, x.device)
    pad = (kernel.shape[-1] - 1) // 2
    if mode == "down":
        return F.conv2d(x, kernel.tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=pad)
    if mode == "up":
        return F.conv_transpose2d(x, (kernel * 4).tile([channels, 1, 1, 1]), groups=channels, stride=2, padding=pad)
    raise ValueError(f"resample mode must be one of {RESAMPLE_MODES}, not {mode!r}")


# --------------------------------------------------------------------------------------------
# Layers


class MPConv(nn.Module):
    """Conv (kernel [kh, kw]) or linear layer (kernel []) whose weight rows are normalised at use.

    No bias. `in_channels`/`out_channels` are plain ints so skiptune can read the first encoder conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1.0) -> torch.Tensor:
        w = normalize(self.weight.to(torch.float32))
        # A tensor gain keeps its own dtype here: a float16 gain divided by a Python float stays
        # float16, exactly as the original evaluates it for released (float16) weights.
        w = w * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


class MPFourier(nn.Module):
    """Random Fourier features of the noise level, √2·cos(c·freqs + phases), computed in float32."""

    freqs: torch.Tensor
    phases: torch.Tensor

    def __init__(self, num_channels: int, bandwidth: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).outer(self.freqs.to(torch.float32))
        y = y + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class _GainDtypeMixin(nn.Module):
    """Remembers the dtype a checkpoint stored a 0-dim gain in, for the arithmetic of §8.

    Released EDM2 weights are float16, and the original evaluates gain/√fan_in in float16 (a
    float16 tensor divided by a Python float stays float16). We load every tensor into float32
    modules (uniform dtype, CPU-friendly, unaffected by `.float()`), which is exact for the values
    themselves since float16 ⊂ float32, and keep only this flag to redo that one division in the
    stored dtype. Without it outputs differ by up to ~5e-4. None means "the parameter's own dtype".
    """

    gain_dtype: torch.dtype | None = None
    _gain_name: str = ""

    def _gain(self) -> torch.Tensor:
        gain: torch.Tensor = getattr(self, self._gain_name)
        return gain if self.gain_dtype is None else gain.to(self.gain_dtype)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        value = state_dict.get(prefix + self._gain_name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            self.gain_dtype = value.dtype
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class EDM2Block(_GainDtypeMixin):
    """Residual block of the EDM2 UNet ('enc': pixel-normalised input; 'dec': takes the concatenation)."""

    _gain_name = "emb_gain"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",
        resample_mode: str = "keep",
        resample_filter: Sequence[float] = (1, 1),
        attention: bool = False,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        res_balance: float = 0.3,
        attn_balance: float = 0.3,
        clip_act: float | None = 256,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, not {flavor!r}")
        if resample_mode not in RESAMPLE_MODES:
            raise ValueError(f"resample_mode must be one of {RESAMPLE_MODES}, not {resample_mode!r}")
        super().__init__()
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.flavor = flavor
        self.resample_filter = list(resample_filter)
        self.resample_mode = resample_mode
        # A layer narrower than channels_per_head gets no heads, hence no attention, even if asked.
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, kernel=[3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, kernel=[])
        self.conv_res1 = MPConv(out_channels, out_channels, kernel=[3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, kernel=[1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, kernel=[1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, kernel=[1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm

        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self._gain()) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)

        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.attn_qkv is not None and self.attn_proj is not None:  # num_heads > 0
            n, ch, h, w = x.shape
            # q, k, v are interleaved per head: channel = head·3d + c·3 + {q, k, v}.
            qkv = self.attn_qkv(x).reshape(n, self.num_heads, -1, 3, h * w)
            q, k, v = normalize(qkv, dim=2).unbind(3)
            weights = torch.einsum("nhcq,nhck->nhqk", q, k / math.sqrt(q.shape[2])).softmax(dim=3)
            a = torch.einsum("nhqk,nhck->nhcq", weights, v).reshape(n, ch, h, w)
            x = mp_sum(x, self.attn_proj(a), t=self.attn_balance)

        if self.clip_act is not None:
            x = x.clip(-self.clip_act, self.clip_act)
        return x


class EDM2UNet(_GainDtypeMixin):
    """The EDM2 UNet. Every encoder entry's output is pushed; every decoder `block` pops one."""

    _gain_name = "out_gain"

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_noise: int | None = None,
        channel_mult_emb: int | None = None,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (16, 8),
        label_balance: float = 0.5,
        concat_balance: float = 0.5,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))

        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, kernel=[])
        self.emb_label = MPConv(label_dim, cemb, kernel=[]) if label_dim else None

        self.enc = nn.ModuleDict()
        skips: list[int] = []  # channels of every encoder entry's output: each one is pushed
        cout = img_channels + 1  # the image plus a constant channel of ones
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, kernel=[3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = EDM2Block(
                    cout, cout, cemb, flavor="enc", resample_mode="down", **block_kwargs
                )
            skips.append(cout)
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = EDM2Block(
                    cin, cout, cemb, flavor="enc", attention=res in attn_resolutions, **block_kwargs
                )
                skips.append(cout)

        self.dec = nn.ModuleDict()
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = EDM2Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = EDM2Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = EDM2Block(cout, cout, cemb, flavor="dec", resample_mode="up", **block_kwargs)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = EDM2Block(
                    cin, cout, cemb, flavor="dec", attention=res in attn_resolutions, **block_kwargs
                )
        self.out_conv = MPConv(cout, img_channels, kernel=[3, 3])

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        # The embedding stays float32 whatever the body's dtype.
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            if class_labels is None:
                raise ValueError("this network is class-conditional: pass class_labels")
            emb = mp_sum(emb, self.emb_label(class_labels * math.sqrt(self.emb_label.in_channels)), t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips: list[torch.Tensor] = []
        for entry in self.enc.values():
            x = entry(x) if isinstance(entry, MPConv) else entry(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self._gain())


class EDM2Precond(nn.Module):
    """EDM2 preconditioning: D(x; σ) = c_skip·x + c_out·F(c_in·x, ln(σ)/4), plus the logvar head.

    Unlike EDMPrecond there is no sigma_min/sigma_max (the network accepts any σ > 0).
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        label_dim: int = 0,
        use_fp16: bool = True,
        sigma_data: float = 0.5,
        logvar_channels: int = 128,
        **unet_kwargs: Any,
    ) -> None:
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.init_kwargs: dict[str, Any] = dict(
            img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, use_fp16=use_fp16,
            sigma_data=sigma_data, logvar_channels=logvar_channels, **unet_kwargs,
        )
        self.unet = EDM2UNet(img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs)
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, kernel=[])

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        return_logvar: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x, sigma, class_labels, (c_skip, c_out, c_in) = edm_precondition(
            x, sigma, class_labels, self.label_dim, self.sigma_data)
        use_half = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if use_half else torch.float32
        c_noise = sigma.flatten().log() / 4

        F_x = self.unet((c_in * x).to(dtype), c_noise, class_labels)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        if return_logvar:
            logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
            return D_x, logvar
        return D_x


@dataclass(frozen=True)
class EncoderInfo:
    """How an EDM2 network's data space maps back to images, kept from the snapshot's `encoder`.

    EDM2 snapshots pickle the encoder next to the network: 'rgb' (pixel space in [-1, 1]) or 'vae'
    (Stable Diffusion VAE latents stored as raw·scale + bias per channel; the VAE itself is not in
    the file, only its name). Sampling code needs this to turn latents into images.
    """

    kind: str  # "rgb" | "vae"
    vae_name: str | None = None
    scale: tuple[float, ...] = ()
    bias: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("rgb", "vae"):
            raise ValueError(f"encoder kind must be 'rgb' or 'vae', not {self.kind!r}")
        if self.kind == "vae" and (not self.vae_name or not self.scale or len(self.scale) != len(self.bias)):
            raise ValueError("a 'vae' encoder needs vae_name and scale/bias of equal, non-zero length")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderInfo:
        """From a config's `encoder` table: {"kind": "vae", "vae_name": ..., "scale": [...], "bias": [...]}."""
        unknown = set(data) - {"kind", "vae_name", "scale", "bias"}
        if unknown:
            raise ValueError(f"unknown encoder keys {sorted(unknown)}; expected kind, vae_name, scale, bias")
        return cls(
            kind=str(data.get("kind", "rgb")),
            vae_name=None if data.get("vae_name") is None else str(data["vae_name"]),
            scale=tuple(float(v) for v in data.get("scale", ())),
            bias=tuple(float(v) for v in data.get("bias", ())),
        )
