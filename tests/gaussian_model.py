"""An exact stand-in for the UNet: the Bayes-optimal denoiser of Gaussian data x_0 ~ N(mu, diag(s^2)).

With x_t = a x_0 + sigma eps (a^2 = abar, sigma^2 = 1 - abar) everything is Gaussian and per-pixel:
    v_t := a^2 s^2 + sigma^2                  (marginal variance of x_t; its mean is a mu)
    E[eps | x_t] = sigma (x_t - a mu) / v_t
    E[x_0 | x_t] = mu + a s^2 (x_t - a mu) / v_t
    E[v   | x_t] = a E[eps | x_t] - sigma E[x_0 | x_t]          (v = a eps - sigma x_0)
The model reads abar at (fractional) labels from ``pipeline.sampling.sde.VPSDE``, the same continuous schedule the
score-SDE samplers use, so every sampler and the likelihood ODE see the exact score of the continuous-time process.

In y = x / a, sigma_bar = sigma / a the probability-flow ODE is
    dy/dsigma_bar = sigma_bar (y - mu) / (s^2 + sigma_bar^2),
solved by (y - mu) / sqrt(s^2 + sigma_bar^2) = const: ``pf_ode_exact`` below.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
from diffusers.models.unets.unet_2d import UNet2DOutput

from pipeline.sampling.sde import VPSDE


class GaussianDenoiser(torch.nn.Module):
    """UNet2DModel look-alike: ``forward(sample, timestep).sample``, ``config.sample_size/in_channels``, dtype, device.

    ``calls`` counts forward passes (network evaluations).
    """

    def __init__(self, mu: torch.Tensor, s: torch.Tensor, scheduler_config, dtype=torch.float64):
        super().__init__()
        self.sde = VPSDE(scheduler_config)
        self.prediction_type = self.sde.prediction_type
        self.register_buffer("mu", mu.to(torch.float64))   # (C, H, W)
        self.register_buffer("s", s.to(torch.float64))
        self._dtype = dtype
        self.config = SimpleNamespace(sample_size=mu.shape[-1], in_channels=mu.shape[0])
        self.calls = 0

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self.mu.device

    def coefficients(self, timestep, batch: int):
        """(a, sigma) per sample, shape (B, 1, 1, 1), at the labels ``timestep`` (scalar or (B,))."""
        labels = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1).cpu().numpy()
        a, sigma = self.sde.alpha_sigma((np.broadcast_to(labels, (batch,)) + 1.0) / self.sde.T)
        shape = (batch, 1, 1, 1)
        return (torch.from_numpy(np.ascontiguousarray(a)).view(shape).to(self.mu),
                torch.from_numpy(np.ascontiguousarray(sigma)).view(shape).to(self.mu))

    def forward(self, sample, timestep, return_dict: bool = True):
        """The exact E[eps | x_t] (or E[x_0 | x_t], E[v | x_t]), computed in the model's dtype."""
        self.calls += 1
        x = sample.to(self._dtype)
        a, sigma = (c.to(self._dtype) for c in self.coefficients(timestep, x.shape[0]))
        mu, var = self.mu.to(self._dtype), (self.s**2).to(self._dtype)
        residual = (x - a * mu) / (a**2 * var + sigma**2)
        if self.prediction_type == "epsilon":
            out = sigma * residual
        elif self.prediction_type == "sample":
            out = mu + a * var * residual
        else:  # v = a eps - sigma x0
            out = a * sigma * residual - sigma * (mu + a * var * residual)
        return UNet2DOutput(sample=out) if return_dict else (out,)

    # ----- closed forms used by the tests -----

    def pf_ode_exact(self, x, t_from: float, t_to: float):
        """The exact probability-flow ODE map x_{t_from} -> x_{t_to}."""
        (a1, _), (a2, _) = self.sde.alpha_sigma(t_from), self.sde.alpha_sigma(t_to)
        sb1, sb2 = self.sde.sigma_bar(t_from), self.sde.sigma_bar(t_to)
        ratio = torch.sqrt((self.s**2 + sb2**2) / (self.s**2 + sb1**2))
        y = self.mu + (x.to(torch.float64) / a1 - self.mu) * ratio
        return float(a2) * y

    def tweedie(self, x, t: float):
        """E[x_0 | x_t]."""
        a, sigma = self.sde.alpha_sigma(t)
        return self.mu + a * self.s**2 * (x.to(torch.float64) - a * self.mu) / (a**2 * self.s**2 + sigma**2)

    def flow_marginal(self, t: float):
        """(mean, std) per pixel at time t of the PF-ODE push-forward of the N(0, I) prior at t = 1.

        x_1 ~ N(0, 1) maps linearly to x_t = a_t [mu + (x_1 / a_1 - mu) r], r = sqrt((s^2 + sb_t^2) / (s^2 + sb_1^2)).
        """
        (a1, _), (at, _) = self.sde.alpha_sigma(1.0), self.sde.alpha_sigma(t)
        sb1, sbt = self.sde.sigma_bar(1.0), self.sde.sigma_bar(t)
        r = torch.sqrt((self.s**2 + sbt**2) / (self.s**2 + sb1**2))
        return at * self.mu * (1 - r), at * r / a1

    def flow_log_density(self, x, t: float):
        """log-density (nats, per image) of that push-forward at x."""
        mean, std = self.flow_marginal(t)
        z = (x.to(torch.float64) - mean) / std
        return (-0.5 * z**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

def make_gaussian(scheduler_config, channels: int = 3, size: int = 4, seed: int = 0, dtype=torch.float64,
                  mu_max: float = 0.3, s_range=(0.08, 0.15)):
    """A GaussianDenoiser with per-pixel mu in [-mu_max, mu_max] and s in s_range (small enough that clamping to
    [-1, 1] is negligible: the nearest bound is >= 4.6 s away)."""
    g = torch.Generator().manual_seed(seed)
    mu = (torch.rand(channels, size, size, generator=g, dtype=torch.float64) * 2 - 1) * mu_max
    lo, hi = s_range
    s = lo + torch.rand(channels, size, size, generator=g, dtype=torch.float64) * (hi - lo)
    return GaussianDenoiser(mu, s, scheduler_config, dtype=dtype)


class CorrelatedGaussianDenoiser(GaussianDenoiser):
    """The exact denoiser of x_0 ~ N(mu, Sigma) with a full covariance over all C*H*W values:
    E[eps | x_t] = sigma (a^2 Sigma + sigma^2 I)^-1 (x_t - a mu), through Sigma's eigendecomposition."""

    def __init__(self, mu: torch.Tensor, covariance: torch.Tensor, scheduler_config):
        super().__init__(mu, torch.ones_like(mu), scheduler_config)
        self.covariance = covariance.to(torch.float64)
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(self.covariance)

    def forward(self, sample, timestep, return_dict: bool = True):
        self.calls += 1
        x = sample.to(torch.float64)
        a, sigma = self.coefficients(timestep, x.shape[0])
        a, sigma = a.view(-1, 1), sigma.view(-1, 1)
        residual = (x - a.view(-1, 1, 1, 1) * self.mu).flatten(1) @ self.eigenvectors
        eps = (sigma * residual / (a**2 * self.eigenvalues + sigma**2)) @ self.eigenvectors.T
        if self.prediction_type != "epsilon":
            raise ValueError("CorrelatedGaussianDenoiser predicts epsilon only")
        out = eps.view_as(x)
        return UNet2DOutput(sample=out) if return_dict else (out,)

    def conditional(self, known: torch.Tensor, mask: torch.Tensor, basis: torch.Tensor):
        """(mean, covariance) of the unknown basis coordinates of x_0 given the known ones, in the order of
        ``mask == 0`` flattened over (C, H, W); ``known`` is one C x H x W image."""
        pixels = self.mu[0].numel()
        rotation = torch.kron(basis.to(torch.float64), torch.eye(pixels, dtype=torch.float64))  # per-pixel basis
        mean = rotation @ self.mu.flatten()
        cov = rotation @ self.covariance @ rotation.T
        y = rotation @ known.to(torch.float64).flatten()
        keep = mask.expand_as(known).flatten().bool()
        gain = cov[~keep][:, keep] @ torch.linalg.inv(cov[keep][:, keep])
        return mean[~keep] + gain @ (y[keep] - mean[keep]), cov[~keep][:, ~keep] - gain @ cov[keep][:, ~keep]


def make_correlated_gaussian(scheduler_config, size: int = 4, seed: int = 0) -> CorrelatedGaussianDenoiser:
    """3 x size x size Gaussian images: smooth in space (squared-exponential, length 1.5 px), correlated colours of
    unequal spread (standard deviations 0.24, 0.16, 0.10) around means in [-0.3, 0.3]."""
    g = torch.Generator().manual_seed(seed)
    mu = (torch.rand(3, size, size, generator=g, dtype=torch.float64) * 2 - 1) * 0.3
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij"), -1).reshape(-1, 2)
    spatial = torch.exp(-((coords[:, None] - coords[None]) ** 2).sum(-1).double() / (2 * 1.5**2))
    scale = torch.tensor([1.2, 0.8, 0.5], dtype=torch.float64)   # unequal: the grey level tells about the colour
    colour = torch.tensor([[1.0, 0.8, 0.6], [0.8, 1.0, 0.8], [0.6, 0.8, 1.0]], dtype=torch.float64)
    colour = scale[:, None] * colour * scale[None, :]
    covariance = 0.04 * torch.kron(colour, spatial) + 1e-4 * torch.eye(3 * size * size, dtype=torch.float64)
    return CorrelatedGaussianDenoiser(mu, covariance, scheduler_config)


class EDMGaussianDenoiser(torch.nn.Module):
    """The network output F that makes EDM's preconditioned denoiser D(x; sigma) = c_skip x + c_out F exact for
    x_0 ~ N(mu, diag(s^2)) and x = x_0 + sigma n: D = mu + s^2 (x - mu) / (s^2 + sigma^2). It reads sigma and x
    back from what a UNet is given (c_noise = log(sigma) / 4, c_in x), as diffusers' EDM schedulers call it."""

    def __init__(self, mu: torch.Tensor, s: torch.Tensor, sigma_data: float = 0.5):
        super().__init__()
        self.register_buffer("mu", mu.to(torch.float64))
        self.register_buffer("s", s.to(torch.float64))
        self.sigma_data = sigma_data
        self.config = SimpleNamespace(sample_size=mu.shape[-1], in_channels=mu.shape[0])

    @property
    def dtype(self):
        return torch.float32

    @property
    def device(self):
        return self.mu.device

    def forward(self, sample, timestep, return_dict: bool = True):
        sigma = (4 * torch.as_tensor(timestep, dtype=torch.float64)).exp().reshape(-1, 1, 1, 1)
        data = self.sigma_data
        x = sample.to(torch.float64) * (sigma**2 + data**2).sqrt()
        denoised = self.mu + self.s**2 * (x - self.mu) / (self.s**2 + sigma**2)
        c_skip, c_out = data**2 / (sigma**2 + data**2), sigma * data / (sigma**2 + data**2).sqrt()
        out = ((denoised - c_skip * x) / c_out).to(sample.dtype)
        return UNet2DOutput(sample=out) if return_dict else (out,)
