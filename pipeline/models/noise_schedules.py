"""A model's noise schedule: the part of a scheduler config that every sampler must share, and the shifted cosine
schedule of "simple diffusion" (Hoogeboom, Heek, Salimans 2023) as discrete DDPM betas.

The cosine schedule in log-SNR form is logsnr(t) = -2 log tan(pi t / 2), i.e. alpha_bar(t) = cos^2(pi t / 2). At a
higher resolution, neighbouring pixels are more correlated, so the same per-pixel SNR destroys less of the image;
simple diffusion shifts the log-SNR by 2 log(base / resolution) to keep the schedule's effect what it was at the base
resolution: alpha_bar(t) = sigmoid(logsnr(t) + 2 log(base / resolution)). The discrete schedule samples it at
t_i = (i + 1) / T, i = 0..T-1, and turns it into betas_i = 1 - alpha_bar_i / alpha_bar_{i-1} (capped at 0.999 like
diffusers' "squaredcos_cap_v2"), which any diffusers scheduler accepts as ``trained_betas``.
"""

from __future__ import annotations

import math

import numpy as np

MAX_BETA = 0.999
# What a trained model fixes: its noise levels (DDPM betas or EDM sigmas) and what its network predicts. Everything
# else in a scheduler config (spacing, clipping, solver order, ...) belongs to the sampler.
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "rescale_betas_zero_snr", "prediction_type", "sigma_min", "sigma_max", "sigma_data", "sigma_schedule",
                 "rho")


def schedule_config(scheduler_config) -> dict:
    """The noise-schedule entries (``SCHEDULE_KEYS``) of any diffusers scheduler config of the model.

    Building a sampler from these alone makes it independent of which scheduler the config came from (the training
    DDPMScheduler, or a sampler saved with the pipeline), and every value is explicit: a config that left an argument
    at its default would otherwise give the *target* class's default, e.g. HeunDiscreteScheduler's Stable-Diffusion
    betas (0.00085..0.012) instead of DDPM's (1e-4..0.02)."""
    config = dict(scheduler_config)
    return {key: config[key] for key in SCHEDULE_KEYS if key in config}


def shifted_cosine_log_snr(t: np.ndarray, base_resolution: int, resolution: int) -> np.ndarray:
    """log SNR(t) = -2 log tan(pi t / 2) + 2 log(base / resolution), for t in (0, 1]."""
    with np.errstate(divide="ignore"):
        return -2.0 * np.log(np.tan(np.pi * t / 2)) + 2.0 * math.log(base_resolution / resolution)


def shifted_cosine_betas(num_train_timesteps: int, base_resolution: int, resolution: int) -> list[float]:
    """The T discrete betas of the shifted cosine schedule (see the module docstring)."""
    if min(num_train_timesteps, base_resolution, resolution) <= 0:
        raise ValueError("num_train_timesteps, base_resolution and resolution must be positive, got "
                         f"{num_train_timesteps}, {base_resolution}, {resolution}")
    t = np.arange(1, num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    alpha_bar = 1.0 / (1.0 + np.exp(-shifted_cosine_log_snr(t, base_resolution, resolution)))  # sigmoid
    previous = np.concatenate([[1.0], alpha_bar[:-1]])
    return np.minimum(1.0 - alpha_bar / previous, MAX_BETA).tolist()
