"""Controllable generation from the unconditional model: imputation (inpainting, colorization) and interpolation.

Imputation fills the unknown coordinates of an image given the known ones. The coordinates are those of an
orthonormal per-pixel colour basis: the identity for inpainting (the mask is spatial), or a basis whose first axis is
the grey direction (1, 1, 1)/sqrt(3) for colorization (the known coordinate is the luminance everywhere). Because the
basis is orthonormal, the forward noise is isotropic in it too, so each known coordinate's noisy version at time t is
a fresh draw of alpha_t y_0 + sigma_t z (Song et al. 2021, App. I). Two samplers:

- ``pc``: the predictor-corrector sampler of ``pipeline.sampling.sde`` with the known coordinates replaced after every
  predictor and corrector update;
- ``repaint``: diffusers' ``RePaintScheduler`` (Lugmayr et al. 2022), DDPM steps with the same replacement that
  jump back and re-noise ``jump_n_sample`` times every ``jump_length`` steps, to harmonise the two parts.

The known coordinates of the result equal the input's exactly. Interpolation inverts two images to their noise with
the deterministic DDIM map (the probability-flow ODE run backwards), slerps the noises and decodes each with the
same map. Every entry point runs in inference mode: a network whose parameters require gradients would otherwise
chain one autograd graph through all of a sampler's steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import DDPMScheduler, RePaintScheduler
from diffusers.utils.torch_utils import randn_tensor

from ..models.noise_schedules import schedule_config
from ..sampling.sde import VPSDE, NoisePredictor, pc_sampler, pf_ode_fixed_step, time_grid

IDENTITY_BASIS = torch.eye(3, dtype=torch.float64)
# rows: the grey axis, then two chroma axes; orthonormal (score-SDE App. I.3 uses the same decoupling)
COLOUR_BASIS = torch.tensor([[1 / math.sqrt(3)] * 3,
                             [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
                             [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)]], dtype=torch.float64)
METHODS = ("pc", "repaint")


def to_basis(images: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Per-pixel coordinates y = B x of NCHW images in an orthonormal C x C basis."""
    return torch.einsum("kc,bchw->bkhw", basis.to(images), images)


