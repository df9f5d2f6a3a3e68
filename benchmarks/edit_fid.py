"""How natural are the model's edits of faces it never saw? FID/KID of inpainted and colorized held-out faces.

    python benchmarks/edit_fid.py --model pretrained/celeba-64 --train_data_dir ../shared/celeba \
        --tasks center eyes colorize --methods repaint pc --num_images 1000 --steps 50 --out_dir results/edit

The first ``--num_images`` faces of CelebA's valid then test splits (never trained on) are edited: inpainted with
each named mask of ``pipeline.edit`` (the mask's zeros are filled), or colorized from their grey version, by each
method of ``pipeline.sampling.editing``. The edited faces are scored against all held-out faces, beside the floor:
the same faces unedited, scored the same way (FID is biased at small N, so only the difference means quality).
Per (task, method): <out_dir>/fid_<task>_<method>.json (FID, KID, precision/recall, PSNR of the filled part
against the original, for colorization the ratio of restored to original colour saturation, NFE, the seconds spent
editing in this run and how many batches were resumed instead) and <out_dir>/<task>_<method>.png (original, what
the model saw, result for the first 8 faces); then <out_dir>/edit_fid_summary.json. With ``--resume_dir DIR`` every
finished batch is kept, so an interrupted run continues where it stopped with identical results.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.cli import DEFAULT_DEVICE, ArgumentParser, device_argument, run_cli
from pipeline.data.celeba import load_eval_images, read_official_layout
from pipeline.data.images import make_grid
from pipeline.data.preprocess import pipeline_preprocessing, to_model_range, to_uint8_nhwc
from pipeline.edit import NAMED_MASKS, named_mask, psnr
from pipeline.evaluation.inception import extract_features, load_inception
from pipeline.evaluation.metrics import feature_stats
from pipeline.evaluation.reference_stats import HELDOUT_SPLITS, heldout_features
from pipeline.evaluation.scores import score_features
from pipeline.generate import MIXED_PRECISION_HELP
from pipeline.pipeline_celeba import MIXED_PRECISION, default_mixed_precision
from pipeline.pipeline_folder import load_pipeline, weights_checksum
from pipeline.sampling.editing import COLOUR_BASIS, METHODS, colorize, impute, to_basis
from pipeline.sampling.sample_store import BatchStore

TASKS = (*NAMED_MASKS, "colorize")
SCORES = ("fid", "kid_mean", "kid_std", "kid_generated_se", "precision", "recall")


def heldout_faces(train_data_dir: str, prep, count: int) -> torch.Tensor:
    """The first ``count`` faces of the valid split, then of the test split (uint8 NCHW, the model's preprocessing);
    ValueError when the folder holds fewer."""
    present = read_official_layout(train_data_dir).records
    available = sum(len(present[split]) for split in HELDOUT_SPLITS)
    if available < count:
        raise ValueError(f"{train_data_dir} holds {available} valid and test faces; --num_images {count} asked")
    faces = []
    for split in HELDOUT_SPLITS:
        wanted = min(count - sum(len(batch) for batch in faces), len(present[split]))
        if wanted > 0:
            faces.append(load_eval_images(train_data_dir, split, prep.resolution, wanted, prep=prep))
    return torch.cat(faces)


def scores(features: torch.Tensor, reference: torch.Tensor, seed: int) -> dict:
    result = score_features(features, reference, feature_stats(reference),
                            kid_subset_size=min(1000, len(features), len(reference)), seed=seed)
    return {key: result[key] for key in SCORES}


def chroma_ratio(edited: torch.Tensor, originals: torch.Tensor) -> float:
    """How saturated the edited faces are against the originals: the RMS of their two chroma coordinates (the colour
    axes orthogonal to grey) over that of the originals; 1 when colorization restores as much colour as was removed."""
    def chroma_rms(images: torch.Tensor) -> float:
        return to_basis(images.double(), COLOUR_BASIS)[:, 1:].square().mean().sqrt().item()

    return chroma_rms(edited) / chroma_rms(originals)


def edit_batch(pipe, faces: torch.Tensor, task: str, method: str, steps: int, generator: torch.Generator,
               mixed_precision: str, **options) -> tuple[torch.Tensor, int]:
    """(edited faces in [-1, 1], network evaluations) for one batch of faces in [-1, 1]; ``options`` go to the
    method (RePaint's jump_length and jump_n_sample)."""
    with pipe.precision(mixed_precision):
        if task == "colorize":
            return colorize(pipe, faces, method=method, steps=steps, generator=generator, **options)
        return impute(pipe, faces, named_mask(task, faces.shape[-1]), method=method, steps=steps, generator=generator,
                      **options)


def what_the_model_sees(faces: torch.Tensor, task: str) -> torch.Tensor:
    """The input as given to the edit: the grey face, or the face with its hole in black."""
    if task == "colorize":
        return faces.mean(dim=1, keepdim=True).expand_as(faces)
    mask = named_mask(task, faces.shape[-1])
    return faces * mask - (1 - mask)


def method_options(method: str, args) -> dict:
    """The method's own settings: RePaint's jumps (the other method has none here)."""
    return {"jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample} if method == "repaint" else {}


def run_point(pipe, faces: torch.Tensor, task: str, method: str, args, store: BatchStore | None
              ) -> tuple[np.ndarray, int, float]:
    """All edited faces (uint8 NHWC), the network evaluations per batch and the seconds spent editing."""
    edited, nfe, started = [], 0, time.perf_counter()
    for index, start in enumerate(tqdm(range(0, len(faces), args.batch_size), desc=f"{task} {method}",
                                       unit="batch")):
        batch = faces[start:start + args.batch_size]
        stored = store.load(index, len(batch)) if store else None
        if stored is None:
            generator = torch.Generator().manual_seed(args.seed + index)
            result, nfe = edit_batch(pipe, to_model_range(batch), task, method, args.steps, generator,
                                     args.mixed_precision, **method_options(method, args))
            stored = (to_uint8_nhwc(result.float()), nfe)
            if store:
                store.save(index, *stored)
        edited.append(stored[0])
        nfe = stored[1]
    return np.concatenate(edited), nfe, time.perf_counter() - started


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout, with valid/test")
    parser.add_argument("--tasks", nargs="+", default=["center", "eyes", "colorize"], choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--num_images", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=50, help="steps of each method (repaint: before its jumps)")
    parser.add_argument("--jump_length", type=int, default=5, help="repaint: steps of each jump back")
    parser.add_argument("--jump_n_sample", type=int, default=3, help="repaint: passes over each jump (1: none)")
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="batch i is edited with seed + i")
    parser.add_argument("--mixed_precision", default=None, choices=MIXED_PRECISION, help=MIXED_PRECISION_HELP)
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
    parser.add_argument("--cache_dir", default=None)
    parser.add_argument("--resume_dir", default=None, help="keep each finished batch here (one folder per point)")
    parser.add_argument("--out_dir", required=True)
    args = parser.parse_args(argv)
    args.mixed_precision = args.mixed_precision or default_mixed_precision(args.device)
    for name in ("num_images", "steps", "batch_size", "jump_length", "jump_n_sample"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.num_images < 2:
        raise ValueError(f"--num_images must be at least 2 (FID needs a covariance), got {args.num_images}")
    pipe = load_pipeline(args.model, args.device)
    pipe.set_progress_bar_config(disable=True)
    prep = pipeline_preprocessing(pipe)
    faces = heldout_faces(args.train_data_dir, prep, args.num_images)
    reference = heldout_features(args.train_data_dir, prep, args.cache_dir, args.device)
    inception = load_inception(args.device)
    real, _ = extract_features(faces, progress=True, model=inception)
    floor = scores(real, reference, args.seed)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"model": args.model, "unet_sha256": weights_checksum(pipe.unet), "num_images": len(faces),
               "num_heldout": len(reference), "heldout_splits": list(HELDOUT_SPLITS), "steps": args.steps,
               "seed": args.seed, "mixed_precision": args.mixed_precision, "preprocessing": prep.to_dict(),
               "floor": floor, "points": []}
    for task in args.tasks:
        for method in args.methods:
            settings = {"unet_sha256": summary["unet_sha256"], "task": task, "method": method, "steps": args.steps,
                        "seed": args.seed, "batch_size": args.batch_size, "mixed_precision": args.mixed_precision,
                        "num_images": len(faces), **method_options(method, args)}
            store = BatchStore(Path(args.resume_dir) / f"{task}_{method}", settings) if args.resume_dir else None
            edited, nfe, seconds = run_point(pipe, faces, task, method, args, store)
            features, _ = extract_features(torch.from_numpy(edited).permute(0, 3, 1, 2), progress=True,
                                           model=inception)
            result = scores(features, reference, args.seed)
            result_faces = to_model_range(torch.from_numpy(edited).permute(0, 3, 1, 2))
            originals = to_model_range(faces)
            filled = None if task == "colorize" else 1 - named_mask(task, faces.shape[-1])
            point = {**settings, "model": args.model, "scores": result, "floor": floor,
                     "fid_above_floor": result["fid"] - floor["fid"], "nfe_per_batch": nfe,
                     "psnr": psnr(result_faces, originals, filled),
                     "psnr_where": "whole image" if filled is None else "filled region", "seconds": seconds,
                     # batches kept in --resume_dir were edited by an earlier run, outside "seconds"
                     "resumed_batches": store.loaded if store else 0,
                     **({"chroma_ratio": chroma_ratio(result_faces, originals)} if task == "colorize" else {}),
                     "reference": f"all {len(reference)} {' and '.join(HELDOUT_SPLITS)} faces"}
            (out_dir / f"fid_{task}_{method}.json").write_text(json.dumps(point, indent=1))
            shown = originals[:8]
            rows = [to_uint8_nhwc(shown), to_uint8_nhwc(what_the_model_sees(shown, task)), edited[:8]]
            make_grid(np.concatenate(rows), columns=len(shown), upscale=2).save(out_dir / f"{task}_{method}.png")
            summary["points"].append({"task": task, "method": method, **result, "fid_above_floor":
                                      point["fid_above_floor"], "psnr": point["psnr"], "nfe_per_batch": nfe})
            print(f"{task} {method}: FID-{len(faces)} {result['fid']:.2f} (floor {floor['fid']:.2f}), "
                  f"KID x1e3 {result['kid_mean'] * 1e3:.2f}, PSNR {point['psnr']:.1f} dB on the "
                  f"{point['psnr_where']}, {nfe} NFE per batch, {seconds:.0f} s")
    (out_dir / "edit_fid_summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
