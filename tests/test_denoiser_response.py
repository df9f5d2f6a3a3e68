"""benchmarks/denoiser_response.py on the exact denoiser of Gaussian data, where both slopes have closed forms."""

import torch
from diffusers import DDPMScheduler, EDMEulerScheduler

from benchmarks.denoiser_response import response, vp_noise_estimator
from pipeline.denoisers import EDMNoisePredictor

from gaussian_model import EDMGaussianDenoiser, GaussianDenoiser


def test_slopes_of_the_exact_denoiser_match_their_closed_forms():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    channels, size, s = 3, 16, torch.tensor([0.3, 0.5, 0.4], dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    mu = (torch.rand(channels, size, size, generator=generator, dtype=torch.float64) - 0.5) * 0.6
    denoiser = GaussianDenoiser(mu, s.view(-1, 1, 1).expand(channels, size, size), scheduler.config)
    x0 = mu + s.view(1, -1, 1, 1) * torch.randn(64, channels, size, size, generator=generator, dtype=torch.float64)
    # independent pixels: the mean colour's covariance is diag(s^2 / D)
    covariance = torch.diag(s**2 / size**2)
    labels = [999, 700, 300, 50]
    rows = response(vp_noise_estimator(denoiser, "epsilon"), scheduler.alphas_cumprod, x0, covariance, labels)
    for row in rows:
        variance = row["alpha"] ** 2 * s**2 + row["sigma"] ** 2
        # E[eps | x_t] = sigma (x_t - alpha mu) / v: a DC shift d moves its mean by sigma d / v, exactly the ideal
        exact = (row["sigma"] / variance).tolist()
        assert torch.allclose(torch.tensor(row["mean_slope_per_channel"]), torch.tensor(exact), rtol=1e-6)
        assert abs(row["mean_slope_ratio"] - 1) < 1e-6
        # scaling the noise part by (1 + l) scales the eps-part of the estimate: d log rms / d l = E[sigma^2 / v]
        # (its share of the estimate's power), up to the sampling error of 64 images
        expected = (row["sigma"] ** 2 / variance).mean().item()
        assert abs(row["amplitude_slope"] - expected) < 0.03
    # at the top of the schedule the exact denoiser passes both through; at t = 50 the noise is a small part of x_t
    assert rows[0]["mean_slope"] > 0.95 and rows[0]["amplitude_slope"] > 0.95
    assert rows[-1]["amplitude_slope"] < 0.3


def test_an_exact_edm_denoiser_answers_like_the_exact_vp_denoiser_at_the_same_noise_levels():
    vp, edm = DDPMScheduler(num_train_timesteps=1000), EDMEulerScheduler(sigma_data=0.5)
    channels, size, s = 3, 8, torch.tensor([0.3, 0.5, 0.4], dtype=torch.float64)
    generator = torch.Generator().manual_seed(2)
    mu = (torch.rand(channels, size, size, generator=generator, dtype=torch.float64) - 0.5) * 0.6
    x0 = mu + s.view(1, -1, 1, 1) * torch.randn(16, channels, size, size, generator=generator, dtype=torch.float64)
    covariance, labels = torch.diag(s**2 / size**2), [999, 700, 300, 50]
    network = EDMGaussianDenoiser(mu, s.view(-1, 1, 1).expand(channels, size, size), sigma_data=0.5)
    denoiser = EDMNoisePredictor(network, dict(edm.config), dict(vp.config))
    edm_rows = response(vp_noise_estimator(denoiser, "epsilon"), vp.alphas_cumprod, x0, covariance, labels)
    for row in edm_rows:  # the network runs in float32, so the slopes agree to float32 accuracy
        variance = row["alpha"] ** 2 * s**2 + row["sigma"] ** 2
        assert torch.allclose(torch.tensor(row["mean_slope_per_channel"]), (row["sigma"] / variance).float(),
                              rtol=2e-3)
    assert edm_rows[0]["mean_slope"] > 0.95 and edm_rows[0]["amplitude_slope"] > 0.95
