"""Score-SDE samplers (Song et al. 2021) for a denoiser trained with diffusers' discrete DDPM schedule.

``VPSDE`` embeds the T trained steps in continuous time t in [0, 1]: the network label is tau(t) = t T - 1
(fractional between trained steps), log abar is piecewise linear in tau through the trained ``alphas_cumprod``, and
t = 0 is clean data. Its VP SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw has exactly the training marginals at every
integer label; for the linear schedule it is Song et al.'s beta(t) = 0.1 + 19.9 t. ``NoisePredictor`` turns any
prediction type into the noise estimate eps_hat (score = -eps_hat / sigma_t) and counts network evaluations.

Samplers (``sample`` / ``SDESampler(name, options)``; options and defaults in ``OPTIONS``), all ending at the first
trained step t = 1/T with Tweedie's denoising x0 = (x - sigma eps_hat) / alpha:

- ``pc``: predictor-corrector; ``corrector_steps`` Langevin steps with score_sde's step rule (signal-to-noise ratio
  ``snr``, batch-mean norms), then a predictor step for the reverse SDE: ``"sde-dpm++2m"`` (Lu et al.'s
  SDE-DPM-Solver++(2M): exact in the linear part, second order in the data prediction), ``"ancestral"`` (its first
  order form: a draw from the forward posterior q(x_t' | x_t, x0_hat), DDPM's step between any two grid times) or
  ``"euler-maruyama"`` (score_sde's reverse-diffusion step, accurate only while each step's int beta dt is small
  against sigma_t^2). NFE = steps (1 + corrector_steps).
- ``ode-heun``: the probability-flow ODE with Heun's method in y = x / alpha and sigma_bar = sigma / alpha (Karras et
  al. 2022, Alg. 1 without churn); its Euler predictor is DDIM. NFE = 2 steps - 1.
- ``ode-rk45``: the same ODE with scipy's adaptive RK45 in log sigma_bar (``rtol``, ``atol``); NFE is known after the
  solve (``sample_with_stats``), and ``num_inference_steps`` is ignored.

Time grids of ``pc`` and ``ode-heun``: ``"karras"`` (rho = 7 in sigma_bar, the default) or ``"uniform"`` in t
(score_sde's grid, made for hundreds of steps). The derivations, the choice of constants and their measured effects
are in REPORT Sections 3.5-3.10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from scipy.integrate import solve_ivp

from ..denoisers import PREDICTION_TYPES, noise_estimate
from ..models.noise_schedules import schedule_config

# the samplers, the options each takes (``SDESampler(name, options)``) and their defaults
OPTIONS = {
    "pc": {"snr": 0.16, "corrector_steps": 1, "grid": "karras", "predictor": "sde-dpm++2m"},
    "ode-heun": {"grid": "karras"},
    "ode-rk45": {"rtol": 1e-5, "atol": 1e-5},
}
# adaptive solvers: their step-size control needs full-precision network outputs (bf16 keeps ~3 digits, far coarser
# than their tolerance, so the steps shrink until a batch costs thousands of evaluations)
FULL_PRECISION = frozenset({"ode-rk45"})


class VPSDE:
    """The VP SDE through the training scheduler's discrete alphas_cumprod (see the module docstring)."""

    def __init__(self, scheduler_config):
        scheduler = DDPMScheduler.from_config(schedule_config(scheduler_config))
        # (the floor only touches a zero-terminal-SNR schedule, whose last abar is exactly 0)
        alphas_cumprod = scheduler.alphas_cumprod.double().clamp_min(1e-12).numpy()
        self.T = len(alphas_cumprod)
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r}; "
                             f"expected one of {PREDICTION_TYPES}")
        self._labels = np.arange(-1.0, self.T)                                   # tau nodes -1..T-1
        self._neg_log_abar = np.concatenate([[0.0], -np.log(alphas_cumprod)])    # increasing
        self.t_min = 1.0 / self.T                                                # the first trained step, tau = 0

    def label(self, t):
        """The network's (fractional) timestep label tau = t T - 1."""
        return np.asarray(t, dtype=np.float64) * self.T - 1.0

    def log_alpha_bar(self, t):
        return -np.interp(self.label(t), self._labels, self._neg_log_abar)

    def alpha_sigma(self, t):
        """(alpha_t, sigma_t) = (sqrt(abar), sqrt(1 - abar)) as float64 numpy values."""
        log_abar = self.log_alpha_bar(t)
        return np.exp(0.5 * log_abar), np.sqrt(-np.expm1(log_abar))

    def sigma_bar(self, t):
        """sigma_t / alpha_t = sqrt(1/abar - 1), the noise level in variance-exploding units."""
        return np.sqrt(np.expm1(-self.log_alpha_bar(t)))

    def t_from_sigma_bar(self, sigma_bar):
        tau = np.interp(np.log1p(np.square(sigma_bar)), self._neg_log_abar, self._labels)
        return (tau + 1.0) / self.T

    def beta(self, t):
        """beta(t) = -d log abar / dt (piecewise constant: T * -log(1 - beta_tau) on tau in (tau-1, tau])."""
        i = np.clip(np.ceil(self.label(t)), 0, self.T - 1).astype(int) + 1
        return self.T * (self._neg_log_abar[i] - self._neg_log_abar[i - 1])


