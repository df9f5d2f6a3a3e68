"""Every sampler by name, in one registry: diffusers schedulers built on the model's noise schedule, and the score-SDE
samplers of ``pipeline.sampling.sde``.

A diffusers entry is ``SchedulerClass.from_config(schedule_config(model_config), **overrides)``: it shares the trained
noise schedule and ``prediction_type`` and sets everything a sampler decides itself. ``timestep_spacing`` is always
set: DDPMScheduler's default ``"leading"`` starts few-step sampling far below T - 1, the only step where
x_T ~ N(0, I) is right; DDIM and DDPM use ``"trailing"`` (Lin et al. 2024), the others ``"linspace"``, which for the
Karras-sigma schedulers also puts sigma_min at the first trained step. x0 clipping is off for DDIM and Heun (it would
leave the ODE) and on for DDPM, as in Ho et al.'s ancestral sampling. ``ddim-clip`` is diffusers' default DDIM, which
clips x0 but keeps the unclipped noise estimate, so it is not the ODE (REPORT Section 3.11).

The EDM samplers drive a network trained with EDM preconditioning directly; every other sampler runs on a DDPM
schedule, and runs an EDM-trained network on DDPM's linear schedule through ``EDMNoisePredictor``
(``pipeline_celeba``), so that every sampler fits an EDM model.

Adding a sampler is one ``Sampler`` entry in ``SAMPLERS`` (plus its test in tests/test_samplers.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from ..denoisers import is_edm, vp_schedule_config
from ..models.noise_schedules import schedule_config
from . import sde


def one_per_step(steps: int, **_options) -> int:
    return steps


def heun_evaluations(steps: int, **_options) -> int:
    """Two per step, except the last step to sigma = 0, which is a single Euler step."""
    return 2 * steps - 1


@dataclass(frozen=True)
class Sampler:
    """One named sampler: a diffusers scheduler (``scheduler_class`` with ``overrides``) or, without one, the score-SDE
    sampler of ``pipeline.sampling.sde`` of the same name.

    Attributes:
        name: the name users type (``--scheduler NAME``).
        scheduler_class, overrides: the diffusers scheduler and the settings it gets on top of the model's schedule.
        edm: whether it drives an EDM-preconditioned network directly (only EDM-trained models); the others run on
            a DDPM schedule (any model).
        evaluations: network evaluations per batch, ``evaluations(steps, **options)``; None when adaptive.
        stochastic: whether it draws fresh noise after the initial one (ancestral, SDE and Langevin steps); the
            others are deterministic maps of the initial noise (``ddim`` at its default ``eta=0``).
    """

    name: str
    scheduler_class: type[SchedulerMixin] | None = None
    overrides: dict = field(default_factory=dict)
    edm: bool = False
    evaluations: Callable[..., int | None] = one_per_step
    stochastic: bool = False

    @property
    def is_scheduler(self) -> bool:
        return self.scheduler_class is not None

    @property
    def options(self) -> dict:
        """The options a score-SDE sampler takes, with their defaults (none for a diffusers scheduler)."""
        return {} if self.is_scheduler else dict(sde.OPTIONS[self.name])

    @property
    def full_precision(self) -> bool:
        """Whether it needs the UNet in full precision (an adaptive solver, ``sde.FULL_PRECISION``)."""
        return not self.is_scheduler and self.name in sde.FULL_PRECISION

    def check_precision(self, requested: str | None) -> None:
        """ValueError for bf16 with a ``full_precision`` sampler."""
        if self.full_precision and requested == "bf16":
            raise ValueError(f"{self.name} cannot sample under bf16: its adaptive step-size control chases the UNet's "
                             "bf16 rounding, which costs thousands of evaluations per batch "
                             "(results/instance-norm-model/bench/rk45_nfe.json); use mixed_precision 'no' "
                             "(--mixed_precision no)")

    def resolve_mixed_precision(self, pipe, requested: str | None) -> str:
        """The UNet precision this sampler runs ``pipe`` in: as requested, or (None) the pipeline's default
        (``CelebADiffusionPipeline.resolve_mixed_precision``), which is full precision for a ``full_precision``
        sampler."""
        self.check_precision(requested)
        return pipe.resolve_mixed_precision("no" if requested is None and self.full_precision else requested)

    def check_model(self, edm_trained: bool) -> None:
        """ValueError unless this sampler fits the model: an EDM sampler needs an EDM-trained network."""
        if self.edm and not edm_trained:
            raise ValueError(f"sampler {self.name!r} needs a model trained with EDM preconditioning; this one is "
                             f"DDPM-trained: choose one of {list(VP_SAMPLERS)}")

    def check_options(self, options: dict) -> None:
        """One error naming every option this sampler does not take (before any network call)."""
        if not self.is_scheduler:
            sde.check_options(self.name, options)
        elif options:
            raise ValueError(f"sampler options are for the score-SDE samplers {list(SDE_SAMPLERS)}; "
                             f"{self.name!r} takes none (got {sorted(options)})")

    def scheduler(self, scheduler_config) -> SchedulerMixin:
        """A fresh diffusers scheduler on the noise schedule of ``scheduler_config`` (any scheduler of the model, or
        its ``edm_schedule``): an EDM sampler on the EDM schedule, any other on ``vp_schedule_config``."""
        if not self.is_scheduler:
            raise ValueError(f"{self.name!r} is a score-SDE sampler, not a diffusers scheduler: pass "
                             f"sampler=pipeline.sampling.sde.SDESampler({self.name!r}) to the pipeline")
        self.check_model(is_edm(scheduler_config))
        config = scheduler_config if self.edm else vp_schedule_config(scheduler_config)
        return self.scheduler_class.from_config(schedule_config(config), **self.overrides)

    def nfe(self, steps: int, **options) -> int | None:
        """Network evaluations per batch for ``steps`` steps (None for an adaptive solver: counted while sampling)."""
        return self.evaluations(steps, **{**self.options, **options})


SAMPLERS: dict[str, Sampler] = {sampler.name: sampler for sampler in (
    Sampler("ddpm", DDPMScheduler, {"timestep_spacing": "trailing", "clip_sample": True}, stochastic=True),
    # eta is given to the pipeline call (0 = deterministic DDIM). The last step lands on alpha_bar_0, like training.
    Sampler("ddim", DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "trailing"}),
    Sampler("ddim-clip", DDIMScheduler, {"clip_sample": True, "set_alpha_to_one": False,
                                         "timestep_spacing": "trailing"}),
    # Multistep 2nd order; final_sigmas_type="zero" (the default) already makes the last step to sigma = 0 first
    # order (diffusers forces lower_order_final there), so euler_at_final is not needed for few steps.
    Sampler("dpm++2m", DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                     "lower_order_final": True, "timestep_spacing": "linspace"}),
    Sampler("euler", EulerDiscreteScheduler, {"use_karras_sigmas": True, "timestep_spacing": "linspace"}),
    Sampler("heun", HeunDiscreteScheduler, {"use_karras_sigmas": True, "timestep_spacing": "linspace",
                                            "clip_sample": False}, evaluations=heun_evaluations),
    Sampler("unipc", UniPCMultistepScheduler, {"timestep_spacing": "linspace"}),
    Sampler("pc", evaluations=lambda steps, corrector_steps=1, **_: steps * (1 + corrector_steps), stochastic=True),
    Sampler("ode-heun", evaluations=heun_evaluations),
    Sampler("ode-rk45", evaluations=lambda steps, **_: None),
    # for models trained with EDM preconditioning (train_unet.py --preconditioning edm): Karras sigmas, rho = 7
    Sampler("edm-euler", EDMEulerScheduler, edm=True),
    Sampler("edm-dpm++2m", EDMDPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2},
            edm=True),
    Sampler("edm-dpm++2m-sde", EDMDPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++",
                                                                "solver_order": 2}, edm=True, stochastic=True),
)}
ALL_SAMPLERS = tuple(SAMPLERS)
DIFFUSERS_SAMPLERS = tuple(name for name, sampler in SAMPLERS.items() if sampler.is_scheduler)
SDE_SAMPLERS = tuple(name for name, sampler in SAMPLERS.items() if not sampler.is_scheduler)
EDM_SAMPLERS = tuple(name for name, sampler in SAMPLERS.items() if sampler.edm)
VP_SAMPLERS = tuple(name for name, sampler in SAMPLERS.items() if not sampler.edm)  # any model


def get_sampler(name: str) -> Sampler:
    """The registry entry ``name``; ValueError listing the names otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(ALL_SAMPLERS)}")
    return SAMPLERS[name]


