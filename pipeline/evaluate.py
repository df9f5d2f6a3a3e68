"""Score generated faces: FID, KID, precision/recall and memorization against cached real-image features.

    python -m pipeline.evaluate --model PATH --num_samples 10000 --scheduler ddim --steps 50 \
        --train_data_dir ../shared/celeba --out results/eval_ddim50.json
    python -m pipeline.evaluate --model PATH --batches DIR --train_data_dir ../shared/celeba --out results/e.json
    python -m pipeline.evaluate --fake_dir DIR --ref_dir DIR2 --out results/folders.json

Real images are scored through the cached reference features of ``pipeline.evaluation.reference_stats``, read with the
model's own preprocessing. ``--batches`` scores samples of the model that were stored (by ``--resume_dir``'s batch
store) elsewhere, such as on a GPU machine. Folder mode scores two folders as they are (only the Inception resize is
applied).
The scores themselves are ``pipeline.evaluation.scores``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cli import DEFAULT_DEVICE, ArgumentParser, default_threads, device_argument, run_cli
from .data.celeba import HUB_CONFIG, read_official_layout
from .data.images import make_grid
from .data.preprocess import Preprocessing, pipeline_preprocessing, resize_samples
from .evaluation.inception import (
    BATCH_SIZE,
    DESCRIPTION,
    RESIZE_FILTER,
    extract_features,
    load_inception,
    weights_sha1,
)
from .evaluation.metrics import memorization
from .evaluation.reference_stats import DEFAULT_CACHE_DIR, load_or_compute_reference, stream_real_images
from .evaluation.scores import as_nchw_uint8, score_features
from .generate import (
    MIXED_PRECISION_HELP,
    add_resume_arguments,
    check_resume_arguments,
    generate,
    load_for_sampling,
    open_batch_store,
    parse_sampler_options,
)
from .pipeline_celeba import MIXED_PRECISION
from .pipeline_folder import load_pipeline, weights_checksum
from .sampling.sample_store import read_batches
from .sampling.schedulers import ALL_SAMPLERS, get_sampler

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------------ memorization
def split_heldout(reference: dict, source: dict, mode: str, num_heldout: int, prep: Preprocessing,
                  **reference_options) -> tuple[torch.Tensor, list[str], torch.Tensor, dict]:
    """(training features, their keys, held-out features, description): the official test (or valid) split when
    present, else the last ``num_heldout`` reference images by file name, which the training run saw unless it
    excluded them. ``source``: the ``train_data_dir`` / ``dataset_name`` / ``dataset_config_name`` of the images;
    ``mode``: auto, test, valid or tail; ``reference_options`` go to ``load_or_compute_reference``."""
    if mode == "auto":
        has_test = (source["dataset_name"] is not None
                    or bool(read_official_layout(source["train_data_dir"]).records["test"]))
        mode = "test" if has_test else "tail"
    if mode in ("test", "valid"):
        count = num_heldout
        if source["train_data_dir"] is not None:
            count = min(count, len(read_official_layout(source["train_data_dir"]).records[mode]))
        heldout = load_or_compute_reference(**source, split=mode, prep=prep, num_images=count, **reference_options)
        return reference["features"], reference["keys"], heldout["features"], {
            "source": f"official {mode} split, first {heldout['num']} images in stream order",
            "num": heldout["num"], "used_in_training": False, "cache_file": heldout["cache_file"]}
    count = min(num_heldout, reference["num"] // 2)
    keys = reference["keys"]
    return reference["features"][:-count], keys[:-count], reference["features"][-count:], {
        "source": f"last {count} images of the reference ({reference['fields']['split']} split) by file name: "
                  f"{keys[-count]} .. "
                  f"{keys[-1]}; training part = the other {len(keys) - count}",
        "num": count, "used_in_training": "yes, unless the training run excluded them: train_unet.py streams the "
        "whole split, so then the ratio compares two sets of training images and cannot reveal memorization"}


def closest_pairs_picture(fake_images: np.ndarray, mem: dict, train_keys: list[str], source: dict, split: str,
                          prep: Preprocessing, path: Path) -> list[dict]:
    """Save the 8 samples closest to a training image (top row) above those training images (bottom row), read from
    ``source`` (as in ``split_heldout``); returns the pairs."""
    order = torch.argsort(mem["nearest_train_distance"])[:8].tolist()
    wanted = [train_keys[mem["nearest_train_index"][i]] for i in order]
    found = {}
    for batch, names in stream_real_images(**source, split=split, prep=prep, num_images=None, batch_size=64,
                                           keys=set(wanted)):
        found.update(zip(names, batch.permute(0, 2, 3, 1).numpy()))
    train_images = np.stack([found[key] for key in wanted])
    make_grid(np.concatenate([fake_images[order], train_images]), columns=len(order), upscale=2).save(path)
    return [{"sample_index": i, "train_key": key, "distance": float(mem["nearest_train_distance"][i])}
            for i, key in zip(order, wanted)]


# ------------------------------------------------------------------------------------------------------ modes
def cpu_description() -> dict:
    """The CPU a result came from: its model name and the instruction set torch chose kernels for. Samples made on
    hosts with other kernels can differ in their last bits (REPORT §7.3), so every result records it."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    return {"model_name": names[0] if names else platform.processor(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def label(num_samples: int) -> str:
    """FID-10k style label: FID depends on the sample count, so every number carries it."""
    return f"FID-{num_samples / 1000:g}k" if num_samples >= 1000 else f"FID-{num_samples}"


