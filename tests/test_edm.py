"""EDM preconditioning (train_unet.py --preconditioning edm): its loss, its saved scheduler and its samplers."""

import json

import numpy as np
import pytest
import torch
from diffusers import EDMEulerScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput

from pipeline.generate import generate, load_pipeline
from pipeline.training.losses import edm_loss
from pipeline.training.settings import DiffusionSettings
from train_unet import parse_args

from conftest import run_command, train_args


class IdealForOnePoint(torch.nn.Module):
    """The network output that makes EDM's preconditioned denoiser D(x; sigma) return ``target`` exactly (the Bayes
    denoiser of a one-image data set), computed from what the UNet is given: c_in x and c_noise = log(sigma) / 4."""

    def __init__(self, scheduler: EDMEulerScheduler, target: torch.Tensor, scale: float = 1.0):
        super().__init__()
        self.scheduler, self.target, self.scale = scheduler, target, scale

    def forward(self, model_input, c_noise):
        sigma = (4 * c_noise).exp().view(-1, 1, 1, 1)
        data = self.scheduler.config.sigma_data
        noisy = model_input * (sigma**2 + data**2).sqrt()
        c_skip, c_out = data**2 / (sigma**2 + data**2), sigma * data / (sigma**2 + data**2).sqrt()
        return UNet2DOutput(sample=self.scale * (self.target - c_skip * noisy) / c_out)


def test_edm_loss_is_zero_for_the_exact_denoiser_and_unit_scale_for_a_wrong_one():
    torch.manual_seed(0)
    scheduler = EDMEulerScheduler(sigma_data=0.5)
    target = torch.rand(1, 3, 8, 8) * 2 - 1
    clean = target.expand(64, -1, -1, -1)
    diffusion = DiffusionSettings(preconditioning="edm", edm_p_mean=-1.2, edm_p_std=1.2)
    assert edm_loss(IdealForOnePoint(scheduler, target), scheduler, clean, diffusion).item() < 1e-8
    # an output off by a factor 1 - k misses the unit-variance target by k times its size: loss k^2 E|F*|^2 > 0
    wrong = edm_loss(IdealForOnePoint(scheduler, target, scale=0.5), scheduler, clean, diffusion).item()
    assert wrong > 1e-2


def test_edm_flags_are_checked_before_training():
    base = ["--config", "configs/smoke.yaml", "--train_data_dir", "x", "--preconditioning", "edm"]
    assert parse_args(base).diffusion.preconditioning == "edm"
    with pytest.raises(SystemExit):
        parse_args([*base, "--prediction_type", "v_prediction"])


def test_an_edm_run_saves_its_scheduler_and_samples_only_with_edm_samplers(tmp_path):
    out = tmp_path / "edm"
    run_command(train_args(out, "--preconditioning", "edm", "--max_train_steps", "2"))
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "EDMEulerScheduler" and config["sigma_data"] == 0.5
    assert json.loads((out / "model_index.json").read_text())["mean_colour_prior"] is None
    pipe = load_pipeline(str(out))
    for sampler in ("edm-euler", "edm-dpm++2m", "edm-dpm++2m-sde"):
        images, nfe = generate(pipe, 2, sampler, 4, seed=0, progress=False)
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8 and nfe == 4
    with pytest.raises(ValueError, match="does not fit a model trained with EDM preconditioning"):
        generate(pipe, 2, "ddim", 4, seed=0, progress=False)
    with pytest.raises(ValueError, match="trained with EDM preconditioning"):
        generate(pipe, 2, "pc", 4, seed=0, progress=False)
