"""Can the denoiser follow its input? Its noise estimate's response to the input's mean colour and noise amplitude.

    python benchmarks/denoiser_response.py --model pretrained/celeba-64 --train_data_dir ../shared/celeba \
        --out results/denoiser_response/celeba-64.json

Training images are noised to x_t = alpha x_0 + sigma eps (fixed noise, seed 0) at several labels t, and the noise
estimate eps_hat (any prediction type, converted) is measured under two small perturbations of x_t:

- ``mean_slope``: shift one colour channel of x_t by +-d (d = sigma / sqrt(H W), the standard deviation of the
  noise's spatial mean) and take d mean_hw(eps_hat) / d shift in that channel, averaged over images and channels.
  ``ideal_mean_slope`` is the same derivative of the exact posterior mean when the per-image mean colour is
  N(mu, S) (S fitted on ``--prior_images`` training images): (sigma / D) [(alpha^2 S + sigma^2 / D I)^-1]_kk for D
  pixels; it is ~1 at the top of the schedule. A network whose last normalisation removes each channel's spatial
  mean (an InstanceNorm) answers ~0.
- ``amplitude_slope``: scale the noise part, x_t = alpha x_0 + (1 + l) sigma eps with l = +-0.02, and take
  d log rms(eps_hat) / d l. Where the noise dominates x_t the exact denoiser's estimate scales with it (slope ~1);
  a network blind to its input's scale answers ~0 and leaves the error for an ODE sampler to amplify by
  sigma / alpha.

An EDM-preconditioned model (``--preconditioning edm``) is measured at the same noise levels: label t of the linear
DDPM schedule is its sigma = sigma_t / alpha_t on x_t / alpha_t, and its denoiser D(x; sigma) gives
eps_hat = (x - D) / sigma. Writes one JSON per model: a row per label with both slopes, the ideal mean slope and the
ratio between them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from pipeline import denoisers
from pipeline.cli import ArgumentParser, run_cli
from pipeline.data.celeba import load_eval_images
from pipeline.data.preprocess import pipeline_preprocessing, to_model_range
from pipeline.generate import load_pipeline
from pipeline.models.noise_schedules import schedule_config

LABELS = [999, 950, 900, 800, 700, 500, 300, 100]
AMPLITUDE_STEP = 0.02


def vp_noise_estimator(denoiser, prediction_type: str):
    """``estimate(x, label, alpha, sigma)``: eps_hat in float64 of a DDPM-trained denoiser, whatever it predicts
    (epsilon, v or x_0)."""
    def estimate(x: torch.Tensor, label: int, alpha: float, sigma: float) -> torch.Tensor:
        out = denoiser(x.float(), torch.full((x.shape[0],), label)).sample.double()
        return denoisers.noise_estimate(out, x.double(), alpha, sigma, prediction_type)
    return estimate


def ideal_mean_slopes(covariance: torch.Tensor, alpha: float, sigma: float, pixels: int) -> torch.Tensor:
    """Per channel, d E[mean_hw(eps) | x_t] / d mean_hw(x_t)_k for a N(mu, covariance) mean colour (diagonal of the
    Jacobian (sigma / D) (alpha^2 S + sigma^2 / D I)^-1)."""
    eye = torch.eye(covariance.shape[0], dtype=torch.float64)
    return (sigma / pixels) * torch.linalg.inv(alpha**2 * covariance + (sigma**2 / pixels) * eye).diagonal()


@torch.no_grad()
def response(estimate_noise, alphas_cumprod: torch.Tensor, images: torch.Tensor, covariance: torch.Tensor,
             labels: list[int], seed: int = 0) -> list[dict]:
    """One row per label: ``mean_slope``, ``ideal_mean_slope``, ``mean_slope_ratio`` and ``amplitude_slope``.

    Args:
        estimate_noise: ``estimate_noise(x, label, alpha, sigma)`` -> eps_hat, float64 (``vp_noise_estimator`` or
            ``edm_noise_estimator``).
        alphas_cumprod: abar_t of the noise levels, indexed by label.
        images: clean images in [-1, 1], NCHW.
        covariance: C x C covariance of the per-image mean colour (for the ideal slope).
    """
    generator = torch.Generator().manual_seed(seed)
    x0 = images.double()
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    channels, pixels = x0.shape[1], x0.shape[2] * x0.shape[3]
    rows = []
    for label in labels:
        abar = alphas_cumprod[label].double().item()
        alpha, sigma = abar**0.5, (1 - abar) ** 0.5

        def estimate(x):  # called only within this iteration, so the loop variables it reads are current
            return estimate_noise(x, label, alpha, sigma)  # noqa: B023

        x = alpha * x0 + sigma * eps
        shift = sigma / pixels**0.5
        slopes = []
        for k in range(channels):
            delta = torch.zeros(1, channels, 1, 1, dtype=torch.float64)
            delta[0, k] = shift
            change = estimate(x + delta).mean(dim=(2, 3))[:, k] - estimate(x - delta).mean(dim=(2, 3))[:, k]
            slopes.append((change / (2 * shift)).mean().item())
        rms = {step: estimate(alpha * x0 + (1 + step) * sigma * eps).pow(2).mean(dim=(1, 2, 3)).sqrt()
               for step in (-AMPLITUDE_STEP, AMPLITUDE_STEP)}
        amplitude = ((rms[AMPLITUDE_STEP].log() - rms[-AMPLITUDE_STEP].log())
                     / (torch.tensor(1 + AMPLITUDE_STEP).log() - torch.tensor(1 - AMPLITUDE_STEP).log())).mean()
        ideal = ideal_mean_slopes(covariance, alpha, sigma, pixels).mean().item()
        mean_slope = sum(slopes) / channels
        rows.append({"t": label, "alpha": alpha, "sigma": sigma, "mean_slope": mean_slope,
                     "mean_slope_per_channel": slopes, "ideal_mean_slope": ideal,
                     "mean_slope_ratio": mean_slope / ideal, "amplitude_slope": amplitude.item()})
    return rows


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained/celeba-64")
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout")
    parser.add_argument("--num_images", type=int, default=32, help="first images of the train split, noised")
    parser.add_argument("--prior_images", type=int, default=2000, help="images the mean-colour prior is fitted on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.prior_images < 2:
        raise ValueError("--num_images must be >= 1 and --prior_images >= 2")
    pipe = load_pipeline(args.model)
    prep = pipeline_preprocessing(pipe)
    count = max(args.num_images, args.prior_images)
    images = to_model_range(load_eval_images(args.train_data_dir, "train", prep.resolution, count, prep=prep))
    # the per-image mean colours' C x C covariance: the prior the ideal slope is computed under
    covariance = torch.cov(images[: args.prior_images].double().mean(dim=(2, 3)).T)
    # an EDM-trained model is measured through EDMNoisePredictor, at the noise levels of DDPM's linear schedule
    vp_schedule = DDPMScheduler.from_config(schedule_config(pipe.vp_schedule))
    estimate = vp_noise_estimator(pipe.vp_denoiser(), vp_schedule.config.prediction_type)
    alphas_cumprod = vp_schedule.alphas_cumprod
    rows = response(estimate, alphas_cumprod, images[: args.num_images], covariance, LABELS, args.seed)
    result = {"model": args.model, "num_images": args.num_images, "prior_images": args.prior_images,
              "seed": args.seed, "precision": "float32", "amplitude_step": AMPLITUDE_STEP,
              "norm_num_groups": pipe.unet.config.norm_num_groups,
              "block_out_channels": list(pipe.unet.config.block_out_channels), "labels": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{'t':>4} {'mean slope':>10} {'ideal':>7} {'ratio':>6} {'amplitude slope':>15}")
    for row in rows:
        print(f"{row['t']:>4} {row['mean_slope']:10.3f} {row['ideal_mean_slope']:7.3f} {row['mean_slope_ratio']:6.3f} "
              f"{row['amplitude_slope']:15.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