def stored_samples(args) -> tuple:
    """(pipeline, images, settings, NFE) of ``--batches``: samples of ``--model`` stored by ``generate`` elsewhere
    (e.g. on a GPU machine); ``args`` takes the sampling settings they were made with. ValueError when they were
    made with other weights."""
    pipe = load_pipeline(args.model, args.device)
    images, stored, nfe = read_batches(args.batches)
    checksum = weights_checksum(pipe.unet)
    if stored["unet_sha256"] != checksum:
        raise ValueError(f"{args.batches} holds samples of other weights than {args.model} (unet_sha256 "
                         f"{stored['unet_sha256']} there, {checksum} here)")
    args.scheduler, args.steps, args.seed = stored["scheduler"], stored["steps"], stored["seed"]
    args.batch_size, args.eta, args.num_samples = stored["batch_size"], stored["eta"], len(images)
    return pipe, images, stored, nfe


def evaluate_model(args) -> dict:
    if args.scheduler is not None and args.scheduler not in ALL_SAMPLERS:
        raise ValueError(f"unknown scheduler {args.scheduler!r}; choose one of {list(ALL_SAMPLERS)}")
    if args.num_samples < 2 or (args.steps is not None and args.steps <= 0):
        raise ValueError("--num_samples must be at least 2 and --steps positive")
    options = parse_sampler_options(args.sampler_option)
    if args.batches:
        pipe, images, stored, measured_nfe = stored_samples(args)
        precision, options, device = stored["mixed_precision"], stored.get("sampler_options", {}), stored["device"]
    else:  # (the sampler is checked before the reference, which can take minutes)
        pipe, args.scheduler, args.steps = load_for_sampling(args.model, args.device, args.scheduler, args.steps,
                                                             args.mixed_precision, options)
        precision = get_sampler(args.scheduler).resolve_mixed_precision(pipe, args.mixed_precision)
        device = pipe.device.type
    sample_resolution = int(pipe.denoiser.config.sample_size)  # image side, also when unshuffled
    resolution = args.resolution or sample_resolution
    # the references are cropped as the model's training images were, at the scoring resolution
    prep = dataclasses.replace(pipeline_preprocessing(pipe), resolution=resolution)
    source = {"train_data_dir": args.train_data_dir, "dataset_name": args.dataset_name,
              "dataset_config_name": args.dataset_config_name}
    reference = load_or_compute_reference(**source, split=args.split, prep=prep, num_images=args.num_reference,
                                          cache_dir=args.cache_dir, batch_size=args.inception_batch_size,
                                          device=args.device)
    sampling = {"scheduler": args.scheduler, "steps": args.steps, "seed": args.seed, "batch_size": args.batch_size,
                "eta": args.eta, "mixed_precision": precision, "sampler_options": options}
    store = (open_batch_store(args.resume_dir, pipe, **sampling, reuse=args.reuse_batches) if args.resume_dir
             else None)
    generation_seconds = None  # stored samples: generated elsewhere
    if not args.batches:
        started = time.perf_counter()
        images, measured_nfe = generate(pipe, args.num_samples, **sampling, store=store)
        generation_seconds = time.perf_counter() - started
    images = resize_samples(images, resolution, prep.resample)
    if args.save_samples:
        from .data.images import save_pngs
        save_pngs(images, args.save_samples)
    fake, features_per_second = extract_features(as_nchw_uint8(images), args.inception_batch_size, progress=True,
                                                 model=load_inception(args.device))
    result = score_features(fake, reference["features"], reference, args.kid_subset_size, args.kid_subsets,
                            args.pr_k, args.seed)
    train, train_keys, heldout, heldout_info = split_heldout(reference, source, args.heldout, args.num_heldout, prep,
                                                             cache_dir=args.cache_dir,
                                                             batch_size=args.inception_batch_size)
    mem = memorization(fake, train, heldout, args.seed)
    picture = Path(args.out).with_name(Path(args.out).stem + "_closest_pairs.png")
    picture.parent.mkdir(parents=True, exist_ok=True)
    pairs = closest_pairs_picture(images, mem, train_keys, source, args.split, prep, picture)
    result.update({
        "label": label(args.num_samples), "num_samples": args.num_samples, "model": args.model,
        "unet_sha256": weights_checksum(pipe.unet), "sampler": args.scheduler, "sampler_options": options,
        "steps": args.steps, "nfe": measured_nfe,
        "batch_size": args.batch_size, "eta": args.eta, "mixed_precision": precision, "device": device,
        "seed": args.seed, "resolution": resolution, "sample_resolution": sample_resolution,
        "preprocessing": prep.to_dict(),
        "reference": {**reference["fields"], "num_images": reference["num"], "cache_file": reference["cache_file"],
                      "from_cache": reference["from_cache"]},
        "memorization": {**mem["summary"], "heldout": heldout_info, "closest_pairs": pairs,
                         "closest_pairs_picture": str(picture)},
        "generation_seconds": generation_seconds, "features_per_second": features_per_second,
        # batches loaded from --resume_dir (reused_batches of them linked in from --reuse_batches) were generated
        # by an earlier run, outside generation_seconds
        "resumed_batches": store.loaded if store is not None else 0,
        "reused_batches": store.reused if store is not None else 0,
        **({"batches": args.batches} if args.batches else {})})
    return result


