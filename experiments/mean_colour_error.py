"""How well does the network estimate the noise's spatial mean (the image's mean colour) at each noise level?

    python experiments/mean_colour_error.py --model pretrained/celeba-64 --train_data_dir ../shared/celeba

Real training images are noised to x_t = alpha x_0 + sigma eps at several labels t (fixed noise, seed 0) and the
noise estimate eps_hat (any prediction type, converted) is compared with eps:

- ``mse``: mean squared error per pixel, the training loss at t;
- ``mean_error_ratio``: rms over images and channels of mean_hw(eps_hat - eps), divided by the rms of mean_hw(eps)
  (which is 1/sqrt(H W)): 0 = the mean is estimated exactly, 1 = no better than predicting a zero mean;
- ``x0_mean_error``: the same error carried into Tweedie's estimate x0_hat = (x_t - sigma eps_hat) / alpha, i.e.
  sigma / alpha times the mean error: how far off the mean colour of the predicted image is;
- the same three with the closed-form mean of ``MeanColourDenoiser`` (when the pipeline has a mean_colour_prior).

And on pure noise at t = T - 1, the regression slope of mean_hw(eps_hat) on mean_hw(x_T) and of eps_hat on x_T pixel
by pixel: the optimal estimate passes both through (slope ~1), a network that ignores the mean has a mean slope ~0.
Writes results/mean_colour/noise_mean_error.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from benchmarks.denoiser_response import vp_noise_estimator
from pipeline.cli import ArgumentParser, run_cli
from pipeline.data.celeba import load_eval_images
from pipeline.data.preprocess import pipeline_preprocessing, to_model_range
from pipeline.denoisers import MeanColourDenoiser
from pipeline.generate import load_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LABELS = [999, 950, 900, 800, 700, 600, 500, 300, 100, 10]


def errors(eps_hat: torch.Tensor, eps: torch.Tensor, alpha: float, sigma: float) -> dict:
    mean_error = (eps_hat - eps).mean(dim=(2, 3)).pow(2).mean().sqrt().item()
    return {"mse": (eps_hat - eps).pow(2).mean().item(),
            "mean_error_ratio": mean_error / eps.double().mean(dim=(2, 3)).pow(2).mean().sqrt().item(),
            "x0_mean_error": sigma / alpha * mean_error}


def slope(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    inputs, outputs = inputs.double().flatten(), outputs.double().flatten()
    return (inputs @ outputs / (inputs @ inputs)).item()


@torch.no_grad()
def measure(pipe, images: torch.Tensor, labels: list[int], seed: int = 0) -> dict:
    """The per-label errors of the pipeline's denoiser (and of its mean-colour-corrected version) on ``images``."""
    denoisers = {"network": pipe.denoiser}
    prediction_type = pipe.scheduler.config.prediction_type
    if pipe.config.mean_colour_prior is not None:
        denoisers["mean_colour_corrected"] = MeanColourDenoiser(pipe.denoiser, pipe.scheduler.alphas_cumprod,
                                                                prediction_type, pipe.config.mean_colour_prior)
    alphas_cumprod = pipe.scheduler.alphas_cumprod.double()
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(images.shape, generator=generator)
    rows = []
    for label in labels:
        alpha, sigma = alphas_cumprod[label].sqrt().item(), (1 - alphas_cumprod[label]).sqrt().item()
        x = (alpha * images + sigma * eps).float()
        rows.append({"t": label, "snr": alpha**2 / sigma**2, **{
            name: errors(vp_noise_estimator(d, prediction_type)(x, label, alpha, sigma), eps, alpha, sigma)
            for name, d in denoisers.items()}})
    last = len(alphas_cumprod) - 1
    alpha, sigma = alphas_cumprod[last].sqrt().item(), (1 - alphas_cumprod[last]).sqrt().item()
    noise = torch.randn(images.shape, generator=generator)
    eps_hat = vp_noise_estimator(pipe.denoiser, prediction_type)(noise, last, alpha, sigma)
    pure_noise = {"t": last, "mean_slope": slope(noise.mean(dim=(2, 3)), eps_hat.mean(dim=(2, 3))),
                  "pixel_slope": slope(noise, eps_hat)}
    return {"labels": rows, "pure_noise": pure_noise}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained/celeba-64")
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout")
    parser.add_argument("--num_images", type=int, default=64, help="first images of the train split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/mean_colour/noise_mean_error.json")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model)
    prep = pipeline_preprocessing(pipe)
    images = to_model_range(load_eval_images(args.train_data_dir, "train", prep.resolution, args.num_images,
                                             prep=prep))
    result = {"model": args.model, "num_images": args.num_images, "seed": args.seed, "fp32": True,
              **measure(pipe, images, LABELS, args.seed)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{'t':>4} {'ratio':>7} {'x0 mean err':>11} {'corrected ratio':>15}")
    for row in result["labels"]:
        corrected = row.get("mean_colour_corrected", {}).get("mean_error_ratio", float("nan"))
        print(f"{row['t']:>4} {row['network']['mean_error_ratio']:7.3f} {row['network']['x0_mean_error']:11.3f} "
              f"{corrected:15.3f}")
    print(f"pure noise at t={result['pure_noise']['t']}: mean slope {result['pure_noise']['mean_slope']:.3f}, "
          f"pixel slope {result['pure_noise']['pixel_slope']:.4f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
