"""Networks skipsearch can tune: EDM and EDM2 reimplementations, their safe loader and the built-in demo."""

from .builtin import BUILTINS, builtin_info
from .edm import DhariwalUNet, EDMPrecond, SongUNet
from .edm2 import EDM2Precond, EDM2UNet, EncoderInfo
from .formats import FORMATS, CheckpointFormat, format_of
from .loading import MODEL_FAMILIES, checkpoint_sha256, load_network, model_choices, model_name, resolve_model_source

__all__ = [
    "EDMPrecond",
    "SongUNet",
    "DhariwalUNet",
    "EDM2Precond",
    "EDM2UNet",
    "EncoderInfo",
    "BUILTINS",
    "builtin_info",
    "load_network",
    "resolve_model_source",
    "model_name",
    "model_choices",
    "checkpoint_sha256",
    "FORMATS",
    "CheckpointFormat",
    "format_of",
    "MODEL_FAMILIES",
]
