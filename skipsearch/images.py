"""Sample grids as PNG files, written atomically (a killed process never leaves half a file)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from .fileio import atomic_write

__all__ = ["grid_image", "save_grid"]


def grid_image(images: torch.Tensor, nrow: int | None = None, padding: int = 1) -> Image.Image:
    """Tile uint8 images [N,C,H,W] (C = 1 or 3) into one PIL image, row by row."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError("grid_image expects uint8 images shaped [N, 1 or 3, H, W]")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    canvas = torch.zeros([c, rows * (h + padding) + padding, nrow * (w + padding) + padding], dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[:, top : top + h, left : left + w] = images[i]
    array = canvas.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[:, :, 0] if c == 1 else array, mode="L" if c == 1 else "RGB")


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    path = Path(path)
    image = grid_image(images, nrow)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
    return path
