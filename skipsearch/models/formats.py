"""Every checkpoint format skipsearch reads, registered once: how each is recognised, loaded,
fingerprinted and named. None executes code from the file.

- `builtin`: `builtin:NAME`, a model that ships with skipsearch;
- `edm-pickle`: an NVlabs EDM or EDM2 snapshot `.pkl`, read by the restricted unpickler;
- `state-dict`: `.pt` / `.pth` / `.safetensors` with constructor arguments embedded or beside it;
- `pipeline`: a diffusers text-to-image pipeline folder (`model_index.json`: Stable Diffusion 1.x/2.x,
  SDXL), a prompt-conditioned denoiser with its text encoders and VAE;
- `diffusers`: a `save_pretrained` folder (UNet2DModel and its scheduler), wrapped as a denoiser.
A new format is one registration here, not another branch in every reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError
from ..fileio import file_sha256
from ..registry import BUILTIN_PREFIX, Registry
from .builtin import BUILTINS
from .diffusers import folder_sha256, is_diffusers_folder, load_diffusers
from .edm_pickle import load_edm_pickle
from .pipelines import is_pipeline_folder, load_pipeline
from .state_dict import STATE_DICT_SUFFIXES, load_state_dict_network

__all__ = ["CheckpointFormat", "FORMATS", "format_of"]

Config = str | Path | dict[str, Any] | None


@dataclass(frozen=True)
class CheckpointFormat:
    name: str
    description: str
    recognises: Callable[[str], bool]
    load: Callable[[str, Config], nn.Module]  # (source, constructor config for formats that take one)
    sha256: Callable[[str], str]  # content hash: what a study records to refuse another checkpoint
    display_name: Callable[[str], str]  # what schedules are filed under


def _builtin_name(source: str) -> str:
    return source[len(BUILTIN_PREFIX):]


def _file_hash(source: str) -> str:
    return file_sha256(source)


def _is_file_with(*suffixes: str) -> Callable[[str], bool]:
    return lambda source: Path(source).is_file() and Path(source).suffix in suffixes


FORMATS: Registry[CheckpointFormat] = Registry("checkpoint format", CheckpointError)
for _format in (
    CheckpointFormat("builtin", "a model that ships with skipsearch (builtin:NAME)",
                     lambda s: s.startswith(BUILTIN_PREFIX), lambda s, c: BUILTINS.lookup(_builtin_name(s)).load(),
                     lambda s: file_sha256(BUILTINS.lookup(_builtin_name(s)).weights_path), _builtin_name),
    CheckpointFormat("edm-pickle", "an NVlabs EDM or EDM2 snapshot (.pkl)", _is_file_with(".pkl"),
                     lambda s, c: load_edm_pickle(s), _file_hash, lambda s: Path(s).stem),
    CheckpointFormat("state-dict", "a state dict with its constructor arguments (.pt, .pth, .safetensors)",
                     _is_file_with(*STATE_DICT_SUFFIXES), lambda s, c: load_state_dict_network(Path(s), c), _file_hash,
                     lambda s: Path(s).stem),
    CheckpointFormat("pipeline", "a diffusers text-to-image pipeline folder (model_index.json)",
                     lambda s: is_pipeline_folder(Path(s)), lambda s, c: load_pipeline(s), folder_sha256,
                     lambda s: Path(s).name),
    CheckpointFormat("diffusers", "a diffusers folder (UNet2DModel and its scheduler)",
                     lambda s: Path(s).is_dir() and is_diffusers_folder(Path(s)), lambda s, c: load_diffusers(s),
                     folder_sha256, lambda s: Path(s).name),
):
    FORMATS.register(_format.name, _format)


def format_of(source: str | Path) -> CheckpointFormat:
    """The registered format of `source`, or one line saying why it has none."""
    text = str(source)
    for fmt in FORMATS.values():
        if fmt.recognises(text):
            return fmt
    path = Path(text)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder but not a diffusers one (unet/config.json and "
                              "scheduler/scheduler_config.json); give the checkpoint file or such a folder")
    raise CheckpointError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .pkl, .pt, .pth, .safetensors "
                          "or a diffusers folder")