def read_folder(folder: str) -> list[torch.Tensor]:
    """All images under ``folder`` (recursive, sorted by path) as uint8 CHW tensors, unchanged except RGB."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_EXTENSIONS))
    if len(paths) < 2:
        raise ValueError(f"{folder} holds {len(paths)} images ({'/'.join(IMAGE_EXTENSIONS)}); need at least 2")
    return [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
            for p in paths]


def evaluate_folders(args) -> dict:
    started = time.perf_counter()
    fake_images, real_images = read_folder(args.fake_dir), read_folder(args.ref_dir)
    inception = load_inception(args.device)
    fake, features_per_second = extract_features(fake_images, args.inception_batch_size, progress=True,
                                                 model=inception)
    real, _ = extract_features(real_images, args.inception_batch_size, progress=True, model=inception)
    feature_seconds = time.perf_counter() - started
    result = score_features(fake, real, None, args.kid_subset_size, args.kid_subsets, args.pr_k, args.seed)
    result.update({"label": label(len(fake)), "num_samples": len(fake), "fake_dir": args.fake_dir,
                   "reference": {"source": args.ref_dir, "num_images": len(real), "preprocessing": "none"},
                   "resolution": sorted({tuple(image.shape[1:]) for image in fake_images}),
                   "features_per_second": (len(fake) + len(real)) / feature_seconds})
    return result


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="pipeline folder to sample from (generation mode)")
    p.add_argument("--num_samples", type=int, default=10000)
    p.add_argument("--scheduler", default=None, metavar="NAME",
                   help=f"sampler: {', '.join(ALL_SAMPLERS)} (pipeline/sampling/schedulers.py); default: the model's "
                        "own (its saved scheduler)")
    p.add_argument("--steps", type=int, default=None, help="default: the model's default_num_inference_steps")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="generation, KID subsets, P/R and memorization subsets")
    p.add_argument("--batches", help="with --model: score the samples of these weights stored by generate's batch "
                   "store (a --resume_dir, e.g. made on a GPU machine) instead of generating; the sampling settings "
                   "are the stored ones")
    p.add_argument("--fake_dir", help="folder of generated images (folder mode, with --ref_dir)")
    p.add_argument("--ref_dir", help="folder of reference images (folder mode)")
    p.add_argument("--train_data_dir", help="CelebA in the official layout: the reference images")
    p.add_argument("--dataset_name", help="or a Hub dataset with the flwrlabs/celeba schema")
    p.add_argument("--dataset_config_name", default=HUB_CONFIG)
    p.add_argument("--split", default="train", help="reference split (the training split by default)")
    p.add_argument("--num_reference", type=int, default=None, help="reference images (default: all of the split)")
    p.add_argument("--resolution", type=int, default=None, help="scoring resolution (default: the model's "
                   "sample_size); samples of another size are resized to it with the references' filter; the "
                   "references are cropped as the model's training images were (its saved preprocessing)")
    p.add_argument("--heldout", default="auto", choices=["auto", "test", "valid", "tail"],
                   help="memorization held-out set: official test split if present (auto), or the reference's tail")
    p.add_argument("--num_heldout", type=int, default=2000)
    p.add_argument("--kid_subset_size", type=int, default=1000)
    p.add_argument("--kid_subsets", type=int, default=100)
    p.add_argument("--pr_k", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=64, help="generation batch size")
    p.add_argument("--mixed_precision", default=None, choices=MIXED_PRECISION, help=MIXED_PRECISION_HELP)
    p.add_argument("--sampler_option", nargs="*", default=[], metavar="KEY=VALUE",
                   help="options of the score-SDE samplers (pipeline/sampling/sde.py OPTIONS), e.g. rtol=1e-3 "
                        "atol=1e-3 for ode-rk45")
    p.add_argument("--inception_batch_size", type=int, default=BATCH_SIZE)
    p.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE,
                   help="where the UNet and Inception run (default: cuda if available); metrics run on the CPU")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS, else all "
                   "cores); use 1 while another job holds a core: two threads competing with it for one core run "
                   "far slower")
    p.add_argument("--cache_dir", default=None, help=f"reference cache (default {DEFAULT_CACHE_DIR})")
    p.add_argument("--save_samples", default=None, help="also save the generated images as PNGs here")
    add_resume_arguments(p, "e.g. the sweep point of this sampler, whose first samples are this run's")
    p.add_argument("--out", default="results/evaluation.json")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if (args.model is None) == (args.fake_dir is None):
        raise ValueError("give either --model (generate and score) or --fake_dir with --ref_dir (score folders)")
    if args.fake_dir is not None and args.ref_dir is None:
        raise ValueError("--fake_dir needs --ref_dir")
    if args.batches is not None and args.resume_dir is not None:
        raise ValueError("--batches scores stored samples; --resume_dir stores new ones: give one of them")
    check_resume_arguments(args)
    sizes = ("num_samples", "steps", "kid_subset_size", "kid_subsets", "pr_k", "batch_size", "inception_batch_size",
             "num_heldout")
    if min(getattr(args, name) for name in sizes if getattr(args, name) is not None) <= 0:
        raise ValueError(f"{', '.join('--' + name for name in sizes)} must be positive")
    torch.set_num_threads(args.threads or default_threads())
    started = time.perf_counter()
    result = evaluate_model(args) if args.model else evaluate_folders(args)
    result.update({"feature_extractor": DESCRIPTION, "network_sha1": weights_sha1(), "resize_filter": RESIZE_FILTER,
                   "threads": torch.get_num_threads(), "cpu": cpu_description(),
                   "total_seconds": time.perf_counter() - started})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"{result['label']}: FID {result['fid']:.2f}  KID {result['kid_mean'] * 1e3:.2f}e-3 "
          f"(+-{result['kid_std'] * 1e3:.2f}e-3 over subsets, +-{result['kid_generated_se'] * 1e3:.2f}e-3 from the "
          f"{result['num_samples']} samples)  precision {result['precision']:.3f}  recall {result['recall']:.3f}"
          f"  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