def from_basis(coordinates: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_basis``: x = B^T y."""
    return torch.einsum("kc,bkhw->bchw", basis.to(coordinates), coordinates)


def check_imputation(known: torch.Tensor, mask: torch.Tensor) -> None:
    """ValueError for masks that do not fit the images or leave nothing (or everything) to fill."""
    if known.ndim != 4:
        raise ValueError(f"images must be NCHW, got shape {tuple(known.shape)}")
    try:
        torch.broadcast_shapes(mask.shape, known.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(known.shape)}") \
            from None
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError("mask values must be 0 (fill) or 1 (known)")
    if bool(mask.all()):
        raise ValueError("the mask keeps every pixel: nothing to fill")
    if not bool(mask.any()):
        raise ValueError("the mask keeps no pixel: that is unconditional generation, not imputation")


@torch.inference_mode()
def impute(pipe, known: torch.Tensor, mask: torch.Tensor, basis: torch.Tensor = IDENTITY_BASIS,
           method: str = "pc", steps: int = 250, generator: torch.Generator | None = None,
           snr: float = 0.16, corrector_steps: int = 1, jump_length: int = 10, jump_n_sample: int = 10,
           progress_bar=None) -> tuple[torch.Tensor, int]:
    """Fill the unknown coordinates of ``known`` with the pipeline's denoiser.

    Args:
        pipe: a ``CelebADiffusionPipeline`` (its ``vp_denoiser`` on its ``vp_schedule``: DDPM- or EDM-trained).
        known: NCHW images in [-1, 1] (their unknown part is ignored).
        mask: 1 where a coordinate in ``basis`` is known, 0 where it is filled; broadcast to ``known``.
        basis: orthonormal per-pixel colour basis the mask refers to.
        method: "pc" (predictor-corrector with replacement) or "repaint".
        steps: pc: grid points; repaint: denoising steps before jumps (the network runs more often, see NFE).
    Returns:
        (images in [-1, 1], not clamped; network evaluations for the batch). Known coordinates are exact.
    """
    if method not in METHODS:
        raise ValueError(f"unknown imputation method {method!r}; choose one of {list(METHODS)}")
    check_imputation(known, mask)
    sde = VPSDE(pipe.vp_schedule)
    model = NoisePredictor(pipe.vp_denoiser(), sde)
    known_y = to_basis(known.to(model.device, model.state_dtype), basis)
    mask = mask.to(known_y).expand_as(known_y)

    def noise():
        return randn_tensor(tuple(known_y.shape), generator=generator, device=known_y.device, dtype=known_y.dtype)

    if method == "pc":
        def replace(x, t):
            alpha, sigma = (float(v) for v in sde.alpha_sigma(t))
            y = to_basis(x, basis)
            return from_basis(mask * (alpha * known_y + sigma * noise()) + (1 - mask) * y, basis)

        ts = time_grid(sde, steps, "uniform")
        x = replace(noise(), ts[0])
        x = pc_sampler(model, x, ts, generator, snr, corrector_steps, progress_bar, constraint=replace)
        y = to_basis(x, basis)
    else:
        betas = DDPMScheduler.from_config(schedule_config(pipe.vp_schedule)).betas
        y = repaint(model, betas, known_y, mask, basis, steps, jump_length, jump_n_sample, generator, noise(),
                    progress_bar)
    return from_basis(mask * known_y + (1 - mask) * y, basis), model.nfe


def repaint(model: NoisePredictor, betas: torch.Tensor, known_y, mask, basis, steps: int, jump_length: int,
            jump_n_sample: int, generator, start, progress_bar=None) -> torch.Tensor:
    """RePaint in basis coordinates with diffusers' RePaintScheduler on the training betas (eta = 1: DDPM steps)."""
    scheduler = RePaintScheduler(num_train_timesteps=len(betas), trained_betas=betas.double().numpy(), eta=1.0,
                                 clip_sample=False)
    scheduler.set_timesteps(steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
    progress_bar = progress_bar or (lambda iterable: iterable)
    y, previous = start, scheduler.timesteps[0] + 1
    for t in progress_bar(scheduler.timesteps.tolist()):
        if t < previous:
            eps = to_basis(model(from_basis(y, basis), (t + 1) / model.sde.T), basis)
            y = scheduler.step(eps, t, y, known_y, mask, generator=generator).prev_sample
        else:
            y = scheduler.undo_step(y, previous, generator=generator)
        previous = t
    return y


def luminance(images: torch.Tensor) -> torch.Tensor:
    """The grey coordinate (R + G + B)/sqrt(3) of NCHW images, N1HW."""
    return to_basis(images, COLOUR_BASIS)[:, :1]


def colorize(pipe, grey: torch.Tensor, **imputation) -> tuple[torch.Tensor, int]:
    """Colour images whose grey version is ``grey`` (NCHW in [-1, 1]; 1 channel, or RGB whose mean is taken).

    Returns (images, network evaluations); the luminance of every result equals the input's exactly.
    """
    if grey.ndim != 4 or grey.shape[1] not in (1, 3):
        raise ValueError(f"grey images must be N1HW or N3HW, got shape {tuple(grey.shape)}")
    grey = grey.double().mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    mask = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return impute(pipe, grey, mask, COLOUR_BASIS, **imputation)


def ddim_grid(pipe, steps: int) -> tuple[VPSDE, np.ndarray]:
    sde = VPSDE(pipe.vp_schedule)
    return sde, time_grid(sde, steps + 1, "uniform")


@torch.inference_mode()
def invert(pipe, images: torch.Tensor, steps: int) -> torch.Tensor:
    """The noise x_T that the deterministic DDIM map of ``steps`` steps takes to ``images`` (NCHW, [-1, 1]): the
    probability-flow ODE integrated backwards with DDIM's Euler step, starting from the images at t = 1/T."""
    sde, ts = ddim_grid(pipe, steps)
    model = NoisePredictor(pipe.vp_denoiser(), sde)
    return pf_ode_fixed_step(model, images.to(model.device, model.state_dtype), ts[::-1].copy(), heun=False)


@torch.inference_mode()
def decode(pipe, latents: torch.Tensor, steps: int) -> torch.Tensor:
    """Images from noise with the same deterministic map ``invert`` runs backwards."""
    sde, ts = ddim_grid(pipe, steps)
    model = NoisePredictor(pipe.vp_denoiser(), sde)
    return pf_ode_fixed_step(model, latents.to(model.device, model.state_dtype), ts, heun=False)


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (keeps a Gaussian sample's norm, unlike a straight line)."""
    cosine = (a.flatten() @ b.flatten() / (a.norm() * b.norm())).clamp(-1, 1)
    angle = torch.arccos(cosine)
    if angle < 1e-6:
        return (1 - weight) * a + weight * b
    return (torch.sin((1 - weight) * angle) * a + torch.sin(weight * angle) * b) / torch.sin(angle)


def interpolate(pipe, first: torch.Tensor, second: torch.Tensor, frames: int, steps: int) -> torch.Tensor:
    """``frames`` images from ``first`` to ``second`` (each C x H x W, [-1, 1]) through slerped DDIM inversions."""
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    latents = invert(pipe, torch.stack([first, second]), steps)
    path = torch.stack([slerp(latents[0], latents[1], w) for w in np.linspace(0.0, 1.0, frames)])
    return decode(pipe, path, steps)