class NoisePredictor:
    """eps_hat(x, t) from a UNet2DModel (or any callable ``unet(x, timestep).sample``); counts network evaluations.

    The solver state stays in float32 (float64 if the network is float64); inputs are cast to the network's dtype.
    """

    def __init__(self, unet, sde: VPSDE):
        self.unet, self.sde = unet, sde
        self.dtype = getattr(unet, "dtype", torch.float32)
        self.device = torch.device(getattr(unet, "device", "cpu"))
        self.state_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        label = max(float(self.sde.label(t)), 0.0)
        alpha, sigma = (float(v) for v in self.sde.alpha_sigma((label + 1.0) / self.sde.T))
        timestep = torch.full((x.shape[0],), label, dtype=torch.float32, device=x.device)
        out = self.unet(x.to(self.dtype), timestep).sample.to(x.dtype)
        self.nfe += 1
        return noise_estimate(out, x, alpha, sigma, self.sde.prediction_type)

    def score(self, x, t):
        return -self(x, t) / float(self.sde.alpha_sigma(t)[1])

    def denoise(self, x, t):
        """Tweedie's estimate E[x_0 | x_t] = (x - sigma eps_hat) / alpha."""
        alpha, sigma = (float(v) for v in self.sde.alpha_sigma(t))
        return (x - sigma * self(x, t)) / alpha


def time_grid(sde: VPSDE, n: int, kind: str = "karras") -> np.ndarray:
    """n decreasing times from t = 1 to t = 1/T: uniform in t, or Karras et al.'s rho = 7 spacing of sigma_bar."""
    if n < 1:
        raise ValueError(f"need at least 1 step, got {n}")
    if kind == "uniform":
        return np.linspace(1.0, sde.t_min, n)
    if kind == "karras":
        hi, lo = sde.sigma_bar(1.0) ** (1 / 7), sde.sigma_bar(sde.t_min) ** (1 / 7)
        return sde.t_from_sigma_bar((hi + np.linspace(0.0, 1.0, n) * (lo - hi)) ** 7)
    raise ValueError(f"unknown time grid {kind!r}; choose one of {list(GRIDS)}")


def ddim_step(sde: VPSDE, x, t, t_next, eps_hat):
    """Exact move along a straight line in (sigma_bar, y = x/alpha) with slope eps_hat: Euler's step of the PF-ODE,
    which is the DDIM (eta = 0) update x' = alpha' x0_hat + sigma' eps_hat."""
    (a, s), (a2, s2) = sde.alpha_sigma(t), sde.alpha_sigma(t_next)
    return float(a2 / a) * x + float(s2 - a2 * s / a) * eps_hat


def pf_ode_fixed_step(model: NoisePredictor, x, ts, heun: bool = True, progress_bar=None):
    """Integrate the probability-flow ODE from ts[0] to ts[-1] with Heun's (or Euler's = DDIM) method."""
    progress_bar = progress_bar or (lambda iterable: iterable)
    for t, t_next in progress_bar(list(zip(ts[:-1], ts[1:]))):
        eps_hat = model(x, t)
        if heun:
            eps_hat = 0.5 * (eps_hat + model(ddim_step(model.sde, x, t, t_next, eps_hat), t_next))
        x = ddim_step(model.sde, x, t, t_next, eps_hat)
    return x


def half_log_snr(sde: VPSDE, t) -> float:
    """lambda_t = log(alpha_t / sigma_t), the time variable of DPM-Solver."""
    alpha, sigma = sde.alpha_sigma(t)
    return float(np.log(alpha / sigma))


def data_prediction_step(sde: VPSDE, x, t, t_next, data, noise):
    """The exact solution from t to t_next < t of the reverse VP SDE whose data prediction is held at ``data``:
    x' = (sigma'/sigma) e^-h x + alpha' (1 - e^-2h) data + sigma' sqrt(1 - e^-2h) noise, h = lambda' - lambda (Lu et
    al.'s SDE-DPM-Solver++). With data = x0_hat it draws from the forward posterior q(x_t' | x_t, x0_hat): DDPM's
    ancestral step between any two times (DDIM with eta = 1)."""
    (_, sigma), (alpha2, sigma2) = sde.alpha_sigma(t), sde.alpha_sigma(t_next)
    h = half_log_snr(sde, t_next) - half_log_snr(sde, t)
    decay = -math.expm1(-2.0 * h)                                          # 1 - e^-2h
    return (float(sigma2 / sigma) * math.exp(-h) * x + float(alpha2) * decay * data
            + float(sigma2) * math.sqrt(decay) * noise)


