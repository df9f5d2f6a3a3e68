"""FID, KID and precision/recall of generated faces, given Inception features: the scores every evaluation reports.

``score_features`` scores two feature sets; ``fid_against_reference`` is the entry point for FID during training.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .inception import BATCH_SIZE, extract_features
from .metrics import (
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
    kid_generated_standard_error,
    precision_recall,
)


def as_nchw_uint8(images) -> torch.Tensor:
    """uint8 NCHW tensor from a tensor (already NCHW) or a numpy NHWC array (``pipeline.generate`` output)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (NCHW tensor or NHWC array), got {images.dtype} "
                         f"{tuple(images.shape)}")
    return images


def fid_against_reference(images, reference_stats: dict, batch_size: int = BATCH_SIZE) -> float:
    """FID of uint8 images (e.g. 1000 samples during training) against ``load_or_compute_reference(...)``."""
    features, _ = extract_features(as_nchw_uint8(images), batch_size)
    return frechet_distance(reference_stats, feature_stats(features))


def score_features(fake: torch.Tensor, real: torch.Tensor, real_stats: dict | None = None, kid_subset_size: int = 1000,
                   kid_subsets: int = 100, pr_k: int = 3, seed: int = 0) -> dict:
    """FID (all rows of both sets), KID, and precision/recall against a seeded real subset of the fake set's size
    (the k-NN radii shrink with set size, so precision/recall is only meaningful between equal-sized sets)."""
    started = time.perf_counter()
    fid = frechet_distance(real_stats or feature_stats(real), feature_stats(fake))
    kid_mean, kid_std, kid_size = kernel_inception_distance(real, fake, kid_subset_size, kid_subsets, seed)
    kid_generated_se = kid_generated_standard_error(real, fake, seed=seed)
    real_pr = real
    if len(real) > len(fake):
        real_pr = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:len(fake)]]
    precision, recall = precision_recall(real_pr, fake, pr_k)
    return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "kid_generated_se": kid_generated_se,
            "precision": precision, "recall": recall,
            "kid": {"subset_size": kid_size, "subsets": kid_subsets, "kernel": "(x.y/2048 + 1)^3", "seed": seed},
            "precision_recall": {"k": pr_k, "num_real": len(real_pr), "num_fake": len(fake),
                                 "real_subset": "seeded random subset of the reference" if len(real_pr) < len(real)
                                 else "all reference images"},
            "metric_seconds": time.perf_counter() - started}
