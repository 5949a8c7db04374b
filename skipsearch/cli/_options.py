"""Options several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._app import remember_storage

StorageOpt = Annotated[
    Optional[str],
    typer.Option(
        "--storage",
        help="Optuna storage URL (default $SKIPSEARCH_STORAGE, else sqlite:///skipsearch.db). "
        "Put URLs with a password in $SKIPSEARCH_STORAGE.",
        callback=remember_storage,
    ),
]
ModelOpt = Annotated[str, typer.Option("--model", help="Model family (edm, edm2, diffusers) or builtin:NAME.")]
CheckpointOpt = Annotated[
    Optional[Path], typer.Option("--checkpoint", help="EDM/EDM2 .pkl, .pt/.safetensors with a config beside it, or a diffusers folder.")
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")]
FeaturesWeightsOpt = Annotated[Optional[str], typer.Option(help="Local weights file for the feature extractor.")]
VaeOpt = Annotated[Optional[Path], typer.Option(help="Latent networks (EDM2 img512): the local VAE folder.")]
PromptsOpt = Annotated[Optional[Path], typer.Option(
    help="Text-to-image pipelines: prompts file (a line each, a JSON list or COCO captions); seed s gets prompt s mod P.")]
CfgOpt = Annotated[Optional[float], typer.Option(help="Text-to-image pipelines: classifier-free guidance scale.")]