def make_scheduler(name: str, scheduler_config) -> SchedulerMixin:
    """``get_sampler(name).scheduler(scheduler_config)``: diffusers scheduler ``name`` on the model's schedule."""
    return get_sampler(name).scheduler(scheduler_config)


def nfe(name: str, steps: int, **options) -> int | None:
    """Network evaluations per batch of sampler ``name`` with ``steps`` steps (None: adaptive)."""
    return get_sampler(name).nfe(steps, **options)


def check_steps(name: str, steps: int, num_train_timesteps: int = 1000) -> None:
    """Raise for step counts that silently break a sampler: diffusers' DDIMScheduler always steps from t to
    t - T // steps, which lands on the next "trailing" timestep only when ``steps`` divides T (e.g. 1000 steps: 10, 20,
    25, 50, 100, 200, 250, 500; with 400 or 30 steps the noise level drifts off the schedule)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if name in ("ddim", "ddim-clip") and num_train_timesteps % steps:
        raise ValueError(f"{name} needs a step count dividing T = {num_train_timesteps}, got {steps}")


def scheduler_for(pipe, name: str) -> SchedulerMixin:
    """Diffusers scheduler ``name`` for the model of ``pipe`` (a ``CelebADiffusionPipeline``): an EDM sampler on the
    model's ``edm_schedule``, any other on the saved scheduler's DDPM schedule; ValueError when it does not fit."""
    sampler = get_sampler(name)
    edm_schedule = pipe.config.edm_schedule
    sampler.check_model(edm_schedule is not None)
    return sampler.scheduler(edm_schedule if sampler.edm else pipe.scheduler.config)


def registry_name(scheduler_config: dict) -> str | None:
    """The registry sampler a saved scheduler is (its class, and every setting the registry gives it), if any."""
    for name, sampler in SAMPLERS.items():
        if (sampler.is_scheduler and sampler.scheduler_class.__name__ == scheduler_config.get("_class_name")
                and all(scheduler_config.get(key) == value for key, value in sampler.overrides.items())):
            return name
    return None


def default_sampler(pipe) -> str:
    """The registry sampler of a plain ``pipe()`` call: its saved scheduler, chosen by ``python -m pipeline.ship``,
    or "ddpm" (which fits every model) when that scheduler is not a registry sampler (a training run's own)."""
    return registry_name(dict(pipe.scheduler.config)) or "ddpm"
