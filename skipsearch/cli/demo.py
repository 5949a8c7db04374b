"""`skipsearch demo ...`: rebuild the built-in demo (model, classifier, reference) from its recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ._output import console

__all__ = ["demo_app"]

demo_app = typer.Typer(help="Rebuild the built-in demo: its EDM model, digit classifier and reference.",
                       no_args_is_help=True)


@demo_app.command("train-model")
def train_model(
    steps: Annotated[int, typer.Option(help="Training steps (the shipped model: 7000).")] = 7000,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("skipsearch/data"),
    name: Annotated[str, typer.Option(help="Model name (file stem).")] = "edm-digits",
) -> None:
    """Train the built-in EDM digits model (about 28 minutes on two idle cores)."""
    from ..demo.model import TrainConfig, save, train

    cfg = TrainConfig(steps=steps, batch_size=batch_size, seed=seed)
    net, history = train(cfg, log=console.print)
    console.print(f"wrote {save(net, cfg, history, out, name)}")


@demo_app.command("train-classifier")
def train_classifier(
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the package data).")] = None,
    threads: Annotated[int, typer.Option(help="Torch threads; results are reproducible for a given count.")] = 1,
) -> None:
    """Train the digit classifier whose features the demo's proxy FID uses (about 30 s)."""
    import json

    import torch

    from ..demo.classifier import ClassifierConfig, build

    torch.set_num_threads(threads)
    info = build(out, ClassifierConfig(epochs=epochs, seed=seed), log=console.print)
    console.print(json.dumps(info, indent=2))


@demo_app.command("reference")
def reference(
    out: Annotated[Optional[Path], typer.Option(help="Output .npz (default: the package data).")] = None,
) -> None:
    """Recompute the built-in reference statistics (all 1,797 digits under the shipped classifier)."""
    from ..demo.reference import write_builtin_reference

    path, ref = write_builtin_reference(out)
    console.print(f"wrote {path}: {ref.dim}-dim, {ref.count} images, sha256 {ref.sha256}")


@demo_app.command("floor")
def floor() -> None:
    """The proxy's noise floor on the demo: FID between two halves of the real digits."""
    from ..demo.reference import real_data_floor

    console.print(f"real-data floor (two halves of 1,797 digits): FID {real_data_floor():.4f}")
