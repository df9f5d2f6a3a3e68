"""Where two samplers' images of the same noise differ in spatial frequency, and which band of that difference
moves FID.

    python -m benchmarks.frequency_attribution --train_data_dir ../shared/celeba \
        --reference runs/shipped/nfe/edm-dpm++2m-20_n2000 --other runs/shipped/nfe/edm-dpm++2m-10_n2000 \
        --out results/nfe/frequency_attribution.json --plot results/nfe/frequency_attribution.png

Two folders of batches kept by ``--resume_dir`` with the same seed and batch size hold image pairs that started
from the same initial noise (``--num_samples N`` pairs the first N of each, so a small set pairs with the start of a
larger one), so the difference d_i = other_i - reference_i is the sampler's effect on one image.
The command reports the radially averaged power spectrum of each set's luminance over that of as many training
images (per frequency in cycles per image: where a sampler adds or removes detail), the RMS of d below and above
``--cutoff``, and the FID and KID of four sets: reference, other, and the hybrids reference + lowpass(d) and
reference + highpass(d), with every pair's KID difference and its paired standard error (``benchmarks.paired_kid``).
The hybrids split other's change of score between coarse structure and fine detail. About 15 minutes for
2,000-image folders on 2 CPU cores (four Inception passes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.paired_kid import check_same_noise, paired_kid
from pipeline.cli import ArgumentParser, run_cli
from pipeline.data.celeba import load_eval_images
from pipeline.evaluation.inception import extract_features
from pipeline.evaluation.metrics import feature_stats, frechet_distance
from pipeline.evaluation.plots import PALETTE, line_chart
from pipeline.evaluation.reference_stats import load_or_compute_reference
from pipeline.evaluation.scores import as_nchw_uint8
from pipeline.sampling.sample_store import read_batches


def frequency_radius(size: int) -> np.ndarray:
    """(size, size) radius of each 2-D FFT bin in cycles per image, in ``np.fft.fft2``'s (unshifted) order."""
    frequencies = np.fft.fftfreq(size) * size
    return np.hypot(frequencies[:, None], frequencies[None, :])


