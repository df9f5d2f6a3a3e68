"""Image grids and PNG folders for generated samples."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def make_grid(images: np.ndarray, columns: int | None = None, upscale: int = 1, padding: int = 2) -> Image.Image:
    """Tile uint8 NHWC images into one picture (nearest-neighbour ``upscale`` for viewing small images)."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"make_grid expects uint8 NHWC images, got {images.dtype} {images.shape}")
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), 255,
                     dtype=np.uint8)
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        canvas[top:top + height, left:left + width] = image
    grid = Image.fromarray(canvas)
    if upscale > 1:
        grid = grid.resize((grid.width * upscale, grid.height * upscale), Image.NEAREST)
    return grid


def save_pngs(images: np.ndarray, out_dir: str, start_index: int = 0) -> list[str]:
    """Write uint8 NHWC images as ``{index:05d}.png``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for offset, image in enumerate(images):
        path = os.path.join(out_dir, f"{start_index + offset:05d}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
