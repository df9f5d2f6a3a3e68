"""Preprocessing follows the score-SDE CelebA protocol: centered 140x140 crop, antialiased resize, [-1, 1]."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.preprocess import (
    Preprocessing,
    crop_box,
    pipeline_preprocessing,
    preprocess_image,
    random_hflip,
    to_model_range,
    to_uint8,
)


def test_default_crop_box_of_an_aligned_celeba_image():
    assert crop_box(178, 218, Preprocessing()) == (19, 39, 159, 179)
    assert crop_box(178, 218, Preprocessing(crop_size=0)) == (0, 20, 178, 198)  # largest centered square
    assert crop_box(178, 218, Preprocessing(crop_size=108, crop_offset_y=-10)) == (35, 45, 143, 153)


def test_crop_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="crop_size 200"):
        crop_box(178, 218, Preprocessing(crop_size=200))
    with pytest.raises(ValueError, match="crop_offset_y 60"):
        crop_box(178, 218, Preprocessing(crop_offset_y=60))
    with pytest.raises(ValueError, match="resample"):
        Preprocessing(resample="nearest-ish")


def test_known_image_lands_in_the_expected_crop():
    """A white 140x140 square exactly on the crop box on black: the result is all white; shifted by one row,
    the top row of the output darkens (the crop is exactly where we say)."""
    canvas = np.zeros((218, 178, 3), dtype=np.uint8)
    canvas[39:179, 19:159] = 255
    out = preprocess_image(Image.fromarray(canvas), Preprocessing(resolution=64))
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    assert out.min() == 255
    shifted = np.zeros_like(canvas)
    shifted[43:183, 19:159] = 255  # 4 source rows lower = 64/140*4 ~ 1.8 output rows of black at the top
    out = preprocess_image(Image.fromarray(shifted), Preprocessing(resolution=64))
    assert out[:, 0].max() < 128 and out[:, 3:].min() == 255


def test_resize_is_antialiased():
    """A 1-pixel checkerboard averages to mid-grey when downsampled 140 -> 32 (no aliasing to black/white)."""
    board = (np.indices((218, 178)).sum(0) % 2 * 255).astype(np.uint8)
    out = preprocess_image(Image.fromarray(np.stack([board] * 3, -1)), Preprocessing(resolution=32))
    assert abs(out.astype(float).mean() - 127.5) < 3 and out.std() < 10


def test_value_range_and_round_trip():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    scaled = to_model_range(pixels)
    assert scaled.min() == -1 and scaled.max() == 1
    assert torch.equal(to_uint8(scaled), pixels)


def test_random_hflip_flips_about_half_and_exactly():
    images = torch.arange(1000 * 4, dtype=torch.float32).view(1000, 1, 1, 4)
    flipped = random_hflip(images, torch.Generator().manual_seed(0))
    is_flipped = (flipped != images).any(dim=(1, 2, 3))
    assert 430 < is_flipped.sum() < 570
    torch.testing.assert_close(flipped[is_flipped], images[is_flipped].flip(-1))


def test_a_pipeline_states_its_training_preprocessing_or_gets_the_defaults_at_its_size():
    saved = {"resolution": 48, "crop_size": 120, "crop_offset_y": -3, "resample": "bicubic"}
    denoiser = SimpleNamespace(config=SimpleNamespace(sample_size=48))
    assert pipeline_preprocessing(SimpleNamespace(config={"preprocessing": saved}, denoiser=denoiser)) == \
        Preprocessing(48, 120, -3, "bicubic")
    assert pipeline_preprocessing(SimpleNamespace(config={}, denoiser=denoiser)) == Preprocessing(resolution=48)