def radial_power_spectrum(images: np.ndarray) -> np.ndarray:
    """Mean power of the luminance (channel mean) of NHWC square images per radial frequency 0 .. size // 2, each
    image's mean removed; normalised by the pixel count, so white noise of variance s^2 has power s^2 at every
    frequency above 0 (and 0 at 0)."""
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square NHWC images, got shape {images.shape}")
    size = images.shape[1]
    luminance = images.astype(np.float64).mean(axis=3)
    luminance -= luminance.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(luminance)) ** 2).mean(axis=0) / size**2
    bins = np.rint(frequency_radius(size)).astype(int).ravel()
    keep = bins <= size // 2
    totals = np.bincount(bins[keep], power.ravel()[keep], minlength=size // 2 + 1)
    return totals / np.bincount(bins[keep], minlength=size // 2 + 1)


def split_bands(difference: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """(lowpass, highpass) of NHWC float images: the frequencies with radius <= ``cutoff`` cycles per image and the
    rest, each channel separately; they sum back to ``difference``."""
    mask = frequency_radius(difference.shape[1]) <= cutoff
    low = np.real(np.fft.ifft2(np.fft.fft2(difference, axes=(1, 2)) * mask[None, :, :, None], axes=(1, 2)))
    return low, difference - low


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 255] rounded and clipped to uint8, as a sampler writes them."""
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def spectrum_ratio(images: np.ndarray, real_spectrum: np.ndarray) -> list[float]:
    """Power per frequency 1 .. size // 2 over the training images' power there."""
    return (radial_power_spectrum(images)[1:] / real_spectrum[1:]).tolist()


def attribution(reference: np.ndarray, other: np.ndarray, real: np.ndarray, cutoff: float, features,
                real_features: dict) -> dict:
    """The spectra, band RMS, FIDs and paired KIDs this command reports, for paired uint8 NHWC sets.

    Args:
        reference, other: the two samplers' images of the same noises; real: training images for the spectrum.
        cutoff: the frequency (cycles per image) that splits the difference into its bands.
        features: maps uint8 NHWC images to an (N, D) feature tensor (Inception's, or a stand-in in tests).
        real_features: the FID/KID reference, ``load_or_compute_reference``'s dict ("features", "mean", "cov").
    """
    difference = other.astype(np.float64) - reference.astype(np.float64)
    low, high = split_bands(difference, cutoff)
    real_spectrum = radial_power_spectrum(real)
    sets = {"reference": reference, "other": other,
            "reference+lowpass": to_uint8(reference + low), "reference+highpass": to_uint8(reference + high)}
    fake = {name: features(images) for name, images in sets.items()}
    fids = {name: frechet_distance(real_features, feature_stats(value)) for name, value in fake.items()}
    return {"cutoff": cutoff,
            "difference_rms": {name: float(np.sqrt((part**2).mean()))
                               for name, part in (("all", difference), ("lowpass", low), ("highpass", high))},
            "fid": fids, "kid": paired_kid(real_features["features"], fake),
            "spectrum_over_real": {name: spectrum_ratio(sets[name], real_spectrum) for name in ("reference", "other")}}


def plot(result: dict, names: dict, path: Path) -> None:
    """Each set's power over the training images' power against frequency."""
    colors = dict(zip(names.values(), PALETTE))
    ratios = result["spectrum_over_real"]
    size = len(ratios["reference"])
    lines = {colors[names[key]]: (list(range(1, size + 1)), ratios[key], 2) for key in ("reference", "other")}
    lines[(128, 128, 128)] = ([1, size], [1.0, 1.0], 1)
    line_chart(str(path), "luminance power spectrum of samples over that of training images (1 = data)",
               "frequency (cycles per image)", [{"lines": lines, "y_label": "power / training power"}], colors,
               min_x=0.5, max_x=size + 0.5)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout (FID reference and "
                        "the training images whose spectrum is the baseline)")
    parser.add_argument("--reference", required=True, help="batch folder of the reference sampler")
    parser.add_argument("--other", required=True, help="batch folder of the sampler compared with it (same noise)")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="use the first N images of each folder (default: all, and the folders must hold as many)")
    parser.add_argument("--cutoff", type=float, default=8.0,
                        help="frequency (cycles per image) that splits the difference into its two bands")
    parser.add_argument("--cache_dir", default=None, help="reference features cache (default: pipeline.evaluate's)")
    parser.add_argument("--out", default="results/nfe/frequency_attribution.json")
    parser.add_argument("--plot", default=None, help="PNG of the spectra (default: --out with .png)")
    args = parser.parse_args(argv)
    stored = {"reference": read_batches(args.reference), "other": read_batches(args.other)}
    if args.num_samples is not None:
        counts = {name: len(samples.images) for name, samples in stored.items()}
        if not 2 <= args.num_samples <= min(counts.values()):
            raise ValueError(f"--num_samples {args.num_samples} must lie between 2 and the images of the smaller "
                             f"folder ({counts})")
        stored = {name: samples._replace(images=samples.images[:args.num_samples])
                  for name, samples in stored.items()}
    check_same_noise({name: samples.settings for name, samples in stored.items()},
                     {name: len(samples.images) for name, samples in stored.items()})
    size = stored["reference"].images.shape[1]
    if not 0 < args.cutoff < size // 2:
        raise ValueError(f"--cutoff {args.cutoff} must lie between 0 and {size // 2} cycles per image")
    count = len(stored["reference"].images)
    reference_stats = load_or_compute_reference(args.train_data_dir, cache_dir=args.cache_dir)
    real = load_eval_images(args.train_data_dir, "train", size, count).permute(0, 2, 3, 1).numpy()
    result = attribution(stored["reference"].images, stored["other"].images, real, args.cutoff,
                         lambda images: extract_features(as_nchw_uint8(images), progress=True)[0], reference_stats)
    names = {key: Path(getattr(args, key)).name for key in ("reference", "other")}
    result["protocol"] = {"num_samples": count, "real_images": count, "fid_reference_images": reference_stats["num"],
                          "folders": names, "sampling": {key: stored[key].settings for key in stored}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, names, Path(args.plot) if args.plot else out.with_suffix(".png"))
    fids, kids = result["fid"], {(pair["a"], pair["b"]): pair for pair in result["kid"]["pairs"]}
    for name in ("other", "reference+lowpass", "reference+highpass"):
        pair = kids[("reference", name)]
        print(f"{name}: FID {fids[name]:.2f} (reference {fids['reference']:.2f}); KID - reference's "
              f"{-pair['kid_difference'] * 1e3:+.2f}e-3 +- {pair['paired_se'] * 1e3:.2f}e-3 (paired s.e.)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
