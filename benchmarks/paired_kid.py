"""KID differences between samplers that started from the same noise, with their paired standard error.

    python benchmarks/paired_kid.py --train_data_dir ../shared/celeba \
        --batches runs/nfe_batches/ddim+mc-100_n128 runs/nfe_batches/heun+mc-18_n128 ... \
        --out results/nfe/paired_kid_n128.json

Given the same seed, two samplers turn the same initial noise into sample i of each set. Their KIDs against the same
reference then share much of their generated-set error, so the unpaired error of the difference, sqrt(se_a^2 + se_b^2),
overstates it; ``pipeline.evaluation.metrics.kid_paired_difference_standard_error`` measures the paired one. This
command rescores the sample batches that ``--resume_dir`` kept (``pipeline.evaluate``, ``benchmarks/fid_vs_nfe.py``),
after checking
that every folder holds the same number of samples drawn with the same seed and batch size, and reports every pair.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from pipeline.cli import ArgumentParser, run_cli
from pipeline.evaluation.inception import extract_features
from pipeline.evaluation.metrics import (
    kernel_inception_distance,
    kid_generated_standard_error,
    kid_paired_difference_standard_error,
)
from pipeline.evaluation.reference_stats import load_or_compute_reference
from pipeline.evaluation.scores import as_nchw_uint8
from pipeline.sampling.sample_store import read_batches

SAME_NOISE = ("seed", "batch_size")  # with the same count, these decide every initial noise


def check_same_noise(settings: dict[str, dict], counts: dict[str, int]) -> None:
    """One error naming the folders whose samples cannot be paired."""
    for key in SAME_NOISE:
        values = {name: setting.get(key) for name, setting in settings.items()}
        if len(set(values.values())) > 1:
            raise ValueError(f"the folders were not drawn with the same {key}, so their samples are not paired: "
                             f"{values}")
    if len(set(counts.values())) > 1:
        raise ValueError(f"the folders hold different numbers of samples, so they are not paired: {counts}")


def paired_kid(real: torch.Tensor, features: dict[str, torch.Tensor], seed: int = 0) -> dict:
    """KID (torchmetrics' subsets, as pipeline.evaluate scores it) and generated-set error of each set, and for every
    pair the difference with its paired and unpaired standard errors and its z = difference / paired s.e. (None for
    two sets of identical features, whose difference has no spread)."""
    points = {}
    for name, fake in features.items():
        mean, spread, _ = kernel_inception_distance(real, fake, seed=seed)
        points[name] = {"kid_mean": mean, "kid_std": spread,
                        "kid_generated_se": kid_generated_standard_error(real, fake, seed=seed)}
    pairs = []
    for a, b in itertools.combinations(features, 2):
        paired = kid_paired_difference_standard_error(real, features[a], features[b], seed=seed)
        unpaired = (points[a]["kid_generated_se"] ** 2 + points[b]["kid_generated_se"] ** 2) ** 0.5
        difference = points[a]["kid_mean"] - points[b]["kid_mean"]
        pairs.append({"a": a, "b": b, "kid_difference": difference, "paired_se": paired, "unpaired_se": unpaired,
                      "paired_z": difference / paired if paired > 0 else None})  # None: identical sets
    return {"points": points, "pairs": pairs}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout (the reference)")
    parser.add_argument("--batches", nargs="+", required=True, help="batch folders kept by --resume_dir (two or more)")
    parser.add_argument("--seed", type=int, default=0, help="KID subsets and reference rows, as pipeline.evaluate")
    parser.add_argument("--cache_dir", default=None, help="reference features cache (default: pipeline.evaluate's)")
    parser.add_argument("--out", default="results/nfe/paired_kid.json")
    args = parser.parse_args(argv)
    if len(args.batches) < 2:
        raise ValueError("--batches needs at least two folders to compare")
    stored = {Path(folder).name: read_batches(folder) for folder in args.batches}
    check_same_noise({name: samples.settings for name, samples in stored.items()},
                     {name: len(samples.images) for name, samples in stored.items()})
    reference = load_or_compute_reference(args.train_data_dir, cache_dir=args.cache_dir)
    features = {name: extract_features(as_nchw_uint8(samples.images), progress=True)[0]
                for name, samples in stored.items()}
    result = paired_kid(reference["features"], features, args.seed)
    first_settings = next(iter(stored.values())).settings
    result["protocol"] = {"num_samples": len(next(iter(features.values()))), "seed": first_settings["seed"],
                          "batch_size": first_settings["batch_size"], "reference_images": reference["num"],
                          "folders": args.batches, "kid_seed": args.seed,
                          "sampling": {name: samples.settings for name, samples in stored.items()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    for pair in result["pairs"]:
        print(f"KID {pair['a']} - {pair['b']}: {pair['kid_difference'] * 1e3:+.2f}e-3, paired s.e. "
              f"{pair['paired_se'] * 1e3:.2f}e-3 (unpaired {pair['unpaired_se'] * 1e3:.2f}e-3), "
              f"z = {'-' if pair['paired_z'] is None else format(pair['paired_z'], '+.2f')}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
