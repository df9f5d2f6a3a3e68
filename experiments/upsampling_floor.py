"""The best FID a model trained at a lower resolution can score at the evaluation resolution.

    python experiments/upsampling_floor.py --train_data_dir ../shared/celeba --low_resolution 32 --num_images 2000

The recipe study scores the 32x32 recipe's samples upsampled to 64x64 (``pipeline.evaluate`` resizes samples with the
reference's filter) against the 64x64 reference. Even perfect 32x32 samples lack the detail between 32 and 64 pixels,
so that FID has a floor, measured here with real images standing in for perfect samples: N reference images (a
seeded random subset) go through the training preprocessing at the low resolution, are upsampled the way samples
are, and are scored against the whole reference, next to the same N images at full resolution (their cached
reference features). Both sets belong to the reference, which lowers both scores alike; their difference is what
the lost resolution costs. Writes results/recipes/upsampling_floor.json and a picture of the first pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from pipeline.cli import ArgumentParser, run_cli
from pipeline.data.celeba import ExamplePreprocessor, example_key, load_celeba
from pipeline.data.images import make_grid
from pipeline.data.preprocess import Preprocessing, resize_samples
from pipeline.evaluate import label
from pipeline.evaluation.inception import extract_features
from pipeline.evaluation.reference_stats import load_or_compute_reference
from pipeline.evaluation.scores import as_nchw_uint8, score_features

PICTURE_PAIRS = 8
SCORES = ("fid", "kid_mean", "kid_std", "precision", "recall")


def real_images(train_data_dir: str, requests: list[tuple[Preprocessing, list[str]]],
                progress: bool = True) -> list[np.ndarray]:
    """For each (preprocessing, file keys): the uint8 NHWC train images with those keys, in that order. One pass over
    the split serves every request: reading it, not preprocessing, is the slow part."""
    wanted = [(ExamplePreprocessor(prep), set(keys)) for prep, keys in requests]
    found = [{} for _ in requests]
    for example in tqdm(load_celeba(train_data_dir=train_data_dir), desc="reading train split", unit="img",
                        disable=not progress):
        key = example_key(example["image"])
        for (preprocessor, keys), images in zip(wanted, found):
            if key in keys:
                images[key] = preprocessor(example)["pixels"]
    for (_, keys), images in zip(requests, found):
        missing = [key for key in keys if key not in images]
        if missing:
            raise FileNotFoundError(f"{len(missing)} reference images not found in {train_data_dir}, "
                                    f"e.g. {missing[0]}")
    return [np.ascontiguousarray(np.stack([images[key] for key in keys]).transpose(0, 2, 3, 1))
            for (_, keys), images in zip(requests, found)]


def upsampling_floor(train_data_dir: str, low_resolution: int, num_images: int, prep: Preprocessing, seed: int = 0,
                     cache_dir: str | None = None, progress: bool = True) -> tuple[dict, Image.Image]:
    """(scores of the N images at full resolution and through ``low_resolution``, a picture of the first pairs)."""
    reference = load_or_compute_reference(train_data_dir, prep=prep, cache_dir=cache_dir, progress=progress)
    if not 2 <= num_images <= reference["num"]:
        raise ValueError(f"--num_images must be between 2 and the {reference['num']} reference images, "
                         f"got {num_images}")
    if not 0 < low_resolution <= prep.resolution:
        raise ValueError(f"--low_resolution must be in 1..{prep.resolution}, got {low_resolution}")
    chosen = torch.randperm(reference["num"], generator=torch.Generator().manual_seed(seed))[:num_images].sort().values
    keys = [reference["keys"][i] for i in chosen]
    low, originals = real_images(train_data_dir, [(replace(prep, resolution=low_resolution), keys),
                                                  (prep, keys[:PICTURE_PAIRS])], progress)
    upsampled = resize_samples(low, prep.resolution, prep.resample)
    features, _ = extract_features(as_nchw_uint8(upsampled), progress=progress)
    scores = {f"{prep.resolution}px": score_features(reference["features"][chosen], reference["features"], reference),
              f"{low_resolution}px_upsampled": score_features(features, reference["features"], reference)}
    pairs = make_grid(np.concatenate([originals, upsampled[:PICTURE_PAIRS]]), columns=len(originals))
    result = {"label": label(num_images), "num_images": num_images, "seed": seed, "low_resolution": low_resolution,
              "resolution": prep.resolution, "upsampling_filter": prep.resample,
              "images": "seeded random subset of the reference (part of it)",
              "reference": {**reference["fields"], "num_images": reference["num"]},
              "scores": {name: {key: score[key] for key in SCORES} for name, score in scores.items()},
              "fid_floor_cost": scores[f"{low_resolution}px_upsampled"]["fid"] - scores[f"{prep.resolution}px"]["fid"]}
    return result, pairs


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout (the reference)")
    parser.add_argument("--low_resolution", type=int, default=32, help="the resolution the model was trained at")
    parser.add_argument("--num_images", type=int, default=2000, help="as many as the samples being compared")
    parser.add_argument("--resolution", type=int, default=64, help="the evaluation (reference) resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=None, help="reference features cache (default: pipeline.evaluate's)")
    parser.add_argument("--out", default="results/recipes/upsampling_floor.json")
    args = parser.parse_args(argv)
    result, pairs = upsampling_floor(args.train_data_dir, args.low_resolution, args.num_images,
                                     Preprocessing(resolution=args.resolution), args.seed, args.cache_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture = out.with_name(out.stem + "_pairs.png")
    pairs.save(picture)
    out.write_text(json.dumps({**result, "picture": str(picture)}, indent=1))
    for name, score in result["scores"].items():
        print(f"{result['label']} {name}: FID {score['fid']:.2f}, KID {score['kid_mean'] * 1e3:.2f} "
              f"+- {score['kid_std'] * 1e3:.2f} x1e-3, precision {score['precision']:.3f}, "
              f"recall {score['recall']:.3f}")
    print(f"wrote {args.out} and {picture}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
