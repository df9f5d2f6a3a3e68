"""The CelebA diffusion pipeline: a UNet2DModel denoiser driven by any diffusers scheduler.

This file and ``denoisers.py`` beside it only import torch and diffusers, so that diffusers can load them on their own
as a custom pipeline: every saved pipeline folder (and Hub repo) carries a copy of both and names this one in
model_index.json, so ``DiffusionPipeline.from_pretrained(path_or_repo, trust_remote_code=True)`` needs no other
argument (diffusers copies the relative import with it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .denoisers import (
    EDM_SCHEDULE_KEYS,
    EDMNoisePredictor,
    GuidedDenoiser,
    PixelUnshuffleDenoiser,
    is_edm,
    vp_schedule_config,
)

MIXED_PRECISION = ("no", "bf16")


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512_BF16 or AMX), so that bf16 autocast roughly doubles the
    UNet's speed there."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def default_mixed_precision(device: str | torch.device = "cpu") -> str:
    """The UNet precision used when none is asked for: "bf16" (autocast) on a CPU with native bf16
    (``native_bf16_cpu``), "no" anywhere else, where bf16 autocast would be slower than float32 or gain nothing."""
    return "bf16" if torch.device(device).type == "cpu" and native_bf16_cpu() else "no"


class CelebADiffusionPipeline(DiffusionPipeline):
    """Unconditional face generation: start from N(0, I) and let the scheduler walk it back to an image.

    ``attribute_encoder`` (an optional component, ``pipeline.models.attribute_encoder.AttributeEncoder``) makes it an
    attribute-conditional model: ``pipe(attributes={"Smiling": 1}, guidance_scale=3)``.
    ``pixel_unshuffle=f`` (saved in model_index.json) marks a UNet trained on f x f pixel-unshuffled images;
    ``preprocessing`` ({"resolution", "crop_size", "crop_offset_y", "resample"}, also saved there) says
    how the training images were cropped and resized, so that evaluation and editing prepare real faces the same
    way; ``default_num_inference_steps`` (also saved there) is the step count of a call that names none, the one the
    saved ``scheduler`` was chosen for; ``edm_schedule`` (also saved there, ``EDM_SCHEDULE_KEYS``) marks a UNet
    trained with EDM preconditioning, which EDM schedulers drive directly and every other sampler through
    ``EDMNoisePredictor`` (without it, a saved EDM scheduler marks one)."""

    model_cpu_offload_seq = "unet"
    _optional_components = ["attribute_encoder"]

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin, attribute_encoder: torch.nn.Module | None = None,
                 pixel_unshuffle: int = 1, preprocessing: dict | None = None, default_num_inference_steps: int = 50,
                 edm_schedule: dict | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, attribute_encoder=attribute_encoder)
        if edm_schedule is None and is_edm(scheduler.config):
            edm_schedule = {key: scheduler.config[key] for key in EDM_SCHEDULE_KEYS if key in scheduler.config}
        self.register_to_config(pixel_unshuffle=pixel_unshuffle, preprocessing=preprocessing,
                                default_num_inference_steps=default_num_inference_steps, edm_schedule=edm_schedule)

    @property
    def vp_schedule(self) -> dict:
        """The DDPM schedule the VP samplers run on (``vp_schedule_config`` of the saved scheduler)."""
        return vp_schedule_config(self.scheduler.config)

    def vp_denoiser(self, denoiser=None, vp_config: dict | None = None):
        """``denoiser`` (default ``self.denoiser``) as a denoiser on the DDPM schedule ``vp_config`` (default
        ``self.vp_schedule``): itself for a DDPM-trained UNet, an ``EDMNoisePredictor`` for an EDM-trained one."""
        denoiser = self.denoiser if denoiser is None else denoiser
        if self.config.edm_schedule is None:
            return denoiser
        return EDMNoisePredictor(denoiser, self.config.edm_schedule, vp_config or self.vp_schedule)

    @property
    def denoiser(self):
        """The image-space denoiser: the UNet itself, or the UNet behind the pixel-unshuffle transform; an attribute
        model given no attributes."""
        return self.guided_denoiser(None, 1.0)

    def guided_denoiser(self, attributes: dict | torch.Tensor | None, guidance_scale: float):
        """The image-space denoiser asked for ``attributes`` (a {name: +1/-1} dict, or a vector or (B, n) tensor of
        +1/-1/0) with classifier-free guidance ``guidance_scale``; ValueError for attributes or guidance without an
        attribute model, or for unknown attribute names."""
        factor = self.config.pixel_unshuffle
        denoiser = self.unet if factor == 1 else PixelUnshuffleDenoiser(self.unet, factor)
        encoder = getattr(self, "attribute_encoder", None)
        if encoder is None:
            if attributes is not None or guidance_scale != 1.0:
                raise ValueError("attributes and guidance_scale need an attribute model (a pipeline with an "
                                 "attribute_encoder, e.g. pretrained/celeba-64-attributes); this one is unconditional")
            return denoiser
        if attributes is None:
            attributes = {}
        if isinstance(attributes, dict):
            attributes = encoder.vector(attributes)
        return GuidedDenoiser(denoiser, encoder, torch.as_tensor(attributes, dtype=torch.float32), guidance_scale)

    def resolve_mixed_precision(self, requested: str | None) -> str:
        """"no" or "bf16": as requested, or (None) the default: bf16 autocast for a float32 UNet on a CPU with native
        bf16 (``default_mixed_precision``), full precision anywhere else; ValueError for anything else."""
        if requested is None:
            return default_mixed_precision(self.device) if self.unet.dtype == torch.float32 else "no"
        if requested not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION} (or None: the default), "
                             f"got {requested!r}")
        return requested

    def precision(self, mixed_precision: str | None = None):
        """The context the UNet runs in for ``mixed_precision`` (``resolve_mixed_precision``): bf16 autocast of its
        matrix products, or nothing. Sampler arithmetic outside the UNet stays in float32 either way."""
        resolved = self.resolve_mixed_precision(mixed_precision)
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=resolved == "bf16")

    @torch.inference_mode()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        scheduler: SchedulerMixin | None = None,
        sampler: Callable[..., torch.Tensor] | None = None,
        callback_on_step_end=None,
        attributes: dict | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        mixed_precision: str | None = None,
    ):
        """Generate ``batch_size`` images, with ``num_inference_steps`` steps (default: the pipeline's
        ``default_num_inference_steps``).

        ``eta`` is passed to schedulers whose ``step`` accepts it (DDIM: 0 = deterministic ODE, 1 = DDPM-like).
        ``scheduler`` samples this call with another diffusers scheduler of the same noise schedule (e.g.
        ``pipeline.sampling.schedulers.make_scheduler("dpm++2m", pipe.scheduler.config)``); ``self.scheduler`` stays
        as it is.
        ``sampler`` replaces the scheduler loop by a sampler that is not a diffusers scheduler, called as
        ``sampler(denoiser, scheduler_config, num_inference_steps, shape, generator, progress_bar)`` and returning the
        images, e.g. a score-SDE sampler ``pipeline.sampling.sde.SDESampler("pc")``.
        ``output_type`` is ``"pil"``, ``"np"`` (float in [0, 1], NHWC) or ``"pt"`` ([-1, 1], NCHW).
        ``callback_on_step_end(pipe, step_index, timestep, tensors)`` is called after every scheduler step with
        ``tensors`` = {"sample": x_t, "prev_sample": the next x, "pred_original_sample": the scheduler's x0 estimate
        or None}, e.g. to record a denoising trajectory; its return value is ignored.
        ``attributes`` and ``guidance_scale`` ask an attribute model for faces with those attributes
        (``guided_denoiser``); unnamed attributes are left unspecified.
        ``mixed_precision`` ("no", "bf16" or None) is the UNet's precision (``precision``); None is bf16 on CPUs with
        native bf16, except for a ``sampler`` whose ``full_precision`` is true (an adaptive ODE solver).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        if num_inference_steps is None:
            num_inference_steps = self.config.default_num_inference_steps
        scheduler = scheduler or self.scheduler
        denoiser = self.guided_denoiser(attributes, guidance_scale)
        if is_edm(scheduler.config) and sampler is None:
            if self.config.edm_schedule is None:
                raise ValueError(f"{type(scheduler).__name__} samples EDM-preconditioned networks; this UNet is "
                                 "DDPM-trained")
        else:  # a VP sampler: an EDM-trained UNet is seen as an epsilon-predictor on the VP schedule
            vp_config = vp_schedule_config(scheduler.config)
            denoiser = self.vp_denoiser(denoiser, vp_config)
        size = denoiser.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, denoiser.config.in_channels, *size)
        if mixed_precision is None and getattr(sampler, "full_precision", False):
            mixed_precision = "no"
        if sampler is not None and callback_on_step_end is not None:
            raise ValueError("callback_on_step_end works with diffusers schedulers, not with sampler=")
        with self.precision(mixed_precision):
            if sampler is not None:
                image = sampler(denoiser, vp_config, num_inference_steps, shape, generator, self.progress_bar)
            else:
                image = self._sample_with_scheduler(denoiser, scheduler, shape, num_inference_steps, generator, eta,
                                                    callback_on_step_end)
        image = image.clamp(-1, 1)
        if output_type == "pt":
            return ImagePipelineOutput(images=image) if return_dict else (image,)
        image = ((image + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)

    def _sample_with_scheduler(self, denoiser, scheduler, shape, num_inference_steps, generator, eta,
                               callback_on_step_end):
        dtype = self.unet.dtype
        image = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=dtype)
        scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        image = image * scheduler.init_noise_sigma
        accepted = inspect.signature(scheduler.step).parameters  # Heun/UniPC take neither eta nor generator
        step_kwargs = {k: v for k, v in {"generator": generator, "eta": eta}.items() if k in accepted}
        for index, t in enumerate(self.progress_bar(scheduler.timesteps)):
            model_input = scheduler.scale_model_input(image, t)
            output = scheduler.step(denoiser(model_input, t).sample, t, image, **step_kwargs)
            if callback_on_step_end is not None:
                callback_on_step_end(self, index, t, {"sample": image, "prev_sample": output.prev_sample,
                                                      "pred_original_sample": getattr(output, "pred_original_sample",
                                                                                      None)})
            image = output.prev_sample
        return image
