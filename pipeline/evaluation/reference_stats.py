"""Inception features of real images, computed once and cached: the reference every FID, KID and memorization
number is measured against.

The cache key holds everything that changes FID: the image source and split, the preprocessing (crop, resolution,
resize filter), the image count and the Inception file's SHA-1. ``load_or_compute_reference`` is the entry point for
evaluation, FID during training and the benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.celeba import HUB_CONFIG, load_celeba, preprocessed_batches, read_official_layout
from ..data.preprocess import Preprocessing
from ..evaluation.inception import BATCH_SIZE, RESIZE_FILTER, load_inception, weights_sha1
from ..evaluation.metrics import feature_stats

# CELEBA_DIFFUSION_CACHE moves every cache of the project (tests point it at a temporary folder)
DEFAULT_CACHE_DIR = (Path(os.environ.get("CELEBA_DIFFUSION_CACHE", "~/.cache/celeba-diffusion")).expanduser()
                     / "ref_stats")
CACHE_VERSION = 1


def reference_fields(train_data_dir: str | None, dataset_name: str | None, dataset_config_name: str | None,
                     split: str, prep: Preprocessing, num_images: int | None) -> dict:
    """Everything that determines the reference features; its hash names the cache file. For a local folder,
    "all images" is resolved to the present count, so a folder that gained images gets a new key."""
    if (train_data_dir is None) == (dataset_name is None):
        raise ValueError("give exactly one of --train_data_dir and --dataset_name for the reference images")
    if train_data_dir is not None:
        available = len(read_official_layout(train_data_dir).records.get(split, []))
        if available < 2:
            raise ValueError(f"{train_data_dir} has {available} images of split {split!r}; need at least 2")
        if num_images is not None and num_images > available:
            raise ValueError(f"{num_images} reference images requested, split {split!r} of {train_data_dir} has "
                             f"{available}")
        source, count = f"local:{os.path.realpath(train_data_dir)}", num_images or available
    else:
        source, count = f"hub:{dataset_name}/{dataset_config_name}", num_images or "all"
    return {"version": CACHE_VERSION, "source": source, "split": split, "preprocessing": prep.to_dict(),
            "num_images": count, "network_sha1": weights_sha1(), "resize_filter": RESIZE_FILTER}


def reference_key(fields: dict) -> str:
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    return f"{fields['split']}-{fields['preprocessing']['resolution']}px-{fields['num_images']}-{digest}"


def stream_real_images(train_data_dir, dataset_name, dataset_config_name, split, prep, num_images, batch_size,
                       keys: set[str] | None = None):
    """Batches (uint8 NCHW, file keys) of preprocessed real images in stream order; only ``keys`` when given."""
    raw = load_celeba(dataset_name, dataset_config_name if dataset_name else None, train_data_dir, split)
    return preprocessed_batches(raw if num_images is None else raw.take(num_images), prep, batch_size, keys)


def load_or_compute_reference(train_data_dir: str | None = None, dataset_name: str | None = None,
                              dataset_config_name: str | None = HUB_CONFIG, split: str = "train",
                              prep: Preprocessing | None = None, num_images: int | None = None,
                              cache_dir: str | os.PathLike | None = None, batch_size: int = BATCH_SIZE,
                              progress: bool = True, device: str = "cpu") -> dict:
    """Features (float32, rows sorted by file name), file keys, mean/covariance/covariance root (float64) of real
    images; from ``cache_dir/<key>.pt`` when present, else computed and cached. Default: all images of the split."""
    prep = prep or Preprocessing()
    fields = reference_fields(train_data_dir, dataset_name, dataset_config_name, split, prep, num_images)
    path = Path(cache_dir or DEFAULT_CACHE_DIR) / f"{reference_key(fields)}.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached.get("fields") == fields:
            return {**cached, "cache_file": str(path), "from_cache": True}
    started = time.perf_counter()
    model, chunks, keys = load_inception(device), [], []
    total = fields["num_images"] if isinstance(fields["num_images"], int) else None
    with tqdm(total=total, desc=f"reference {split}", unit="img", disable=not progress) as bar:
        for batch, names in stream_real_images(train_data_dir, dataset_name, dataset_config_name, split, prep,
                                               num_images, batch_size):
            chunks.append(model(batch))
            keys.extend(names)
            bar.update(len(names))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    features = torch.cat(chunks)[order]
    seconds = time.perf_counter() - started
    reference = {"fields": fields, "features": features, "keys": [keys[i] for i in order],
                 **feature_stats(features, with_sqrt=True), "seconds": seconds,
                 "features_per_second": len(features) / seconds}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(reference, partial)
    os.replace(partial, path)  # atomic: a killed run never leaves a truncated cache file
    return {**reference, "cache_file": str(path), "from_cache": False}


HELDOUT_SPLITS = ("valid", "test")  # CelebA's splits that training never sees


def heldout_features(train_data_dir: str, prep: Preprocessing, cache_dir: str | None = None,
                     device: str = "cpu") -> torch.Tensor:
    """Inception features of every valid and test image present in ``train_data_dir`` (cached per split)."""
    return torch.cat([load_or_compute_reference(train_data_dir, split=split, prep=prep, cache_dir=cache_dir,
                                                device=device)["features"] for split in HELDOUT_SPLITS])
