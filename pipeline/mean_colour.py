"""Mean-colour correction: the image's mean colour (the DC component) estimated in closed form, not by the network.

Why. The optimal noise estimate passes the spatial mean of its input through: at t = 999 of the linear schedule
E[eps | x_t] is almost x_t itself, its mean included. A U-Net with one channel per GroupNorm group before its output
(an InstanceNorm) cannot pass that mean through (REPORT Section 6.4): it predicts a noise estimate with almost no
mean. A probability-flow ODE sampler then keeps the initial noise's mean, ~N(0, 1/D) per channel for
D = H W pixels, and divides it by alpha_T: x0_dc ~ N(0, 1/(D alpha_T^2)), std 2.4 at 64x64 on the linear schedule,
which is the saturated flat colours of exact DDIM; DDPM's colour casts are the same error at each step.

What. Model the per-image mean colour m = mean_hw(x_0) (3 numbers) as Gaussian, N(mu, S), fitted on training
images. Its noised version is the spatial mean of x_t: xbar = alpha m + sigma n with n = mean_hw(eps) ~ N(0, I/D),
and the posterior mean of the noise's mean is, exactly for this model,

    E[n | xbar] = (sigma / D) (alpha^2 S + (sigma^2 / D) I)^{-1} (xbar - alpha mu).

``MeanColourDenoiser`` (in ``denoisers.py``, which every saved pipeline carries) keeps the network's noise estimate
minus its spatial mean and adds this value instead; ``pipe(..., mean_colour_correction=True)`` and the
``--mean_colour_correction`` flag of the commands use it. For Gaussian data with independent pixels it gives back the
exact denoiser (tested); for faces it ignores what the rest of the image says about the mean colour, which at high
noise is little. The prior lives in the pipeline's model_index.json (``mean_colour_prior``): train_unet.py fits it from
the batches it trains on (``MeanColourStatistics``), and this module's command fits it for an existing pipeline:

    python -m pipeline.mean_colour --model pretrained/celeba-64 --train_data_dir ../shared/celeba
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .cli import ArgumentParser, run_cli


@dataclass
class MeanColourPrior:
    """N(mean, covariance) of the per-image mean colour, in the model's [-1, 1] range."""

    mean: list[float]
    covariance: list[list[float]]
    num_images: int

    def __post_init__(self):
        mean, cov = np.asarray(self.mean, dtype=np.float64), np.asarray(self.covariance, dtype=np.float64)
        if mean.ndim != 1 or cov.shape != (mean.size, mean.size):
            raise ValueError(f"mean_colour_prior needs a mean of C values and a C x C covariance, got shapes "
                             f"{mean.shape} and {cov.shape}")
        if not np.allclose(cov, cov.T) or np.linalg.eigvalsh(cov).min() < -1e-12:  # rounding of identical images
            raise ValueError("mean_colour_prior covariance must be symmetric positive semi-definite")


class MeanColourStatistics:
    """Running sums of per-image mean colours, so any number of images can be fitted in one pass (or during
    training, from the batches it trains on: the sums are checkpointed and added over processes)."""

    def __init__(self, channels: int = 3):
        self.count = 0
        self.total = torch.zeros(channels, dtype=torch.float64)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64)

    def update(self, images: torch.Tensor) -> None:
        """Add a batch of images in the model range [-1, 1], NCHW."""
        means = images.double().mean(dim=(2, 3))
        self.count += means.shape[0]
        self.total = self.total + means.sum(0)
        self.outer = self.outer + means.T @ means

    def to_tensor(self) -> torch.Tensor:
        """count, sums and outer products in one float64 vector: one all-reduce adds them over processes."""
        return torch.cat([torch.tensor([float(self.count)], dtype=torch.float64), self.total, self.outer.flatten()])

    def load_tensor(self, packed: torch.Tensor) -> None:
        """The inverse of ``to_tensor`` (e.g. after summing it over processes)."""
        channels = self.total.numel()
        packed = packed.double().cpu()
        if packed.shape != (1 + channels + channels ** 2,):
            raise ValueError(f"packed mean-colour statistics for {channels} channels need "
                             f"{1 + channels + channels ** 2} values, got shape {tuple(packed.shape)}")
        self.count = int(packed[0].item())
        self.total = packed[1:1 + channels].clone()
        self.outer = packed[1 + channels:].reshape(channels, channels).clone()

    def state_dict(self) -> dict:
        return {"packed": self.to_tensor().tolist()}  # JSON floats round-trip float64 exactly

    def load_state_dict(self, state: dict) -> None:
        self.load_tensor(torch.tensor(state["packed"], dtype=torch.float64))

    def prior(self) -> MeanColourPrior:
        if self.count < 2:
            raise ValueError(f"a mean-colour prior needs at least 2 images, got {self.count}")
        mean = self.total / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return MeanColourPrior(mean.tolist(), cov.tolist(), self.count)


def write_prior(model: str, prior: MeanColourPrior) -> None:
    """Store the prior in the pipeline's model_index.json (read back by ``from_pretrained``), atomically."""
    path = os.path.join(model, "model_index.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no pipeline at {model} (model_index.json missing)")
    with open(path) as handle:
        index = json.load(handle)
    index["mean_colour_prior"] = asdict(prior)
    with open(path + ".tmp", "w") as handle:
        json.dump(index, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    from .data.celeba import load_celeba, preprocessed_batches
    from .data.preprocess import pipeline_preprocessing, to_model_range
    from .generate import load_pipeline

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pipeline folder whose model_index.json gets the prior")
    parser.add_argument("--train_data_dir", help="CelebA in the official layout")
    parser.add_argument("--dataset_name", help="or a Hub dataset with the flwrlabs/celeba schema")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num_images", type=int, default=None, help="default: the whole split")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model)
    prep = pipeline_preprocessing(pipe)
    raw = load_celeba(args.dataset_name, None, args.train_data_dir, args.split)
    if args.num_images is not None:
        raw = raw.take(args.num_images)
    statistics = MeanColourStatistics()
    for batch, _ in tqdm(preprocessed_batches(raw, prep, 64), desc="mean colours (batches of 64)", unit="batch"):
        statistics.update(to_model_range(batch))
    prior = statistics.prior()
    write_prior(args.model, prior)
    print(f"mean colour of {prior.num_images} images: mean {np.round(prior.mean, 4).tolist()}, "
          f"std {np.round(np.sqrt(np.diag(prior.covariance)), 4).tolist()}; written to {args.model}/model_index.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
