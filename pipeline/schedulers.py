"""Samplers by name: diffusers schedulers configured from the training scheduler, plus the score-SDE samplers.

Every diffusers sampler is ``SchedulerClass.from_config(train_config, **overrides)``, so it inherits the trained
noise schedule (beta_schedule, betas, T) and ``prediction_type``. ``timestep_spacing`` is always overridden: the
training config carries DDPMScheduler's ``"leading"``, which for few steps starts sampling at t = 900 or so (not at
T - 1, the only step where x_T ~ N(0, I) is right). DDIM/DDPM use ``"trailing"`` (Lin et al. 2024, "Common diffusion
noise schedules and sample steps are flawed"); the others use their own class default ``"linspace"``, which for the
Karras-sigma schedulers also puts sigma_min at the first trained step t = 0. x0 clipping (``clip_sample``, on in
DDPMScheduler's default config) is switched off for DDIM and Heun, which would otherwise clip every x0 prediction and
leave the ODE; DDPM keeps the training config's value (Ho et al. clip in ancestral sampling).

``ddim-clip`` is diffusers' default DDIM: x0 clipped to [-1, 1] but the step keeps the network's *unclipped* noise
estimate, x_s = sqrt(abar_s) clip(x0_hat) + sqrt(1 - abar_s - sigma^2) eps_hat (+ sigma z). This is not the ODE: where
the clip binds, the part of x_t that the clip removed is dropped instead of carried to the next step. An undertrained
network's x0_hat at high noise is its eps error amplified (x0_hat = (x_t - sigma eps_hat) / sqrt(abar), 1 / sqrt(abar)
~ 157 at t = T - 1); the clip bounds it, and with eta = 0 the next step's noise is the network's own eps_hat rather
than fresh noise. On our step-5,843 checkpoint this gives faces where the exact ODE samplers give saturated noise and
DDPM gives colour casts (REPORT Section 6.4). With x0_hat in range (e.g. the exact denoiser) ``ddim-clip`` is
``ddim``.

The score-SDE samplers (``SDE_SAMPLERS``) are not schedulers; pass them as ``pipeline(sampler=name)`` (see
``pipeline.sde``).
"""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

# name -> (scheduler class, overrides applied on top of the training scheduler's config)
DIFFUSERS_SAMPLERS = {
    "ddpm": (DDPMScheduler, {"timestep_spacing": "trailing"}),
    # eta is given to the pipeline call (0 = deterministic DDIM). The last step lands on alpha_bar_0, like training.
    "ddim": (DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "trailing"}),
    "ddim-clip": (DDIMScheduler, {"clip_sample": True, "set_alpha_to_one": False, "timestep_spacing": "trailing"}),
    # Multistep 2nd order; final_sigmas_type="zero" (the default) already makes the last step to sigma = 0 first
    # order (diffusers forces lower_order_final there), so euler_at_final is not needed for few steps.
    "dpm++2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                              "lower_order_final": True, "timestep_spacing": "linspace"}),
    "euler": (EulerDiscreteScheduler, {"use_karras_sigmas": True, "timestep_spacing": "linspace"}),
    "heun": (HeunDiscreteScheduler, {"use_karras_sigmas": True, "timestep_spacing": "linspace",
                                     "clip_sample": False}),
    "unipc": (UniPCMultistepScheduler, {"timestep_spacing": "linspace"}),
    # for models trained with EDM preconditioning (train_unet.py --preconditioning edm): Karras sigmas, rho = 7
    "edm-euler": (EDMEulerScheduler, {}),
    "edm-dpm++2m": (EDMDPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "edm-dpm++2m-sde": (EDMDPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
}
EDM_SAMPLERS = ("edm-euler", "edm-dpm++2m", "edm-dpm++2m-sde")
SDE_SAMPLERS = ("pc", "ode-heun", "ode-rk45")
ALL_SAMPLERS = (*DIFFUSERS_SAMPLERS, *SDE_SAMPLERS)
VP_SAMPLERS = tuple(name for name in ALL_SAMPLERS if name not in EDM_SAMPLERS)  # for DDPM-trained models


def explicit_config(scheduler_config) -> dict:
    """The config with every value explicit. A scheduler built in memory lists the arguments it left at their default
    in ``_use_default_values``, and ``from_config`` then gives the *target* class's defaults for those, e.g.
    HeunDiscreteScheduler's Stable-Diffusion betas (0.00085..0.012) instead of DDPM's (1e-4..0.02)."""
    return {k: v for k, v in dict(scheduler_config).items() if k != "_use_default_values"}


def make_scheduler(name: str, train_scheduler_config) -> object:
    """A fresh diffusers scheduler ``name`` that shares the training noise schedule and prediction type."""
    if name not in DIFFUSERS_SAMPLERS:
        hint = f" ({name!r} is a score-SDE sampler: use pipeline(sampler=...))" if name in SDE_SAMPLERS else ""
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(DIFFUSERS_SAMPLERS)}{hint}")
    trained_edm = is_edm(train_scheduler_config)
    if trained_edm != (name in EDM_SAMPLERS):
        kind, offered = (("EDM", EDM_SAMPLERS) if trained_edm
                         else ("DDPM", sorted(set(ALL_SAMPLERS) - set(EDM_SAMPLERS))))
        raise ValueError(f"sampler {name!r} does not fit a model trained with {kind} preconditioning; choose one of "
                         f"{list(offered)}")
    scheduler_class, overrides = DIFFUSERS_SAMPLERS[name]
    return scheduler_class.from_config(explicit_config(train_scheduler_config), **overrides)


def is_edm(scheduler_config) -> bool:
    """Whether a training scheduler config is EDM's (sigma_data), not a DDPM beta schedule."""
    return "sigma_data" in dict(scheduler_config)


def check_steps(name: str, steps: int, num_train_timesteps: int = 1000) -> None:
    """Raise for step counts that silently break a sampler: diffusers' DDIMScheduler always steps from t to
    t - T // steps, which lands on the next "trailing" timestep only when ``steps`` divides T (e.g. 1000 steps: 10, 20,
    25, 50, 100, 200, 250, 500; with 400 or 30 steps the noise level drifts off the schedule)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if name in ("ddim", "ddim-clip") and num_train_timesteps % steps:
        raise ValueError(f"{name} needs a step count dividing T = {num_train_timesteps}, got {steps}")


def nfe(name: str, steps: int, corrector_steps: int = 1) -> int | None:
    """Network evaluations per generated batch for ``steps`` inference steps.

    Heun (diffusers and ``ode-heun``): 2 per step, except the last step to sigma = 0, which is a single Euler step.
    ``pc``: one predictor and ``corrector_steps`` Langevin evaluations per step (the last predictor evaluation is the
    final denoising). ``ode-rk45`` is adaptive: returns None; read ``pipeline.sde.last_nfe`` after sampling.
    """
    if name not in ALL_SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {list(ALL_SAMPLERS)}")
    if name in ("heun", "ode-heun"):
        return 2 * steps - 1
    if name == "pc":
        return steps * (1 + corrector_steps)
    if name == "ode-rk45":
        return None
    return steps
