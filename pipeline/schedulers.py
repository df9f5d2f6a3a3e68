"""Diffusers samplers by name, each configured from the scheduler the model was trained with."""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler

# name -> (scheduler class, overrides applied on top of the training scheduler's config)
DIFFUSERS_SAMPLERS = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}),
}


def make_scheduler(name: str, train_scheduler_config) -> object:
    """A fresh diffusers scheduler ``name`` that shares the training noise schedule and prediction type."""
    if name not in DIFFUSERS_SAMPLERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(DIFFUSERS_SAMPLERS)}")
    scheduler_class, overrides = DIFFUSERS_SAMPLERS[name]
    return scheduler_class.from_config(train_scheduler_config, **overrides)
