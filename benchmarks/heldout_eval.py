"""How close are the model's faces to faces it never saw? FID/KID against CelebA's held-out images, with the floor.

    python benchmarks/heldout_eval.py --model pretrained/celeba-64 --train_data_dir ../shared/celeba \
        --out results/heldout/celeba-64.json

The reference is every image of the official valid and test splits present in the folder (never trained on). The
same scores are computed for as many real training images (a seeded random subset of the train split's cached
features): that is the floor a perfect model of the training distribution would reach against the same reference
with the same sample count, since FID is biased at small N. Samples are drawn with the same count. The memorization
check compares each sample's distance to its nearest training image with that to its nearest held-out image.
Writes one JSON with model, floor and their difference. ``--resume_dir`` keeps the samples' batches, and
``--reuse_batches`` takes them from an FID run of the same sampler, seed and batch size, whose first samples they are.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from pipeline.cli import DEFAULT_DEVICE, ArgumentParser, device_argument, run_cli
from pipeline.data.preprocess import pipeline_preprocessing
from pipeline.evaluation.inception import extract_features, load_inception
from pipeline.evaluation.metrics import feature_stats, memorization
from pipeline.evaluation.reference_stats import HELDOUT_SPLITS, heldout_features, load_or_compute_reference
from pipeline.evaluation.scores import as_nchw_uint8, score_features
from pipeline.generate import (
    MIXED_PRECISION_HELP,
    add_resume_arguments,
    check_resume_arguments,
    generate,
    load_for_sampling,
    open_batch_store,
)
from pipeline.pipeline_celeba import MIXED_PRECISION, default_mixed_precision


def scores(fake: torch.Tensor, heldout: torch.Tensor, seed: int) -> dict:
    """FID/KID/precision/recall against the held-out set (KID subsets of at most the smaller set's size)."""
    result = score_features(fake, heldout, feature_stats(heldout), kid_subset_size=min(1000, len(fake),
                                                                                        len(heldout)), seed=seed)
    return {key: result[key] for key in ("fid", "kid_mean", "kid_std", "kid_generated_se", "precision", "recall")}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout, with valid/test")
    parser.add_argument("--scheduler", default=None, help="sampler; default: the model's own (its saved scheduler)")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's default_num_inference_steps")
    parser.add_argument("--num_samples", type=int, default=None, help="default: as many as held-out images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=32, help="generation batch size")
    add_resume_arguments(parser, "an FID-10k run of the same sampler and seed")
    parser.add_argument("--mixed_precision", default=None, choices=MIXED_PRECISION, help=MIXED_PRECISION_HELP)
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.batch_size <= 0:
        raise ValueError(f"--batch_size must be positive, got {args.batch_size}")
    check_resume_arguments(args)
    args.mixed_precision = args.mixed_precision or default_mixed_precision(args.device)
    pipe, args.scheduler, args.steps = load_for_sampling(args.model, args.device, args.scheduler, args.steps,
                                                         args.mixed_precision)
    prep = pipeline_preprocessing(pipe)
    heldout = heldout_features(args.train_data_dir, prep, args.cache_dir, args.device)
    count = args.num_samples or len(heldout)
    if count < 2:
        raise ValueError(f"need at least 2 samples, got {count}")
    train = load_or_compute_reference(args.train_data_dir, split="train", prep=prep, cache_dir=args.cache_dir,
                                      device=args.device)["features"]
    if count > len(train):
        raise ValueError(f"{count} samples requested, the train split has {len(train)} images for the floor")
    real = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:count]]
    started = time.perf_counter()
    sampling = {"scheduler": args.scheduler, "steps": args.steps, "seed": args.seed, "batch_size": args.batch_size,
                "mixed_precision": args.mixed_precision}
    store = (open_batch_store(args.resume_dir, pipe, **sampling, reuse=args.reuse_batches) if args.resume_dir
             else None)
    images, nfe = generate(pipe, count, **sampling, store=store)
    fake, _ = extract_features(as_nchw_uint8(images), progress=True, model=load_inception(args.device))
    model, floor = scores(fake, heldout, args.seed), scores(real, heldout, args.seed)
    result = {
        "model": args.model, "sampler": args.scheduler, "steps": args.steps, "nfe": nfe, "seed": args.seed,
        "batch_size": args.batch_size,
        "mixed_precision": args.mixed_precision, "num_samples": count, "num_heldout": len(heldout),
        "heldout_splits": list(HELDOUT_SPLITS), "preprocessing": prep.to_dict(),
        "model_scores": model, "train_floor": floor,
        "fid_above_floor": model["fid"] - floor["fid"], "kid_above_floor": model["kid_mean"] - floor["kid_mean"],
        "memorization": memorization(fake, train, heldout, args.seed)["summary"],
        # batches loaded from --resume_dir (reused_batches of them from --reuse_batches) were generated earlier
        "resumed_batches": store.loaded if store is not None else 0,
        "reused_batches": store.reused if store is not None else 0,
        "seconds": time.perf_counter() - started}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"held-out FID-{count}: model {model['fid']:.2f}, real training images {floor['fid']:.2f} (floor), "
          f"difference {result['fid_above_floor']:.2f}; KID x1e3 {model['kid_mean'] * 1e3:.2f} vs "
          f"{floor['kid_mean'] * 1e3:.2f} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
