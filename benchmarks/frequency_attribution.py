"""Where samplers' images of the same noises differ in spatial frequency, and which band of each difference moves
FID.

    python -m benchmarks.frequency_attribution --train_data_dir ../shared/celeba \
        --reference runs/shipped/nfe/edm-dpm++2m-20_n2000 \
        --other runs/shipped/nfe/edm-dpm++2m-10_n2000 runs/shipped/nfe/edm-euler-20_n2000 \
        --out results/nfe/frequency_attribution.json --plot results/nfe/frequency_attribution.png

Folders of batches kept by ``--resume_dir`` with the same seed and batch size hold images that started from the same
initial noises (``--num_samples N`` pairs the first N of each, so a small set pairs with the start of a larger one),
so for each other folder the difference d_i = other_i - reference_i is that sampler's effect on one image. The command
reports the radially averaged power spectrum of every set's luminance over that of as many training images (per
frequency in cycles per image: where a sampler adds or removes detail); for each other folder the RMS of d below and
above ``--cutoff`` and the FID and KID of the other set and of the hybrids reference + lowpass(d) and
reference + highpass(d), which split its change of score between coarse structure and fine detail; and every pair's
KID difference with its paired standard error (``benchmarks.paired_kid``). One Inception pass per set: about 4
minutes per 2,000 images on 2 CPU cores.
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


def attribution(reference: np.ndarray, others: dict[str, np.ndarray], real: np.ndarray, cutoff: float, features,
                real_features: dict) -> dict:
    """The spectra, band RMS, FIDs and paired KIDs this command reports, for paired uint8 NHWC sets.

    Args:
        reference: the reference sampler's images; others: name -> another sampler's images of the same noises.
        real: training images, the spectrum's baseline.
        cutoff: the frequency (cycles per image) that splits each difference into its bands.
        features: maps uint8 NHWC images to an (N, D) feature tensor (Inception's, or a stand-in in tests).
        real_features: the FID/KID reference, ``load_or_compute_reference``'s dict ("features", "mean", "cov").

    Returns:
        {"cutoff", "difference_rms": {name: {"all", "lowpass", "highpass"}}, "fid": {set: FID}, "kid": paired_kid's
        result over all sets, "spectrum_over_real": {name: power ratio per frequency 1 .. size // 2}}; the hybrid
        sets are named "reference+lowpass(<name>)" and "reference+highpass(<name>)".
    """
    sets, rms = {"reference": reference}, {}
    for name, images in others.items():
        difference = images.astype(np.float64) - reference.astype(np.float64)
        low, high = split_bands(difference, cutoff)
        sets[name] = images
        sets[f"reference+lowpass({name})"] = to_uint8(reference + low)
        sets[f"reference+highpass({name})"] = to_uint8(reference + high)
        rms[name] = {band: float(np.sqrt((part**2).mean()))
                     for band, part in (("all", difference), ("lowpass", low), ("highpass", high))}
    fake = {name: features(images) for name, images in sets.items()}
    real_spectrum = radial_power_spectrum(real)
    return {"cutoff": cutoff, "difference_rms": rms,
            "fid": {name: frechet_distance(real_features, feature_stats(value)) for name, value in fake.items()},
            "kid": paired_kid(real_features["features"], fake),
            "spectrum_over_real": {name: spectrum_ratio(sets[name], real_spectrum) for name in ("reference", *others)}}


def plot(result: dict, reference_name: str, path: Path) -> None:
    """Each sampler's power over the training images' power against frequency (one colour per set)."""
    ratios = result["spectrum_over_real"]
    labels = {name: reference_name if name == "reference" else name for name in ratios}
    colors = dict(zip(labels.values(), PALETTE))
    size = len(ratios["reference"])
    lines = {colors[labels[name]]: (list(range(1, size + 1)), ratio, 2) for name, ratio in ratios.items()}
    lines[(128, 128, 128)] = ([1, size], [1.0, 1.0], 1)
    line_chart(str(path), "luminance power spectrum of samples over that of training images (1 = data)",
               "frequency (cycles per image)", [{"lines": lines, "y_label": "power / training power"}], colors,
               min_x=0.5, max_x=size + 0.5)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout (FID reference and "
                        "the training images whose spectrum is the baseline)")
    parser.add_argument("--reference", required=True, help="batch folder of the reference sampler")
    parser.add_argument("--other", nargs="+", required=True,
                        help="batch folders of the samplers compared with it (same noises; distinct folder names)")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="use the first N images of each folder (default: all, and the folders must hold as many)")
    parser.add_argument("--cutoff", type=float, default=8.0,
                        help="frequency (cycles per image) that splits each difference into its two bands")
    parser.add_argument("--cache_dir", default=None, help="reference features cache (default: pipeline.evaluate's)")
    parser.add_argument("--out", default="results/nfe/frequency_attribution.json")
    parser.add_argument("--plot", default=None, help="PNG of the spectra (default: --out with .png)")
    args = parser.parse_args(argv)
    names = [Path(folder).name for folder in args.other]
    if "reference" in names or len(set(names)) < len(names):
        raise ValueError(f"--other folders need distinct names other than 'reference', got {names}")
    if len(names) >= len(PALETTE):
        raise ValueError(f"{len(names)} --other folders, but the plot has colours for {len(PALETTE) - 1}")
    stored = {"reference": read_batches(args.reference),
              **{name: read_batches(folder) for name, folder in zip(names, args.other)}}
    if args.num_samples is not None:
        counts = {name: len(samples.images) for name, samples in stored.items()}
        if not 2 <= args.num_samples <= min(counts.values()):
            raise ValueError(f"--num_samples {args.num_samples} must lie between 2 and the images of the smallest "
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
    result = attribution(stored["reference"].images, {name: stored[name].images for name in names}, real,
                         args.cutoff, lambda images: extract_features(as_nchw_uint8(images), progress=True)[0],
                         reference_stats)
    result["protocol"] = {"num_samples": count, "real_images": count, "fid_reference_images": reference_stats["num"],
                          "reference": Path(args.reference).name,
                          "sampling": {name: samples.settings for name, samples in stored.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, result["protocol"]["reference"], Path(args.plot) if args.plot else out.with_suffix(".png"))
    fids, kids = result["fid"], {(pair["a"], pair["b"]): pair for pair in result["kid"]["pairs"]}
    print(f"reference {result['protocol']['reference']}: FID {fids['reference']:.2f}")
    for name in names:
        for label in (name, f"reference+lowpass({name})", f"reference+highpass({name})"):
            pair = kids[("reference", label)]
            print(f"{label}: FID {fids[label]:.2f}; KID - reference's {-pair['kid_difference'] * 1e3:+.2f}e-3 "
                  f"+- {pair['paired_se'] * 1e3:.2f}e-3 (paired s.e.)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
