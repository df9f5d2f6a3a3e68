"""The denoisers a ``CelebADiffusionPipeline`` samples with: transforms around the UNet that samplers see as a
UNet2DModel (pixel-unshuffle, classifier-free guidance, EDM preconditioning on a DDPM schedule), and the
conversions between what a network predicts and its noise estimate.

Like ``pipeline_celeba.py``, which imports it, this file only imports torch and diffusers: every saved pipeline
folder carries a copy beside ``pipeline_celeba.py``, and diffusers copies it with the custom pipeline.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# What fixes an EDM-trained network's noise levels and preconditioning (diffusers' EDM scheduler configs)
EDM_SCHEDULE_KEYS = ("num_train_timesteps", "sigma_min", "sigma_max", "sigma_data", "sigma_schedule", "rho",
                     "prediction_type")
# The discrete schedule on which VP samplers run an EDM-trained network: DDPM's linear betas, epsilon targets
LINEAR_VP_SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "epsilon"}


def is_edm(scheduler_config) -> bool:
    """Whether a scheduler config is an EDM one (it has sigma_data), not a DDPM beta schedule."""
    return "sigma_data" in dict(scheduler_config)


def vp_schedule_config(scheduler_config) -> dict:
    """The DDPM (VP) schedule a VP sampler runs on: the config itself, or for an EDM config DDPM's linear betas over
    the same number of labels (``LINEAR_VP_SCHEDULE``)."""
    config = dict(scheduler_config)
    if not is_edm(config):
        return config
    return {**LINEAR_VP_SCHEDULE, "num_train_timesteps": config.get("num_train_timesteps", 1000)}


def noise_estimate(output: torch.Tensor, x: torch.Tensor, alpha, sigma, prediction_type: str) -> torch.Tensor:
    """The noise estimate eps_hat of a network output at x_t = alpha x_0 + sigma eps: the output itself (epsilon),
    alpha v + sigma x_t (v_prediction) or (x_t - alpha x0_hat) / sigma (sample)."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha * output + sigma * x
    if prediction_type == "sample":
        return (x - alpha * output) / sigma
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


