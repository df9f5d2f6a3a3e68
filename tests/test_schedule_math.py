"""The DDPM forward process and parameterisations used for training match their closed forms."""

import math

import torch
from diffusers import DDPMScheduler


def test_add_noise_matches_closed_form_marginal():
    """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I): check mean and variance by Monte Carlo."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), alpha_bar, rtol=1e-5, atol=1e-7)
    generator = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7)
    for t in (0, 100, 500, 999):
        noise = torch.randn(x0.shape, generator=generator)
        xt = scheduler.add_noise(x0, noise, torch.full((n,), t))
        mean, var = math.sqrt(alpha_bar[t]) * 0.7, 1 - alpha_bar[t].item()
        standard_error = math.sqrt(var / n)
        assert abs(xt.mean().item() - mean) < 5 * standard_error
        assert abs(xt.var().item() - var) < 5 * var * math.sqrt(2 / n) + 1e-9


def test_forward_chain_equals_one_shot_marginal():
    """Composing t one-step kernels q(x_s|x_{s-1}) gives the same marginal variance as add_noise."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    variance = 0.0  # Var of x_t given x_0, accumulated step by step
    for t in range(300):
        beta = scheduler.betas[t].double()
        variance = (1 - beta) * variance + beta
    assert abs(variance - (1 - scheduler.alphas_cumprod[299].double())) < 1e-6


def test_v_target_and_parameterisation_identities():
    """v = sqrt(abar) eps - sqrt(1-abar) x0; x0 and eps are recovered from (x_t, v) and from (x_t, eps)."""
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 3, 4, 4, generator=generator)
    eps = torch.randn(8, 3, 4, 4, generator=generator)
    t = torch.tensor([0, 1, 10, 100, 400, 700, 900, 999])
    a = scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    xt = scheduler.add_noise(x0, eps, t)
    v = scheduler.get_velocity(x0, eps, t)
    torch.testing.assert_close(v, a * eps - s * x0)
    torch.testing.assert_close(a * xt - s * v, x0, atol=1e-5, rtol=1e-5)  # x0 from v
    torch.testing.assert_close(s * xt + a * v, eps, atol=1e-5, rtol=1e-5)  # eps from v
    torch.testing.assert_close((xt - s * eps) / a, x0, atol=1e-3, rtol=1e-4)  # x0 from eps


def test_ddpm_step_mean_is_the_posterior_mean():
    """With the true eps, DDPMScheduler.step's mean equals the closed-form posterior mean of q(x_{t-1}|x_t,x_0)."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, clip_sample=False, variance_type="fixed_small")
    scheduler.set_timesteps(1000)
    generator = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 3, 4, 4, generator=generator)
    eps = torch.randn(2, 3, 4, 4, generator=generator)
    t = 500
    xt = scheduler.add_noise(x0, eps, torch.tensor([t]))
    alpha_bar, alpha_bar_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t - 1]
    beta = scheduler.betas[t]
    posterior_mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0 + (
        (1 - beta).sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)) * xt
    out = scheduler.step(eps, t, xt, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(3))
    posterior_std = ((1 - alpha_bar_prev) / (1 - alpha_bar) * beta).sqrt()
    torch.testing.assert_close(out.prev_sample, posterior_mean + posterior_std * noise, atol=1e-5, rtol=1e-4)
