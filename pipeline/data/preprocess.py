"""Image preprocessing shared by training, reference statistics and evaluation.

Default = the score-SDE paper's CelebA protocol: center crop 140x140 of the 178x218 aligned image, antialiased
(bilinear, PIL's area-aware filter) resize to the training resolution, scale to [-1, 1]. The random horizontal flip
is applied to training batches (``random_hflip``) so that cached uint8 images stay deterministic.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

RESAMPLE_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
                    "box": Image.BOX}


class CorruptImageError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


@dataclass(frozen=True)
class Preprocessing:
    """Everything that decides how a raw CelebA image becomes a training image (also the cache key)."""

    resolution: int = 64
    crop_size: int = 140  # side of the centered square crop in source pixels; 0 = largest centered square
    crop_offset_y: int = 0  # vertical shift of the crop center (source pixels, + = down), for other face crops
    resample: str = "bilinear"

    def __post_init__(self):
        if self.resolution <= 0:
            raise ValueError(f"resolution must be positive, got {self.resolution}")
        if self.crop_size < 0:
            raise ValueError(f"crop_size must be >= 0, got {self.crop_size}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ValueError(f"resample must be one of {sorted(RESAMPLE_FILTERS)}, got {self.resample!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def pipeline_preprocessing(pipe) -> Preprocessing:
    """How the images a ``CelebADiffusionPipeline`` was trained on were made: its saved ``preprocessing``; a pipeline
    saved without one was trained with the defaults at its own resolution."""
    saved = pipe.config.get("preprocessing")
    return Preprocessing(**saved) if saved else Preprocessing(resolution=int(pipe.denoiser.config.sample_size))


def crop_box(width: int, height: int, prep: Preprocessing) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centered square crop, as PIL's ``Image.crop`` expects."""
    side = prep.crop_size or min(width, height)
    if side > min(width, height):
        raise ValueError(f"crop_size {side} does not fit in a {width}x{height} image")
    left = (width - side) // 2
    top = (height - side) // 2 + prep.crop_offset_y
    if top < 0 or top + side > height:
        raise ValueError(f"crop_offset_y {prep.crop_offset_y} moves the crop outside a {width}x{height} image")
    return left, top, left + side, top + side


def decode_image(image_bytes: bytes, name: str) -> Image.Image:
    """Decode fully (truncated JPEGs only fail on load) and convert to RGB; errors name the file."""
    try:
        image = Image.open(io.BytesIO(image_bytes))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise CorruptImageError(f"cannot decode image {name}: {error}") from error
    return image.convert("RGB")


def preprocess_image(image: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Crop and resize one RGB image to a uint8 array of shape (3, resolution, resolution)."""
    image = image.crop(crop_box(image.width, image.height, prep))
    image = image.resize((prep.resolution, prep.resolution), RESAMPLE_FILTERS[prep.resample])
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def resize_samples(images: np.ndarray, resolution: int, resample: str) -> np.ndarray:
    """uint8 NHWC images resized to ``resolution`` with the filter the reference images were given, so that samples
    of a model trained at another resolution (e.g. 32x32) can be scored against the same reference (e.g. 64x64)."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"resize_samples expects uint8 NHWC images, got {images.dtype} {images.shape}")
    if images.shape[1:3] == (resolution, resolution):
        return images
    return np.stack([np.asarray(Image.fromarray(image).resize((resolution, resolution), RESAMPLE_FILTERS[resample]))
                     for image in images])


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return pixels.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] with rounding, the inverse of ``to_model_range`` on the 256 levels."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """float [-1, 1] NCHW (values outside are clipped, as in noisy x_t) -> uint8 NHWC numpy, for PIL and grids."""
    return to_uint8(images.float()).permute(0, 2, 3, 1).cpu().numpy()


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of an NCHW batch left-right with probability 1/2 (drawn with the CPU ``generator`` on any
    device, so a seed flips the same images everywhere)."""
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
