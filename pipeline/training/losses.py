"""The training losses: DDPM noising with an epsilon / v / x0 target (optionally min-SNR weighted), and EDM's
preconditioned denoising loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import EDMEulerScheduler
from diffusers.training_utils import compute_snr

from .settings import DiffusionSettings


def edm_loss(model, noise_scheduler: EDMEulerScheduler, clean, diffusion: DiffusionSettings,
             conditioning: dict | None = None):
    """EDM training loss: sigma log-normal, x = y + sigma n, the preconditioned denoiser D(x; sigma) against y with
    weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, which gives the network's own output a unit-variance
    target at every sigma."""
    log_sigma = torch.randn(clean.shape[0], device=clean.device) * diffusion.edm_p_std + diffusion.edm_p_mean
    sigma = log_sigma.exp().view(-1, 1, 1, 1)
    noisy = clean + sigma * torch.randn_like(clean)
    output = model(noise_scheduler.precondition_inputs(noisy, sigma),
                   noise_scheduler.precondition_noise(sigma.flatten()), **(conditioning or {})).sample.float()
    denoised = noise_scheduler.precondition_outputs(noisy, output, sigma)
    sigma_data = noise_scheduler.config.sigma_data
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return (weight * (denoised - clean) ** 2).mean()


def diffusion_loss(model, noise_scheduler, clean, diffusion: DiffusionSettings, conditioning: dict | None = None):
    """DDPM training loss: noise a batch at random timesteps and regress the chosen target (EDM: ``edm_loss``).
    ``conditioning`` goes to the model as keyword arguments (an attribute model's ``class_labels``)."""
    if isinstance(noise_scheduler, EDMEulerScheduler):
        return edm_loss(model, noise_scheduler, clean, diffusion, conditioning)
    noise = torch.randn_like(clean)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    prediction = model(noisy, timesteps, **(conditioning or {})).sample.float()
    if diffusion.prediction_type == "epsilon":
        target = noise
    elif diffusion.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = clean
    if diffusion.snr_gamma is None:
        return F.mse_loss(prediction, target)
    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=diffusion.snr_gamma)
    # min-SNR weights expressed for each target: eps-loss * snr = x0-loss, v-loss * (snr+1) = x0-loss
    weight = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[
        diffusion.prediction_type]
    per_example = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
    return (per_example * weight).mean()