def tweedie(sde: VPSDE, x, t, eps_hat):
    """x0_hat = (x - sigma eps_hat) / alpha for a given noise estimate."""
    alpha, sigma = sde.alpha_sigma(t)
    return (x - float(sigma) * eps_hat) / float(alpha)


def ancestral_step(sde: VPSDE, x, t, t_next, eps_hat, noise, history=None):
    """The ancestral predictor: ``data_prediction_step`` with Tweedie's x0_hat, first order; ``history`` is unused."""
    return data_prediction_step(sde, x, t, t_next, tweedie(sde, x, t, eps_hat), noise)


def sde_dpmpp_2m_step(sde: VPSDE, x, t, t_next, eps_hat, noise, history):
    """SDE-DPM-Solver++(2M) as predictor: ``data_prediction_step`` with x0_hat extrapolated linearly in lambda from the
    previous step's, D = x0 + (h / 2 h_prev)(x0 - x0_prev) (second order). ``history`` (a list, appended to) holds
    the earlier steps' (t, x0_hat); the first step is the ancestral one."""
    x0_hat = data = tweedie(sde, x, t, eps_hat)
    if history:
        t_prev, x0_prev = history[-1]
        lam_prev, lam, lam_next = (half_log_snr(sde, time) for time in (t_prev, t, t_next))
        data = x0_hat + 0.5 * (lam_next - lam) / (lam - lam_prev) * (x0_hat - x0_prev)
    history.append((t, x0_hat))
    return data_prediction_step(sde, x, t, t_next, data, noise)


def euler_maruyama_step(sde: VPSDE, x, t, t_next, eps_hat, noise, history=None):
    """One Euler-Maruyama step of the reverse VP SDE from t to t_next < t, in steps of int_{t'}^{t} beta dt;
    ``history`` is unused."""
    delta = float(sde.log_alpha_bar(t_next) - sde.log_alpha_bar(t))
    score = -eps_hat / float(sde.alpha_sigma(t)[1])
    return x + delta * (0.5 * x + score) + math.sqrt(delta) * noise


PREDICTORS = {"sde-dpm++2m": sde_dpmpp_2m_step, "ancestral": ancestral_step, "euler-maruyama": euler_maruyama_step}
GRIDS = ("karras", "uniform")


def pc_sampler(model: NoisePredictor, x, ts, generator=None, snr: float = 0.16, corrector_steps: int = 1,
               progress_bar=None, constraint=None, predictor: str = "sde-dpm++2m"):
    """Langevin corrector + ``predictor`` step (``PREDICTORS``) on the grid ``ts``, then Tweedie denoising.

    ``constraint(x, t)``, if given, is applied after every corrector and predictor update (x then lives at time t):
    imputation replaces the known coordinates by a fresh sample of their forward process there
    (``pipeline.sampling.editing``).
    """
    sde, progress_bar = model.sde, progress_bar or (lambda iterable: iterable)
    constraint = constraint or (lambda x, _t: x)
    predictor_step, history = PREDICTORS[predictor], []

    def noise():
        return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)

    for i in progress_bar(range(len(ts))):
        t = ts[i]
        # alpha_i = 1 - beta_i of the discrete step ending at t (score_sde's LangevinCorrector for the VP SDE).
        alpha_i = math.exp(sde.log_alpha_bar(t) - sde.log_alpha_bar(t - 1.0 / sde.T))
        for _ in range(corrector_steps):
            score, z = model.score(x, t), noise()
            ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()   # batch means
            step = 2 * alpha_i * float(snr * ratio) ** 2
            x = constraint(x + step * score + math.sqrt(2 * step) * z, t)
        if i + 1 < len(ts):
            x = constraint(predictor_step(sde, x, t, ts[i + 1], model(x, t), noise(), history), ts[i + 1])
    return model.denoise(x, ts[-1])


def rk45_in_log_sigma_bar(sde: VPSDE, derivative, state: np.ndarray, t_start: float, t_end: float,
                          rtol: float, atol: float) -> np.ndarray:
    """Integrate d state / dl = derivative(sigma_bar, t, state) with scipy's adaptive RK45 in l = log sigma_bar (which
    spans a few units where t spans orders of magnitude of noise) from t_start to t_end; returns the final state.
    The one ODE solve of sampling (``pf_ode_rk45``) and of the likelihood (``pipeline.likelihood``)."""

    def rhs(ell, current):
        sigma_bar = math.exp(ell)
        return derivative(sigma_bar, sde.t_from_sigma_bar(sigma_bar), current)

    span = (math.log(sde.sigma_bar(t_start)), math.log(sde.sigma_bar(t_end)))
    solution = solve_ivp(rhs, span, state, method="RK45", rtol=rtol, atol=atol, t_eval=[span[1]])
    if not solution.success:
        raise RuntimeError(f"RK45 failed: {solution.message}")
    return solution.y[:, -1]


