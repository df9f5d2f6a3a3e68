"""How close does each deterministic sampler come to the exact solution of the probability-flow ODE on our network?

    python experiments/solver_convergence.py --model pretrained/celeba-64 --num_images 8

FID can say that two solvers of the same ODE disagree, not which one is right. From the same initial noise, converged
solvers end at the same image, so every (sampler, steps) point here is compared image by image with a reference
solution: exact DDIM with ``--reference`` steps (first order, so its own error shrinks as 1/steps), checked against a
second-order solver with about as many NFE (``--check``): the distance between the two bounds the reference's error.
Distances are RMS over pixels of the 8-bit images, in levels (0-255), mean and min-max over images. The first
``--num_images`` of the FID protocol's first batch (same seed, same initial noise), with the UNet in bf16 like the FID
points by default (its rounding shows in the check's distance).
Writes results/solver_convergence.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from benchmarks.fid_vs_nfe import parse_points
from pipeline.cli import DEFAULT_DEVICE, ArgumentParser, device_argument, run_cli
from pipeline.generate import generate, load_pipeline
from pipeline.pipeline_celeba import MIXED_PRECISION
from pipeline.pipeline_folder import weights_checksum

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_POINTS = ["ddim:10,20,50", "dpm++2m:10,15,20,25", "heun:10,18"]


def rms_levels(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image RMS difference of uint8 NHWC images, in 8-bit levels."""
    return np.sqrt(((images.astype(np.float64) - reference.astype(np.float64)) ** 2).mean(axis=(1, 2, 3)))


def summary(distances: np.ndarray) -> dict:
    return {"rms_levels_mean": float(distances.mean()), "rms_levels_min": float(distances.min()),
            "rms_levels_max": float(distances.max())}


def convergence(pipe, points: list[tuple[str, int]], reference: tuple[str, int], check: tuple[str, int],
                num_images: int, seed: int = 0, mixed_precision: str = "no") -> dict:
    """Distances of every point's samples from the reference solution (and of the check solution from it)."""
    def sample(name: str, steps: int) -> tuple[np.ndarray, float]:
        return generate(pipe, num_images, name, steps, seed, batch_size=num_images, progress=False,
                        mixed_precision=mixed_precision)

    with tqdm(total=len(points) + 2, desc="solvers", unit="point") as bar:
        reference_images, reference_nfe = sample(*reference)
        bar.update()
        check_images, check_nfe = sample(*check)
        bar.update()
        rows = []
        for name, steps in points:
            images, nfe = sample(name, steps)
            rows.append({"sampler": name, "steps": steps, "nfe": nfe, **summary(rms_levels(images, reference_images))})
            bar.update()
    return {"reference": {"sampler": reference[0], "steps": reference[1], "nfe": reference_nfe},
            "check": {"sampler": check[0], "steps": check[1], "nfe": check_nfe,
                      **summary(rms_levels(check_images, reference_images))},
            "points": rows}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained/celeba-64")
    parser.add_argument("--num_images", type=int, default=8)
    parser.add_argument("--points", nargs="*", default=DEFAULT_POINTS, help="e.g. ddim:10,20 heun:18")
    parser.add_argument("--reference", default="ddim:1000", help="the reference solution, one sampler:steps")
    parser.add_argument("--check", default="heun:250", help="a second solution to bound the reference's error")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed_precision", default="bf16", choices=MIXED_PRECISION)
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
    parser.add_argument("--out", default="results/solver_convergence.json")
    args = parser.parse_args(argv)
    if args.num_images <= 0:
        raise ValueError("--num_images must be positive")
    points = parse_points(args.points)  # bad names fail before any sampling
    (reference,), (check,) = parse_points([args.reference]), parse_points([args.check])
    pipe = load_pipeline(args.model, args.device)
    result = {"model": args.model, "unet_sha256": weights_checksum(pipe.unet), "num_images": args.num_images,
              "seed": args.seed, "mixed_precision": args.mixed_precision, "device": pipe.device.type,
              "distance": "RMS over pixels of the 8-bit images, in levels; mean and min-max over images",
              **convergence(pipe, points, reference, check, args.num_images, args.seed, args.mixed_precision)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    check = result["check"]
    print(f"reference {reference[0]}:{reference[1]}; check {check['sampler']}:{check['steps']} "
          f"({check['nfe']:g} NFE) is {check['rms_levels_mean']:.2f} levels from it")
    for row in result["points"]:
        print(f"{row['sampler']:>12} {row['steps']:>4} steps {row['nfe']:>6g} NFE  {row['rms_levels_mean']:7.2f} "
              f"levels ({row['rms_levels_min']:.2f}-{row['rms_levels_max']:.2f})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
