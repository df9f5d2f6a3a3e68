"""EDM preconditioning (train_unet.py --preconditioning edm): its loss, its saved schedule and its samplers."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, UNet2DModel
from diffusers.models.unets.unet_2d import UNet2DOutput

from pipeline import CelebADiffusionPipeline
from pipeline.generate import generate, load_pipeline
from pipeline.sampling.schedulers import ALL_SAMPLERS, get_sampler
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


def test_an_edm_run_saves_its_schedule_and_samples_with_every_sampler(tmp_path):
    out = tmp_path / "edm"
    run_command(train_args(out, "--preconditioning", "edm", "--max_train_steps", "2"))
    config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "EDMEulerScheduler" and config["sigma_data"] == 0.5
    index = json.loads((out / "model_index.json").read_text())
    assert "mean_colour_prior" not in index and index["edm_schedule"]["sigma_data"] == 0.5
    pipe = load_pipeline(str(out))
    for sampler in ALL_SAMPLERS:  # EDM samplers directly, the others through EDMNoisePredictor
        steps = 1 if sampler == "ode-rk45" else 4
        options = {"rtol": 1e-2, "atol": 1e-2} if sampler == "ode-rk45" else None
        images, nfe = generate(pipe, 2, sampler, steps, seed=0, progress=False, sampler_options=options)
        assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8, sampler
        assert nfe == (get_sampler(sampler).nfe(steps) or nfe), sampler


def test_a_ddpm_trained_model_refuses_the_edm_samplers(tmp_path):
    pipe = CelebADiffusionPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
                                                    down_block_types=("DownBlock2D", "DownBlock2D"),
                                                    up_block_types=("UpBlock2D", "UpBlock2D")),
                                   scheduler=DDPMScheduler())
    with pytest.raises(ValueError, match="'edm-euler' needs a model trained with EDM preconditioning"):
        generate(pipe, 2, "edm-euler", 4, seed=0, progress=False)
    with pytest.raises(ValueError, match="samples EDM-preconditioned networks; this UNet is DDPM-trained"):
        pipe(num_inference_steps=2, scheduler=EDMEulerScheduler())
