"""The CelebA diffusion pipeline: a UNet2DModel denoiser driven by any diffusers scheduler.

This file only imports torch and diffusers so that diffusers can load it on its own as a custom pipeline:
``DiffusionPipeline.from_pretrained(path, custom_pipeline="pipeline/pipeline_celeba.py")``, or from a Hub repo that
carries it with ``custom_pipeline="pipeline_celeba", trust_remote_code=True``.
"""

from __future__ import annotations

import importlib
import inspect

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

# Score-SDE samplers (predictor-corrector, probability-flow ODE) live in `pipeline.sde`; they are not diffusers
# schedulers, so they are selected by name with `sampler=` and imported only when asked for.
SDE_SAMPLER_MODULE = "pipeline.sde"


class CelebADiffusionPipeline(DiffusionPipeline):
    """Unconditional face generation: start from N(0, I) and let the scheduler walk it back to an image."""

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @torch.inference_mode()
    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        sampler: str | None = None,
        **sampler_kwargs,
    ):
        """Generate ``batch_size`` images.

        ``eta`` is passed to schedulers whose ``step`` accepts it (DDIM: 0 = deterministic ODE, 1 = DDPM-like).
        ``sampler`` names a score-SDE sampler of ``pipeline.sde`` (e.g. ``"pc"``, ``"ode-heun"``) instead of the
        attached scheduler. ``output_type`` is ``"pil"``, ``"np"`` (float in [0, 1], NHWC) or ``"pt"`` ([-1, 1], NCHW).
        """
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, *size)
        if sampler is not None:
            sde = importlib.import_module(SDE_SAMPLER_MODULE)
            image = sde.sample(self.unet, self.scheduler.config, sampler, num_inference_steps, shape, generator,
                               progress_bar=self.progress_bar, **sampler_kwargs)
        else:
            image = self._sample_with_scheduler(shape, num_inference_steps, generator, eta)
        image = image.clamp(-1, 1)
        if output_type == "pt":
            return ImagePipelineOutput(images=image) if return_dict else (image,)
        image = ((image + 1) / 2).permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "pil":
            image = self.numpy_to_pil(image)
        return ImagePipelineOutput(images=image) if return_dict else (image,)

    def _sample_with_scheduler(self, shape, num_inference_steps, generator, eta):
        dtype = self.unet.dtype
        image = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        image = image * self.scheduler.init_noise_sigma
        accepted = inspect.signature(self.scheduler.step).parameters  # Heun/UniPC take neither eta nor generator
        step_kwargs = {k: v for k, v in {"generator": generator, "eta": eta}.items() if k in accepted}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(image, t)
            model_output = self.unet(model_input, t).sample
            image = self.scheduler.step(model_output, t, image, **step_kwargs).prev_sample
        return image
