"""'Simple diffusion' options: the shifted cosine schedule (closed form) and the pixel-unshuffle UNet transform."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from pipeline import CelebADiffusionPipeline
from pipeline.denoisers import PixelUnshuffleDenoiser
from pipeline.generate import generate, load_pipeline
from pipeline.models.noise_schedules import MAX_BETA, shifted_cosine_betas
from pipeline.sampling.schedulers import make_scheduler
from train_unet import parse_args

from conftest import run_command, train_args
from gaussian_model import GaussianDenoiser

T = 1000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def alphas_cumprod(betas) -> np.ndarray:
    return np.cumprod(1 - np.asarray(betas, dtype=np.float64))


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def test_unshifted_schedule_is_cos_squared():
    t = np.arange(1, T + 1) / T
    abar = alphas_cumprod(shifted_cosine_betas(T, 64, 64))
    np.testing.assert_allclose(abar[:-1], np.cos(np.pi * t[:-1] / 2) ** 2, rtol=1e-9, atol=1e-12)
    assert max(shifted_cosine_betas(T, 64, 64)) == MAX_BETA  # the last step (alpha_bar = 0) is capped


def test_shift_moves_log_snr_by_twice_the_log_resolution_ratio():
    """simple diffusion: logSNR_shifted(t) = logSNR(t) + 2 log(base / resolution) at every (uncapped) step."""
    plain = logit(alphas_cumprod(shifted_cosine_betas(T, 64, 64)))
    shifted = logit(alphas_cumprod(shifted_cosine_betas(T, 32, 64)))
    np.testing.assert_allclose((shifted - plain)[:-1], 2 * math.log(32 / 64), atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        shifted_cosine_betas(T, 0, 64)


def test_diffusers_schedulers_inherit_the_trained_betas():
    betas = shifted_cosine_betas(T, 32, 64)
    train = DDPMScheduler(num_train_timesteps=T, trained_betas=betas)
    for name in ("ddim", "dpm++2m"):
        sampler = make_scheduler(name, train.config)
        np.testing.assert_allclose(sampler.alphas_cumprod.numpy(), alphas_cumprod(betas), rtol=1e-5, atol=1e-7)


def test_pixel_unshuffle_denoiser_equals_the_same_model_in_image_space():
    """The exact Gaussian denoiser is per pixel: built on 2x2-unshuffled tokens (mu, s rearranged the same way) and
    wrapped, it must give the image-space model's samples exactly; a wrong shuffle order would scramble pixels."""
    config = dict(DDPMScheduler(beta_schedule="linear").config)
    generator = torch.Generator().manual_seed(0)
    mu = (torch.rand(1, 3, 8, 8, generator=generator, dtype=torch.float64) - 0.5) * 0.4
    s = 0.1 + 0.2 * torch.rand(1, 3, 8, 8, generator=generator, dtype=torch.float64)
    image_model = GaussianDenoiser(mu[0], s[0], config)
    token_model = GaussianDenoiser(F.pixel_unshuffle(mu, 2)[0], F.pixel_unshuffle(s, 2)[0], config)  # (12, 4, 4)
    samples = []
    for unet, factor in ((image_model, 1), (token_model, 2)):
        pipe = CelebADiffusionPipeline(unet=unet, scheduler=make_scheduler("ddim", config), pixel_unshuffle=factor)
        pipe.set_progress_bar_config(disable=True)
        assert (pipe.denoiser.config.sample_size, pipe.denoiser.config.in_channels) == (8, 3)
        samples.append(pipe(batch_size=4, num_inference_steps=10, generator=torch.Generator().manual_seed(1),
                            output_type="pt").images)
    assert samples[1].shape == (4, 3, 8, 8) and samples[0].std() > 0.05
    torch.testing.assert_close(samples[1], samples[0], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="cannot take 4x4"):
        _ = PixelUnshuffleDenoiser(token_model, 4).config


def test_bad_options_are_rejected(capsys):
    base = ["--config", "configs/smoke.yaml", "--train_data_dir", "x"]
    for extra, message in ((["--pixel_unshuffle", "3"], "--pixel_unshuffle 3 must divide --resolution 32"),
                           (["--shifted_cosine_base_resolution", "16"], "needs --ddpm_beta_schedule shifted_cosine")):
        with pytest.raises(SystemExit):
            parse_args(base + extra)
        assert message in capsys.readouterr().err


def test_training_saves_a_pixel_unshuffle_pipeline_that_generates_full_size_images(tmp_path):
    out = tmp_path / "run"
    run_command(train_args(out, "--max_train_steps", 3, "--pixel_unshuffle", 2, "--ddpm_beta_schedule",
                           "shifted_cosine", "--shifted_cosine_base_resolution", 16))
    assert json.loads((out / "model_index.json").read_text())["pixel_unshuffle"] == 2
    pipe = load_pipeline(str(out))
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 12
    np.testing.assert_allclose(pipe.scheduler.alphas_cumprod.numpy(),
                               alphas_cumprod(shifted_cosine_betas(T, 16, 32)), rtol=1e-5, atol=1e-7)
    images, nfe = generate(pipe, 2, "ddim", 4, seed=0, progress=False)
    assert images.shape == (2, 32, 32, 3) and nfe == 4
    run_command(["-m", "pipeline.model_card", "--model", str(out), "--out", str(tmp_path / "card.md")])
    card = (tmp_path / "card.md").read_text()
    assert "unconditional 32x32 CelebA faces" in card and "custom (`trained_betas`) beta schedule" in card
    assert "32x32 working on 2x2 pixel-unshuffled input (a 16x16 UNet with 12 channels)" in card
