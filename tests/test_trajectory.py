"""The denoising-trajectory picture: its x0 estimates are Tweedie's posterior mean on the analytic Gaussian model."""

import pytest
import torch
from diffusers import DDPMScheduler

from pipeline import CelebADiffusionPipeline
from pipeline.sampling.sde import SDESampler
from pipeline.trajectory import record_trajectory, snapshot_indices, trajectory_picture

from gaussian_model import make_gaussian

LINEAR = dict(DDPMScheduler(beta_schedule="linear").config)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_snapshot_indices_cover_first_and_last_step():
    assert snapshot_indices(50, 8) == [0, 7, 14, 21, 28, 35, 42, 49]
    assert snapshot_indices(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="--snapshots"):
        snapshot_indices(5, 6)


@pytest.mark.parametrize("scheduler", ["ddim", "ddim-clip", "ddpm"])
def test_recorded_x0_estimate_is_the_posterior_mean(scheduler):
    model = make_gaussian(LINEAR, dtype=torch.float64, mu_max=0.2, s_range=(0.2, 0.3))
    pipe = CelebADiffusionPipeline(unet=model, scheduler=DDPMScheduler.from_config(LINEAR))
    timesteps, samples, estimates = record_trajectory(pipe, scheduler, 20, num_images=8, snapshots=5, seed=0)
    assert len(timesteps) == 5 and timesteps == sorted(timesteps, reverse=True)
    assert samples.shape == estimates.shape == (5, 8, 3, 4, 4)
    assert 0.8 < samples[0].std() < 1.2  # the first snapshot is (nearly) pure noise
    for t, x_t, x0_hat in zip(timesteps, samples, estimates):
        tweedie = model.tweedie(x_t, (t + 1) / 1000).float()  # the model's t = (label + 1) / T
        if scheduler != "ddim":   # ddim-clip and DDPM (clip_sample in the training config) report the clipped x0_hat
            tweedie = tweedie.clamp(-1, 1)
        torch.testing.assert_close(x0_hat, tweedie, atol=2e-4, rtol=0)
    picture = trajectory_picture(timesteps, samples, estimates, upscale=2)
    assert picture.width > 5 * 4 * 2 and picture.height > 16 * 4 * 2  # 5 columns, 8 x 2 rows of 4x4 images x2


def test_trajectory_rejects_samplers_without_an_x0_estimate():
    model = make_gaussian(LINEAR)
    pipe = CelebADiffusionPipeline(unet=model, scheduler=DDPMScheduler.from_config(LINEAR))
    with pytest.raises(ValueError, match="--scheduler"):
        record_trajectory(pipe, "dpm++2m", 20, num_images=1, snapshots=2, seed=0)
    with pytest.raises(ValueError, match="callback_on_step_end"):
        pipe(batch_size=1, num_inference_steps=2, sampler=SDESampler("ode-heun"), callback_on_step_end=lambda *a: None)