class WrappedDenoiser(torch.nn.Module):
    """A transform around a denoiser (``self.unet``) that samplers see as a UNet2DModel: its config, dtype, device."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    @property
    def config(self):
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.device


class PixelUnshuffleDenoiser(WrappedDenoiser):
    """A UNet2DModel that works on 2x2 (or f x f) pixel-unshuffled images, seen from outside as an image denoiser.

    An image of shape (C, f*S, f*S) is rearranged losslessly into (f*f*C, S, S) ("simple diffusion", Hoogeboom et al.
    2023), denoised by a UNet of sample_size S with f*f*C channels at the cost of an S x S model, and the prediction is
    rearranged back. The diffusion itself is unchanged: noise and targets live in image space, pixel by pixel.
    ``config`` describes the image side (sample_size f*S, in_channels C), like a UNet2DModel's.
    """

    def __init__(self, unet, factor: int):
        super().__init__(unet)
        self.factor = factor

    @property
    def config(self) -> SimpleNamespace:
        channels, size = self.unet.config.in_channels, self.unet.config.sample_size
        if channels % (self.factor * self.factor):
            raise ValueError(f"a UNet with {channels} channels cannot take {self.factor}x{self.factor} "
                             "pixel-unshuffled images")
        size = self.factor * size if isinstance(size, int) else tuple(self.factor * s for s in size)
        return SimpleNamespace(sample_size=size, in_channels=channels // (self.factor * self.factor))

    def forward(self, sample, timestep, class_labels=None, return_dict: bool = True):
        conditioning = {} if class_labels is None else {"class_labels": class_labels}
        out = self.unet(F.pixel_unshuffle(sample, self.factor), timestep, **conditioning).sample
        out = F.pixel_shuffle(out, self.factor)
        return UNet2DOutput(sample=out) if return_dict else (out,)


class GuidedDenoiser(WrappedDenoiser):
    """An attribute-conditional denoiser with classifier-free guidance (Ho & Salimans 2022), seen as unconditional.

    out = u + w (c - u), with c the prediction given ``attributes`` and u the one given none (all zeros): w = 0 is
    the unconditional model, w = 1 the conditional one, w > 1 pushes further towards the attributes. Any prediction
    type combines linearly, since every conversion to a noise estimate is affine in the output.

    Args:
        denoiser: an image denoiser taking ``class_labels`` (a UNet with ``class_embed_type="identity"``).
        encoder: maps (B, num_attributes) vectors to ``class_labels``.
        attributes: (num_attributes,) or (B, num_attributes) values in {-1, 0, +1}.
        guidance_scale: w.
    """

    def __init__(self, denoiser, encoder, attributes: torch.Tensor, guidance_scale: float = 1.0):
        super().__init__(denoiser)
        self.encoder, self.attributes, self.guidance_scale = encoder, attributes, guidance_scale

    def forward(self, sample, timestep, return_dict: bool = True):
        batch = sample.shape[0]
        attributes = self.attributes.to(sample.device).expand(batch, -1)
        unconditional = self.guidance_scale == 0 or not bool(attributes.any())
        if unconditional or self.guidance_scale == 1:
            labels = self.encoder(torch.zeros_like(attributes) if unconditional else attributes)
            out = self.unet(sample, timestep, class_labels=labels).sample
        else:  # both predictions in one batch
            labels = self.encoder(torch.cat([attributes, torch.zeros_like(attributes)]))
            timesteps = torch.as_tensor(timestep, device=sample.device)
            timesteps = timesteps.expand(batch).repeat(2) if timesteps.ndim else timesteps
            conditional, plain = self.unet(torch.cat([sample, sample]), timesteps, class_labels=labels).sample.chunk(2)
            out = plain + self.guidance_scale * (conditional - plain)
        return UNet2DOutput(sample=out) if return_dict else (out,)


class LabelSchedule:
    """(alpha, sigma) of a discrete DDPM schedule at integer or fractional timestep labels: log abar is linear between
    trained steps, as in ``pipeline.sampling.sde.VPSDE``; label -1 is clean data, labels are clamped to the trained
    range."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        log_abar = alphas_cumprod.double().clamp_min(1e-12).log()  # (the floor: a zero-terminal-SNR schedule)
        self.neg_log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), -log_abar])

    def alpha_sigma(self, timestep, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) per sample, float64, shape (B, 1), on the CPU."""
        labels = torch.as_tensor(timestep, dtype=torch.float64).cpu().reshape(-1).expand(batch)
        position = (labels + 1).clamp(1, len(self.neg_log_abar) - 1)       # node 0 is label -1 (abar = 1)
        low = position.floor().long().clamp(max=len(self.neg_log_abar) - 2)
        weight = position - low
        log_abar = -(self.neg_log_abar[low] * (1 - weight) + self.neg_log_abar[low + 1] * weight)
        return log_abar.mul(0.5).exp().view(-1, 1), (-log_abar.expm1()).sqrt().view(-1, 1)


class EDMNoisePredictor(WrappedDenoiser):
    """An EDM-preconditioned network (Karras et al. 2022) seen as an epsilon-predicting denoiser on a discrete DDPM
    schedule, so that the VP samplers, the editing methods and the likelihood ODE run on an EDM-trained model.

    At label tau, x_t = alpha (x_0 + sigma_bar n) with sigma_bar = sigma / alpha. EDM's denoiser of y = x_t / alpha,
    D(y; sigma_bar) = c_skip y + c_out F(c_in y, log(sigma_bar) / 4), gives eps_hat = (y - D) / sigma_bar.

    Args:
        network: the raw network F (a UNet2DModel or a wrapper of one).
        edm_schedule: the EDM scheduler config it was trained with (``sigma_data``, ``prediction_type``).
        vp_config: the DDPM scheduler config of the labels it is called with.
    """

    def __init__(self, network, edm_schedule: dict, vp_config: dict):
        super().__init__(network)
        self.sigma_data = float(edm_schedule["sigma_data"])
        self.output_sign = -1.0 if edm_schedule.get("prediction_type") == "v_prediction" else 1.0
        vp = {key: value for key, value in dict(vp_config).items() if not key.startswith("_")}
        self.schedule = LabelSchedule(DDPMScheduler.from_config(vp).alphas_cumprod)

    def forward(self, sample, timestep, return_dict: bool = True):
        alpha, sigma = (value.to(sample.device).view(-1, 1, 1, 1)
                        for value in self.schedule.alpha_sigma(timestep, sample.shape[0]))
        sigma_bar, data = sigma / alpha, self.sigma_data
        y = sample.to(torch.float64) / alpha
        scale = (sigma_bar**2 + data**2).sqrt()
        out = self.unet((y / scale).to(sample.dtype), (sigma_bar.log() / 4).view(-1).float()).sample.double()
        denoised = (data / scale) ** 2 * y + self.output_sign * sigma_bar * data / scale * out
        eps = ((y - denoised) / sigma_bar).to(torch.float32 if sample.dtype == torch.bfloat16 else sample.dtype)
        return UNet2DOutput(sample=eps) if return_dict else (eps,)
