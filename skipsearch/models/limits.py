"""How big a network a checkpoint may ask for, before anything is built.

A checkpoint's recorded constructor arguments are untrusted: `num_blocks=100000` takes minutes to
build even on torch's meta device, and a few bytes of arguments can describe gigabytes of
parameters. Two guards, both before the real network is allocated:
- every integer argument stays within what released networks use, times a wide margin;
- the network the arguments describe (sized on the meta device) may hold no more values than the
  file actually stores — counting storage bytes, so a stride-0 view that expands a few stored
  numbers into billions counts as the few numbers it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["LIMITS", "check_arguments", "stored_values", "check_size"]

# Released EDM and EDM2 networks, and the largest value each argument takes there (margin: ×4 or more).
LIMITS: dict[str, int] = {
    "img_resolution": 1024,  # EDM 64 (pixels), EDM2 64 (latents of 512-pixel images)
    "img_channels": 64,  # 3 (RGB), 4 (SD latents)
    "in_channels": 64,
    "out_channels": 64,
    "label_dim": 100_000,  # 1000 (ImageNet)
    "augment_dim": 256,  # 9
    "model_channels": 4096,  # 448 (EDM2-XXL)
    "num_blocks": 32,  # 4
    "channel_mult_emb": 64,  # 4
    "channel_mult_noise": 64,  # 2
    "channels_per_head": 4096,
    "num_heads": 1024,
}
MAX_LIST = 16  # channel_mult has 4 entries, attn_resolutions 3
MAX_LIST_VALUE = 1024  # channel_mult ≤ 4, attention resolutions ≤ 32, filter taps ≤ 3
MAX_OTHER_INT = 1_000_000  # any other integer argument


def _check_int(name: str, value: int, limit: int) -> None:
    if value < 0 or value > limit:
        raise CheckpointError(f"the recorded argument {name}={value} is outside what any released network uses "
                              f"(0..{limit:,}): a damaged or forged checkpoint")


def check_arguments(kwargs: Mapping[str, Any]) -> None:
    """Refuse recorded constructor arguments no real network has (before anything is built)."""
    for name, value in kwargs.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            _check_int(name, value, LIMITS.get(name, MAX_OTHER_INT))
        elif isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST:
                raise CheckpointError(f"the recorded argument {name} has {len(value):,} entries (at most {MAX_LIST}): "
                                      "a damaged or forged checkpoint")
            for item in value:
                if isinstance(item, int) and not isinstance(item, bool):
                    _check_int(f"{name}[…]", item, MAX_LIST_VALUE)
        elif isinstance(value, Mapping):
            check_arguments(value)


def stored_values(tensors: Mapping[str, torch.Tensor]) -> int:
    """The values the file really stores: each distinct storage once, by its bytes. A tensor that
    spans more values than its storage holds (stride 0, overlapping strides) is refused."""
    seen: dict[int, int] = {}
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage()
        available = storage.nbytes() // max(1, tensor.element_size()) - tensor.storage_offset()
        if tensor.numel() > 0 and (min(tensor.stride(), default=1) == 0 or tensor.numel() > available):
            raise CheckpointError(f"tensor {name} claims {tensor.numel():,} values on {max(available, 0):,} stored "
                                  "ones (an expanded or overlapping view): a damaged or forged checkpoint")
        seen[storage.data_ptr() if storage.nbytes() else id(storage)] = storage.nbytes() // max(1, tensor.element_size())
    return sum(seen.values())


def check_size(build: Any, kwargs: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """The network `build(**kwargs)` would be, sized on the meta device against what the file stores."""
    check_arguments(kwargs)
    with torch.device("meta"):
        net: nn.Module = build(**kwargs)
    wanted = sum(t.numel() for t in net.state_dict().values())
    held = stored_values(tensors)
    if wanted > held:
        raise CheckpointError(f"the recorded arguments describe a network of {wanted:,} values ({what}), but the "
                              f"file holds {held:,}: a damaged or foreign checkpoint")
