"""How a face emerges from noise: x_t and the model's estimate of x_0 at several t along one sampling trajectory
(``ddim-clip`` by default, 50 steps).

    python -m pipeline.trajectory --model pretrained/celeba-64 --out results/samples/trajectory.png

For each image, the top row shows the current sample x_t and the bottom row the denoiser's prediction of the clean
image x0_hat(x_t, t) (Tweedie's estimate); early on x0_hat is a blurry average face, details appear as t falls.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from PIL import Image, ImageDraw, ImageFont

from .cli import DEFAULT_DEVICE, ArgumentParser, default_threads, device_argument, run_cli
from .data.images import make_grid
from .data.preprocess import to_uint8_nhwc
from .generate import DEFAULT_MODEL, MIXED_PRECISION_HELP, load_pipeline
from .pipeline_celeba import MIXED_PRECISION
from .sampling.schedulers import check_steps, scheduler_for

# Schedulers whose step returns pred_original_sample (the x0 estimate shown in the bottom rows).
TRAJECTORY_SAMPLERS = ("ddim", "ddim-clip", "ddpm")


def snapshot_indices(steps: int, count: int) -> list[int]:
    """``count`` step indices spread evenly over ``range(steps)``, always including the first and the last."""
    if not 2 <= count <= steps:
        raise ValueError(f"--snapshots must be between 2 and --steps ({steps}), got {count}")
    return sorted({round(i * (steps - 1) / (count - 1)) for i in range(count)})


def record_trajectory(pipe, scheduler: str, steps: int, num_images: int, snapshots: int, seed: int,
                      mixed_precision: str | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Timesteps t, x_t and x0_hat at the snapshot steps: tensors of shape (snapshots, N, C, H, W)."""
    if scheduler not in TRAJECTORY_SAMPLERS:
        raise ValueError(f"--scheduler must be one of {TRAJECTORY_SAMPLERS} (they report x0_hat), got {scheduler!r}")
    sampling_scheduler = scheduler_for(pipe, scheduler)
    check_steps(scheduler, steps, pipe.scheduler.config.num_train_timesteps)
    wanted = set(snapshot_indices(steps, snapshots))
    timesteps, samples, estimates = [], [], []

    def keep(_pipe, index, t, tensors):
        if index in wanted:
            timesteps.append(int(t))
            samples.append(tensors["sample"].float().cpu())
            estimates.append(tensors["pred_original_sample"].float().cpu())

    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=num_images, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
         output_type="pt", scheduler=sampling_scheduler, callback_on_step_end=keep, mixed_precision=mixed_precision)
    return timesteps, torch.stack(samples), torch.stack(estimates)


def trajectory_picture(timesteps: list[int], samples: torch.Tensor, estimates: torch.Tensor,
                       upscale: int = 2) -> Image.Image:
    """Per image two rows (x_t, then x0_hat), one column per snapshot, labelled with t."""
    columns, count = samples.shape[:2]
    rows = [row for image in range(count) for row in (samples[:, image], estimates[:, image])]
    grid = make_grid(to_uint8_nhwc(torch.cat(rows)), columns=columns, upscale=upscale)
    label_height, margin = 18, 44
    canvas = Image.new("RGB", (grid.width + margin, grid.height + label_height), "white")
    canvas.paste(grid, (margin, label_height))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    cell = grid.width / columns
    for column, t in enumerate(timesteps):
        draw.text((margin + column * cell + 4, 3), f"t={t}", fill="black", font=font)
    row_height = grid.height / len(rows)
    for row in range(len(rows)):
        draw.text((4, label_height + row * row_height + row_height / 2 - 6), ("x_t", "x0_hat")[row % 2],
                  fill="black", font=font)
    return canvas


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder")
    parser.add_argument("--scheduler", default="ddpm", choices=TRAJECTORY_SAMPLERS)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--num_images", type=int, default=4, help="trajectories shown (two rows each)")
    parser.add_argument("--snapshots", type=int, default=8, help="columns: steps shown, first and last included")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed_precision", default=None, choices=MIXED_PRECISION, help=MIXED_PRECISION_HELP)
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE,
                        help="where the UNet runs (default: cuda if available)")
    parser.add_argument("--upscale", type=int, default=2, help="nearest-neighbour factor for viewing")
    parser.add_argument("--out", default="results/samples/trajectory.png")
    args = parser.parse_args(argv)
    if args.num_images <= 0 or args.upscale <= 0:
        raise ValueError("--num_images and --upscale must be positive")
    torch.set_num_threads(default_threads())
    pipe = load_pipeline(args.model, args.device)
    timesteps, samples, estimates = record_trajectory(pipe, args.scheduler, args.steps, args.num_images,
                                                      args.snapshots, args.seed, args.mixed_precision)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    trajectory_picture(timesteps, samples, estimates, args.upscale).save(args.out)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as handle:
        json.dump({"model": args.model, "scheduler": args.scheduler, "steps": args.steps, "timesteps": timesteps,
                   "num_images": args.num_images, "seed": args.seed,
                   "mixed_precision": pipe.resolve_mixed_precision(args.mixed_precision)},
                  handle, indent=1)
    print(f"wrote {args.out} ({len(timesteps)} snapshots of {args.num_images} trajectories)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
