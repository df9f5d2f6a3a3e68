"""What the demo's browser sends, made model-ready: uploads as model-sized faces, painted layers as inpainting masks.

Bad input (no image, no mask, a huge upload) raises ``gr.Error`` messages that the page shows, never a traceback.
"""

from __future__ import annotations

import gradio as gr
import numpy as np
import torch
from PIL import Image

from .data.preprocess import Preprocessing
from .edit import face_tensor

MAX_UPLOAD_SIDE = 2048


def input_error(message: str) -> gr.Error:
    """A message shown in the page until the user closes it (bad input, not a crash: no traceback is printed)."""
    return gr.Error(message, duration=None, print_exception=False)


def center_square(image: Image.Image, resolution: int, resample: int) -> Image.Image:
    """The largest centred square of ``image``, resized to ``resolution`` on a side."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((resolution, resolution), resample)


def square_face(array: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """An uploaded face as 3 x R x R in [-1, 1]: model-sized and aligned CelebA images as in ``pipeline.edit``, any
    other upload centre-cropped to a square and resized; gr.Error for a missing or huge image."""
    if array is None:
        raise input_error("Upload a face (or pick one) first.")
    height, width = array.shape[:2]
    if max(height, width) > MAX_UPLOAD_SIDE:
        raise input_error(f"The image is {width}x{height}; upload one at most {MAX_UPLOAD_SIDE} pixels on a side.")
    image = Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")
    try:
        return face_tensor(image, prep)
    except ValueError:
        return face_tensor(center_square(image, prep.resolution, Image.BILINEAR), prep)


def drawn_mask(editor: dict | None, prep: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """(face, mask with 1 = known) from an ImageEditor value: the background is the face, every painted pixel of
    any layer is to be filled."""
    if editor is None or editor.get("background") is None:
        raise input_error("Upload a face (or pick one) first.")
    background = np.asarray(editor["background"])
    face, resolution = square_face(background[..., :3], prep), prep.resolution
    painted = np.zeros(background.shape[:2], dtype=bool)
    for layer in editor.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == painted.shape:
            painted |= layer[..., 3] > 0
    if not painted.any():
        raise input_error("No mask drawn: paint over the region to fill with the brush, then press Inpaint.")
    fill = Image.fromarray(painted.astype(np.uint8) * 255)
    if fill.size != (resolution, resolution):
        fill = center_square(fill, resolution, Image.NEAREST)
    known = torch.from_numpy(np.asarray(fill) < 128).float()[None, None]
    if bool(known.all()):
        raise input_error("The painted region is outside the face crop: paint over the face.")
    return face, known
