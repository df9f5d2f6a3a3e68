"""How exactly does DDIM inversion give a real face back? Reconstruction PSNR of invert-then-decode against steps.

    python benchmarks/inversion_psnr.py --model pretrained/celeba-64 --train_data_dir ../shared/celeba \
        --steps 10 20 50 100 --num_images 16 --out results/edit/inversion_psnr.json

Held-out faces (valid split, then test: never trained on) are inverted to noise by the deterministic DDIM map of S
steps (``pipeline.sampling.editing.invert``) and decoded by the same map. The PSNR of the result against the face
measures the discretisation error of the probability-flow ODE run both ways, which vanishes only as S grows; the
interpolations of ``pipeline.edit interpolate`` decode such inversions. Per step count the JSON holds each face's PSNR,
their mean and standard error, the network evaluations (all faces are one batch) and the seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.edit_fid import heldout_faces
from pipeline.cli import DEFAULT_DEVICE, ArgumentParser, device_argument, run_cli
from pipeline.data.preprocess import pipeline_preprocessing, to_model_range
from pipeline.edit import psnr
from pipeline.pipeline_celeba import MIXED_PRECISION
from pipeline.pipeline_folder import load_pipeline, weights_checksum
from pipeline.sampling.editing import decode, invert


def reconstruction(pipe, faces: torch.Tensor, steps: int) -> dict:
    """PSNR of each face (NCHW, [-1, 1]) after inversion and decoding with ``steps`` DDIM steps, and the cost."""
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    started = time.perf_counter()
    try:
        restored = decode(pipe, invert(pipe, faces, steps), steps).float()
    finally:
        hook.remove()
    values = [psnr(restored[i:i + 1], faces[i:i + 1]) for i in range(len(faces))]
    return {"steps": steps, "psnr": values, "psnr_mean": float(np.mean(values)),
            "psnr_stderr": float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None,
            "nfe": len(calls), "seconds": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="pretrained/celeba-64")
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout, with valid/test")
    parser.add_argument("--steps", nargs="+", type=int, default=[10, 20, 50, 100])
    parser.add_argument("--num_images", type=int, default=16)
    parser.add_argument("--mixed_precision", default="no", choices=MIXED_PRECISION,
                        help="the UNet's precision (full by default, as pipeline.edit runs it)")
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.num_images < 1 or min(args.steps) < 1:
        raise ValueError("--num_images and every --steps value must be positive")
    pipe = load_pipeline(args.model, args.device)
    pipe.set_progress_bar_config(disable=True)
    faces = to_model_range(heldout_faces(args.train_data_dir, pipeline_preprocessing(pipe), args.num_images))
    faces = faces.to(pipe.device)
    rows = []
    with pipe.precision(args.mixed_precision):
        for steps in tqdm(sorted(set(args.steps)), desc="step counts", unit="count"):
            rows.append(reconstruction(pipe, faces, steps))
    result = {"model": args.model, "unet_sha256": weights_checksum(pipe.unet), "num_images": args.num_images,
              "faces": "valid split, then test", "mixed_precision": args.mixed_precision,
              "device": pipe.device.type, "points": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for row in rows:
        print(f"{row['steps']:>5} steps  {row['nfe']:>5} NFE  PSNR {row['psnr_mean']:.2f} dB")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