def pf_ode_rk45(model: NoisePredictor, x, t_start: float, t_end: float, rtol: float = 1e-5, atol: float = 1e-5):
    """Solve the PF-ODE dy/dl = sigma_bar eps_hat (y = x / alpha) from t_start to t_end; returns x at t_end."""
    sde, shape = model.sde, x.shape
    alpha_start, alpha_end = sde.alpha_sigma(t_start)[0], sde.alpha_sigma(t_end)[0]

    def derivative(sigma_bar, t, y):
        y = torch.from_numpy(y).to(x.device, x.dtype).reshape(shape)
        eps_hat = model(y / math.sqrt(1.0 + sigma_bar**2), t)
        return (sigma_bar * eps_hat).flatten().double().cpu().numpy()

    y0 = (x.double() / alpha_start).flatten().cpu().numpy()
    y_end = rk45_in_log_sigma_bar(sde, derivative, y0, t_start, t_end, rtol, atol)
    return torch.from_numpy(y_end * alpha_end).to(x.device, x.dtype).reshape(shape)


def check_options(name: str, options: dict) -> None:
    """One error naming every option that score-SDE sampler ``name`` does not take, or a grid or predictor it does
    not know (before any network call)."""
    if name not in OPTIONS:
        raise ValueError(f"unknown score-SDE sampler {name!r}; choose one of {list(OPTIONS)}")
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:
        raise ValueError(f"{name} does not take sampler option(s) {unknown}; it takes {sorted(OPTIONS[name])}")
    for option, choices in (("grid", GRIDS), ("predictor", tuple(PREDICTORS))):
        if option in options and options[option] not in choices:
            raise ValueError(f"{name}: unknown {option} {options[option]!r}; choose one of {list(choices)}")


@dataclass
class SampleResult:
    images: torch.Tensor   # data space, [-1, 1] scale (not clamped), NCHW
    nfe: int               # network evaluations for the whole batch


def sample_with_stats(unet, scheduler_config, name: str, num_inference_steps: int, shape, generator=None,
                      progress_bar=None, **options) -> SampleResult:
    """Draw ``shape[0]`` images with score-SDE sampler ``name``; all randomness comes from ``generator``.

    ``options`` override the sampler's entry of ``OPTIONS``; any other option is an error.
    """
    check_options(name, options)
    opts = {**OPTIONS[name], **options}

    sde = VPSDE(scheduler_config)
    model = NoisePredictor(unet, sde)
    x = randn_tensor(tuple(shape), generator=generator, device=model.device, dtype=model.state_dtype)
    if name == "pc":
        ts = time_grid(sde, num_inference_steps, opts["grid"])
        images = pc_sampler(model, x, ts, generator, opts["snr"], opts["corrector_steps"], progress_bar,
                            predictor=opts["predictor"])
    elif name == "ode-heun":
        ts = time_grid(sde, num_inference_steps, opts["grid"])
        images = model.denoise(pf_ode_fixed_step(model, x, ts, heun=True, progress_bar=progress_bar), ts[-1])
    else:
        x = pf_ode_rk45(model, x, 1.0, sde.t_min, opts["rtol"], opts["atol"])
        images = model.denoise(x, sde.t_min)
    return SampleResult(images=images, nfe=model.nfe)


def sample(unet, scheduler_config, name: str, num_inference_steps: int, shape, generator=None, progress_bar=None,
           **options) -> torch.Tensor:
    """``sample_with_stats(...).images``."""
    return sample_with_stats(unet, scheduler_config, name, num_inference_steps, shape, generator, progress_bar,
                             **options).images


@dataclass(frozen=True)
class SDESampler:
    """Score-SDE sampler ``name`` with ``options``, as ``CelebADiffusionPipeline(..., sampler=SDESampler(...))`` takes
    it: called with (denoiser, scheduler config, steps, shape, generator, progress_bar), it returns the images."""

    name: str
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        check_options(self.name, self.options)

    @property
    def full_precision(self) -> bool:
        """Whether it needs the UNet in full precision (``FULL_PRECISION``); the pipeline's default follows it."""
        return self.name in FULL_PRECISION

    def __call__(self, denoiser, scheduler_config, num_inference_steps: int, shape, generator=None,
                 progress_bar=None) -> torch.Tensor:
        return sample(denoiser, scheduler_config, self.name, num_inference_steps, shape, generator, progress_bar,
                      **self.options)
