"""benchmarks/frequency_attribution.py: the spectrum is normalised like the pixel variance, the two bands split a
difference exactly by frequency, and the hybrids carry each band of one sampler's change."""

import numpy as np
import pytest
import torch

from benchmarks.frequency_attribution import attribution, main, radial_power_spectrum, split_bands
from pipeline.cli import run_cli
from pipeline.evaluation.metrics import feature_stats
from pipeline.sampling.sample_store import BatchStore


def cosine_images(count: int, size: int, fx: int, fy: int, amplitude: float = 40.0) -> np.ndarray:
    """NHWC float images, every channel amplitude * cos(2 pi (fx x + fy y) / size)."""
    y, x = np.indices((size, size))
    wave = amplitude * np.cos(2 * np.pi * (fx * x + fy * y) / size)
    return np.repeat(wave[None, :, :, None], 3, axis=3).repeat(count, axis=0)


def test_white_noise_has_its_variance_at_every_frequency():
    noise = np.random.default_rng(0).normal(0, 3.0, size=(400, 32, 32, 1)).repeat(3, axis=3)
    spectrum = radial_power_spectrum(noise)
    assert spectrum.shape == (17,) and spectrum[0] == pytest.approx(0, abs=1e-9)
    np.testing.assert_allclose(spectrum[1:], 9.0, rtol=0.1)


def test_a_cosine_puts_all_its_power_at_its_radius():
    spectrum = radial_power_spectrum(cosine_images(2, 32, 3, 4))  # radius 5
    assert spectrum[5] > 0 and np.all(np.delete(spectrum, 5) < 1e-9 * spectrum[5])


def test_the_bands_split_a_difference_by_frequency_and_sum_back_to_it():
    slow, fast = cosine_images(2, 32, 3, 4), cosine_images(2, 32, 0, 10)
    low, high = split_bands(slow + fast + 7.0, cutoff=8)
    np.testing.assert_allclose(low, slow + 7.0, atol=1e-9)  # the constant (frequency 0) is coarse structure
    np.testing.assert_allclose(high, fast, atol=1e-9)


def channel_means(images: np.ndarray) -> torch.Tensor:
    """A stand-in for Inception: each image's mean colour, which only the frequency-0 part of a change moves."""
    return torch.from_numpy(images.astype(np.float64).mean(axis=(1, 2)))


def test_each_hybrid_carries_only_its_band_of_the_change():
    rng = np.random.default_rng(1)
    reference = rng.integers(60, 190, size=(16, 32, 32, 3)).astype(np.uint8)
    fine_and_offset = cosine_images(16, 32, 0, 12, amplitude=20.0) + 5.0  # a fine pattern and a brightness offset
    others = {"shifted": np.rint(reference + fine_and_offset).astype(np.uint8),
              "coarse": np.rint(reference + cosine_images(16, 32, 2, 0, amplitude=10.0)).astype(np.uint8)}
    real = channel_means(rng.integers(40, 200, size=(64, 32, 32, 3)).astype(np.uint8))
    result = attribution(reference, others, real=reference, cutoff=8, features=channel_means,
                         real_features={"features": real, **feature_stats(real)})
    fid, kid = result["fid"], {(pair["a"], pair["b"]): pair for pair in result["kid"]["pairs"]}
    assert fid["shifted"] != pytest.approx(fid["reference"], abs=1.0)
    # the offset lies in the low band, the zero-mean fine pattern in the high band
    assert fid["reference+lowpass(shifted)"] == pytest.approx(fid["shifted"], abs=1e-6)
    assert fid["reference+highpass(shifted)"] == pytest.approx(fid["reference"], abs=1e-6)
    assert kid[("reference", "reference+highpass(shifted)")]["kid_difference"] == pytest.approx(0, abs=1e-9)
    assert kid[("shifted", "reference+lowpass(shifted)")]["kid_difference"] == pytest.approx(0, abs=1e-9)
    rms = result["difference_rms"]
    assert rms["shifted"]["highpass"] == pytest.approx(20 / np.sqrt(2), rel=0.01)  # to uint8 rounding
    assert rms["shifted"]["lowpass"] == pytest.approx(5.0, rel=0.01)
    assert rms["coarse"]["lowpass"] == pytest.approx(10 / np.sqrt(2), rel=0.02) and rms["coarse"]["highpass"] < 0.5
    spectra = result["spectrum_over_real"]
    assert list(spectra) == ["reference", "shifted", "coarse"]
    np.testing.assert_allclose(spectra["reference"], 1.0)
    assert np.argmax(spectra["shifted"]) + 1 == 12 and np.argmax(spectra["coarse"]) + 1 == 2


def batch_folder(path, seed: int, count: int = 4):
    store = BatchStore(path, {"seed": seed, "batch_size": count, "scheduler": "ddim"})
    store.save(0, np.zeros((count, 16, 16, 3), np.uint8), nfe=4)
    return str(path)


def test_folders_that_do_not_share_their_noise_are_one_error(tmp_path, capsys):
    a, b, c = (batch_folder(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 1), ("c", 0)))
    out = tmp_path / "attribution.json"
    common = ["--train_data_dir", str(tmp_path), "--out", str(out), "--reference", a]
    assert run_cli(main, [*common, "--other", b]) == 2
    assert "not drawn with the same seed" in capsys.readouterr().err
    assert run_cli(main, [*common, "--other", c, "--cutoff", "8"]) == 2
    assert "--cutoff 8.0 must lie between 0 and 8 cycles per image" in capsys.readouterr().err
    assert run_cli(main, [*common, "--other", c, "--num_samples", "5"]) == 2
    assert "--num_samples 5 must lie between 2 and the images of the smallest folder" in capsys.readouterr().err
    assert run_cli(main, [*common, "--other", c, str(tmp_path / "x" / "c")]) == 2
    assert "--other folders need distinct names other than 'reference', got ['c', 'c']" in capsys.readouterr().err
    assert not out.exists()
