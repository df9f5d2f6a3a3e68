"""Samplers against the exact Gaussian denoiser (tests/gaussian_model.py): moments, convergence order, NFE, DDIM.

Data: x_0 ~ N(mu, diag(s^2)) on 3x4x4 images, |mu| <= 0.2, s in [0.2, 0.3] (the pipeline's clamp to [-1, 1] is
>= 2.7 s away: it moves a std by < 0.1%). Moment checks use 3000 samples and allow 5 standard errors per pixel
(SE(mean) = s / sqrt(n), SE(std) = s / sqrt(2 (n - 1))); step counts are chosen so that each sampler's own
discretisation bias (measured: <= 2% of s on average) stays well inside that.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from pipeline import CelebADiffusionPipeline
from pipeline.denoisers import EDMNoisePredictor, LabelSchedule
from pipeline.sampling import sde as S
from pipeline.sampling.schedulers import (
    ALL_SAMPLERS,
    DIFFUSERS_SAMPLERS,
    EDM_SAMPLERS,
    SDE_SAMPLERS,
    VP_SAMPLERS,
    check_steps,
    get_sampler,
    make_scheduler,
    nfe,
    scheduler_for,
)

from gaussian_model import EDMGaussianDenoiser, GaussianDenoiser, make_gaussian

LINEAR = dict(DDPMScheduler(beta_schedule="linear").config)
COSINE_V = dict(DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").config)
SHAPE = (3, 4, 4)
N_SAMPLES = 3000
# steps per sampler for the moment test (bias well below 5 SE; see the module docstring)
MOMENT_STEPS = {"ddpm": 1000, "ddim": 500, "ddim-clip": 500, "dpm++2m": 100, "euler": 400, "heun": 50, "unipc": 100,
                "pc": 300, "ode-heun": 100, "ode-rk45": 1, "edm-euler": 200, "edm-dpm++2m": 50,
                "edm-dpm++2m-sde": 100}
# the moment test runs pc's predictor alone: its Langevin corrector has a bias of order snr^2 by design, tested in
# closed form by test_langevin_corrector_reaches_its_closed_form_stationary_law
MOMENT_OPTIONS = {"pc": {"corrector_steps": 0}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian(config, dtype=torch.float32, **kwargs) -> GaussianDenoiser:
    return make_gaussian(config, dtype=dtype, mu_max=0.2, s_range=(0.2, 0.3), **kwargs)


def run_pipeline(model, config, name, steps, batch, seed=0, **kwargs) -> torch.Tensor:
    """The product path: CelebADiffusionPipeline with a diffusers scheduler, or with sampler=SDESampler(name, kwargs)
    for the score-SDE samplers."""
    scheduler = make_scheduler(name, config) if name in DIFFUSERS_SAMPLERS else DDPMScheduler.from_config(config)
    pipe = CelebADiffusionPipeline(unet=model, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    if name in SDE_SAMPLERS:
        kwargs = {"sampler": S.SDESampler(name, kwargs)}
    out = pipe(batch_size=batch, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
               output_type="pt", **kwargs)
    return out.images


def assert_moments(x: torch.Tensor, model: GaussianDenoiser, n_se: float = 5.0):
    n, x = x.shape[0], x.double()
    z_mean = (x.mean(0) - model.mu) / (model.s / math.sqrt(n))
    z_std = (x.std(0) - model.s) / (model.s / math.sqrt(2 * (n - 1)))
    assert z_mean.abs().max() < n_se, f"per-pixel mean off by {z_mean.abs().max():.1f} SE"
    assert z_std.abs().max() < n_se, f"per-pixel std off by {z_std.abs().max():.1f} SE " \
                                     f"(relative bias {((x.std(0) - model.s) / model.s).mean():+.3f})"


def exact_noise(batch, seed=0, dtype=torch.float64):
    """The initial noise both the pipeline and pipeline.sampling.sde draw first from a generator seeded with
    ``seed``."""
    return randn_tensor((batch, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# every sampler reproduces the data distribution


@pytest.mark.parametrize("name", VP_SAMPLERS)
def test_sampler_matches_gaussian_moments(name):
    model = gaussian(LINEAR)
    assert_moments(run_pipeline(model, LINEAR, name, MOMENT_STEPS[name], N_SAMPLES, **MOMENT_OPTIONS.get(name, {})),
                   model)


@pytest.mark.parametrize("name", EDM_SAMPLERS)
def test_edm_sampler_matches_gaussian_moments_and_counts_nfe(name):
    """EDM-preconditioned samplers on the exact EDM denoiser of the same kind of Gaussian data."""
    reference = gaussian(LINEAR)
    model = EDMGaussianDenoiser(reference.mu, reference.s)
    edm = dict(EDMEulerScheduler(sigma_data=0.5).config)
    pipe = CelebADiffusionPipeline(unet=model, scheduler=make_scheduler(name, edm))
    pipe.set_progress_bar_config(disable=True)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    images = pipe(batch_size=N_SAMPLES, num_inference_steps=MOMENT_STEPS[name],
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert_moments(images, reference)
    assert len(calls) == nfe(name, MOMENT_STEPS[name])


def test_label_schedule_interpolates_like_the_vp_sde():
    sde, alphas_cumprod = S.VPSDE(COSINE_V), DDPMScheduler.from_config(COSINE_V).alphas_cumprod
    labels = np.array([0.0, 0.3, 17.0, 512.75, 998.5, 999.0])
    alpha, sigma = LabelSchedule(alphas_cumprod).alpha_sigma(torch.tensor(labels), len(labels))
    want_alpha, want_sigma = sde.alpha_sigma((labels + 1) / sde.T)
    np.testing.assert_allclose(alpha.flatten().numpy(), want_alpha, rtol=1e-12)
    np.testing.assert_allclose(sigma.flatten().numpy(), want_sigma, rtol=1e-12)


def test_an_exact_edm_network_is_the_exact_vp_denoiser_through_edm_noise_predictor():
    """The Bayes denoiser of Gaussian data does not depend on the parameterisation: EDM's, seen on the DDPM schedule,
    must give the VP model's noise estimate at integer and fractional labels (float64 images; the network's noise
    label c_noise is float32, as a UNet's timestep is, hence the 1e-6 tolerance)."""
    vp = gaussian(LINEAR, dtype=torch.float64)
    edm = EDMNoisePredictor(EDMGaussianDenoiser(vp.mu, vp.s), dict(EDMEulerScheduler(sigma_data=0.5).config), LINEAR)
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for label in (0.0, 3.5, 250.0, 700.25, 999.0):
        t = torch.full((5,), label, dtype=torch.float64)
        torch.testing.assert_close(edm(x, t).sample, vp(x, t).sample, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", VP_SAMPLERS)
def test_every_vp_sampler_runs_an_edm_model_as_the_vp_model_it_equals(name):
    """The product path for an EDM-trained model (an EDM scheduler saved with it, ``scheduler_for`` building the VP
    sampler on DDPM's linear schedule): the same images as the exact VP model of the same Gaussian, same noise."""
    vp = gaussian(LINEAR)
    edm_model = EDMGaussianDenoiser(vp.mu, vp.s)
    edm_pipe = CelebADiffusionPipeline(unet=edm_model, scheduler=EDMEulerScheduler(sigma_data=0.5))
    edm_pipe.set_progress_bar_config(disable=True)
    steps = 1 if name == "ode-rk45" else 10
    arguments = ({"sampler": S.SDESampler(name)} if name in SDE_SAMPLERS
                 else {"scheduler": scheduler_for(edm_pipe, name)})
    images = edm_pipe(batch_size=8, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                      output_type="pt", **arguments).images
    torch.testing.assert_close(images, run_pipeline(vp, LINEAR, name, steps, 8), rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_only_stochastic_samplers_use_randomness_after_the_initial_noise(name):
    """Reseeding the generator at the first network call (the initial noise is drawn by then) changes a stochastic
    sampler's images and leaves those of a deterministic one exactly as they were."""
    vp = gaussian(LINEAR)
    model = EDMGaussianDenoiser(vp.mu, vp.s)
    pipe = CelebADiffusionPipeline(unet=model, scheduler=EDMEulerScheduler(sigma_data=0.5))
    pipe.set_progress_bar_config(disable=True)
    arguments = ({"sampler": S.SDESampler(name)} if name in SDE_SAMPLERS else {"scheduler": scheduler_for(pipe, name)})

    def images(reseed: bool) -> torch.Tensor:
        generator, calls = torch.Generator().manual_seed(0), []

        def first_call(*_):
            if reseed and not calls:
                generator.manual_seed(1)
            calls.append(1)

        hook = model.register_forward_pre_hook(first_call)
        try:
            return pipe(batch_size=4, num_inference_steps=1 if name == "ode-rk45" else 10, generator=generator,
                        output_type="pt", **arguments).images
        finally:
            hook.remove()

    assert torch.equal(images(False), images(True)) != get_sampler(name).stochastic


@pytest.mark.parametrize("name", SDE_SAMPLERS)
def test_sde_sampler_moments_cosine_v_prediction(name):
    """Our own model-output conversion (v -> eps) and a schedule that is not linear."""
    model = gaussian(COSINE_V)
    assert_moments(run_pipeline(model, COSINE_V, name, MOMENT_STEPS[name], N_SAMPLES, **MOMENT_OPTIONS.get(name, {})),
                   model)


def test_langevin_corrector_reaches_its_closed_form_stationary_law():
    """At a fixed t the corrector is the unadjusted Langevin chain x <- x + eps s(x) + sqrt(2 eps) z. On Gaussian
    p_t = N(m, v) per pixel its stationary variance is v / (1 - eps / 2v), a bias of order snr^2 that score_sde's step
    rule eps = 2 alpha_i (snr |z| / |s|)^2 accepts. 300 corrector steps at t = 0.3 from an exact draw of p_t (the
    chain forgets its start like (1 - eps/v)^steps), then Tweedie's denoising, which is affine for Gaussian data."""
    model, sde, t, snr = gaussian(LINEAR, dtype=torch.float64), S.VPSDE(LINEAR), 0.3, 0.3
    alpha, sigma = (float(v) for v in sde.alpha_sigma(t))
    v = alpha**2 * model.s**2 + sigma**2
    start = alpha * model.mu + v.sqrt() * exact_noise(N_SAMPLES)
    out = S.pc_sampler(S.NoisePredictor(model, sde), start, [t], torch.Generator().manual_seed(1), snr=snr,
                       corrector_steps=300)
    alpha_i = math.exp(sde.log_alpha_bar(t) - sde.log_alpha_bar(t - 1.0 / sde.T))
    dims = model.s.numel()
    eps = 2 * alpha_i * snr**2 * dims / float((1 / v).sum())   # batch-mean norms: |z|^2 ~ D, |s|^2 ~ sum 1/v
    stationary_std = (v / (1 - eps / (2 * v))).sqrt() * alpha * model.s**2 / v   # after the denoising
    unbiased_std = alpha * model.s**2 / v.sqrt()
    z = (out.std(0) - stationary_std) / (stationary_std / math.sqrt(2 * (N_SAMPLES - 1)))
    assert z.abs().max() < 5 and abs(float(z.mean())) < 5 / math.sqrt(dims), z
    assert float((stationary_std / unbiased_std).mean()) > 1.03   # the bias is real, far above the sampling error


# ----------------------------------------------------------------------------------------------------------------
# deterministic samplers against the closed-form probability-flow ODE


def test_ode_heun_is_second_order():
    """ode-heun(N) -> Tweedie(exact ODE map): the max error drops ~4x per doubling of the steps (asserted > 3)."""
    model = gaussian(LINEAR, dtype=torch.float64)
    exact = model.tweedie(model.pf_ode_exact(exact_noise(64), 1.0, model.sde.t_min), model.sde.t_min)
    for grid in ("uniform", "karras"):
        errors = [(S.sample(model, LINEAR, "ode-heun", n, (64, *SHAPE), torch.Generator().manual_seed(0),
                            grid=grid) - exact).abs().max().item() for n in (10, 20, 40, 80)]
        ratios = np.array(errors[:-1]) / np.array(errors[1:])
        assert (ratios > 3).all() and (ratios < 6).all(), (grid, errors, ratios)


def test_ancestral_step_keeps_the_forward_process_of_a_point_mass():
    """For data at one point mu, eps_hat = (x_t - alpha mu) / sigma is exact and the ancestral step must draw x_t'
    from the forward process's own conditional: x_t' = alpha' mu + a z + c w (z the noise of x_t, w fresh) with
    Var = a^2 + c^2 = sigma'^2 and Cov(x_t, x_t') = sigma a = (alpha / alpha') sigma'^2, for any step size."""
    sde = S.VPSDE(LINEAR)
    mu = torch.tensor([0.3], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    for t, t_next in [(1.0, 0.5), (0.9, 0.02), (0.3, 0.29), (0.05, sde.t_min)]:
        (alpha, sigma), (alpha2, sigma2) = sde.alpha_sigma(t), sde.alpha_sigma(t_next)
        base, from_z, from_w = (S.ancestral_step(sde, alpha * mu + sigma * z, t, t_next, z, w)
                                for z, w in [(zero, zero), (zero + 1, zero), (zero, zero + 1)])
        a, c = float(from_z - base), float(from_w - base)
        torch.testing.assert_close(base, alpha2 * mu, rtol=1e-12, atol=1e-12)
        assert math.isclose(a * a + c * c, sigma2**2, rel_tol=1e-9), (t, t_next)
        assert math.isclose(sigma * a, alpha / alpha2 * sigma2**2, rel_tol=1e-9), (t, t_next)


def test_pc_predictors_at_coarse_steps():
    """The cause of noisy few-step PC samples: an Euler-Maruyama step of the reverse SDE injects noise sqrt(int beta)
    as large as the noise it should remove once int beta dt is comparable to sigma_t^2, so at 10 steps it leaves the
    samples far too wide. The ancestral step only drops the spread of x_0 given x_t: its samples are narrower, and
    the deficit shrinks at first order (about 2x per doubling of the steps). SDE-DPM-Solver++(2M) extrapolates x0_hat
    and converges at second order (about 4x). Gaussian data, exact denoiser, no corrector."""
    model = gaussian(LINEAR, dtype=torch.float64)

    def relative_std_errors(predictor, steps):
        return np.array([float(((S.sample(model, LINEAR, "pc", n, (3000, *SHAPE), torch.Generator().manual_seed(0),
                                          corrector_steps=0, predictor=predictor).std(0) - model.s) / model.s).mean())
                         for n in steps])

    assert relative_std_errors("euler-maruyama", [10])[0] > 0.5
    first = relative_std_errors("ancestral", [20, 40, 80])
    assert (first < 0).all() and (1.5 < first[:-1] / first[1:]).all() and (first[:-1] / first[1:] < 2.2).all(), first
    second = np.abs(relative_std_errors("sde-dpm++2m", [20, 40, 80]))
    assert (second[:-1] / second[1:] > 2.8).all() and second[-1] < 0.01, second


def test_deterministic_edm_solvers_at_coarse_steps():
    """The sign of a deterministic solver's error on the exact denoiser: Euler holds D(x; sigma) over each step, and
    since D sharpens as sigma falls, its samples come out too narrow, with a deficit that halves as the steps double.
    DPM-Solver++(2M) extrapolates D from the previous step and overshoots: too wide at coarse steps, converging at
    second order (about 4x per doubling). Gaussian data, EDM preconditioning, the same noise at every step count."""
    reference = gaussian(LINEAR)
    model = EDMGaussianDenoiser(reference.mu, reference.s)
    edm = dict(EDMEulerScheduler(sigma_data=0.5).config)

    def relative_std_errors(name, steps):
        errors = []
        for n in steps:
            pipe = CelebADiffusionPipeline(unet=model, scheduler=make_scheduler(name, edm))
            pipe.set_progress_bar_config(disable=True)
            images = pipe(batch_size=N_SAMPLES, num_inference_steps=n, generator=torch.Generator().manual_seed(0),
                          output_type="pt").images.double()
            errors.append(float(((images.std(0) - reference.s) / reference.s).mean()))
        return np.array(errors)

    euler = relative_std_errors("edm-euler", [10, 20, 40, 80])
    assert (euler < 0).all() and euler[0] < -0.2, euler
    assert (1.7 < euler[:-1] / euler[1:]).all() and (euler[:-1] / euler[1:] < 2.3).all(), euler
    second = relative_std_errors("edm-dpm++2m", [10, 20, 40])
    assert (second > 0).all() and second[0] > 0.05 and second[1] / second[2] > 3.5, second


def test_ode_rk45_matches_exact_solution_within_tolerance():
    model = gaussian(LINEAR, dtype=torch.float64)
    exact = model.tweedie(model.pf_ode_exact(exact_noise(64), 1.0, model.sde.t_min), model.sde.t_min)
    errors, evaluations = [], []
    for tol in (1e-3, 1e-5):
        result = S.sample_with_stats(model, LINEAR, "ode-rk45", 1, (64, *SHAPE), torch.Generator().manual_seed(0),
                                     rtol=tol, atol=tol)
        errors.append((result.images - exact).abs().max().item())
        evaluations.append(result.nfe)
        assert errors[-1] < 10 * tol
    assert errors[1] < errors[0] / 10 and evaluations[1] > evaluations[0]


def test_ddim_eta0_converges_to_exact_ode_at_first_order():
    """DDIM (eta = 0) is Euler's method for dy/dsigma_bar = eps_hat (y = x/alpha, sigma_bar = sigma/alpha). For
    Gaussian data eps_hat = sigma_bar (y - mu) / (s^2 + sigma_bar^2) is not constant along the exact path, so DDIM
    is NOT exact for s > 0: we assert first-order convergence (error halves when the steps double) to the closed-form
    ODE solution from t = T-1 to t = 0 (DDIM's end, set_alpha_to_one=False)."""
    model = gaussian(LINEAR, dtype=torch.float64)
    exact = model.pf_ode_exact(exact_noise(64), 1.0, model.sde.t_min).clamp(-1, 1)   # the pipeline clamps
    errors = [(run_pipeline(model, LINEAR, "ddim", n, 64) - exact).abs().max().item() for n in (25, 50, 100, 200)]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert (ratios > 1.7).all() and (ratios < 2.3).all(), (errors, ratios)
    assert errors[0] > 0.05   # far from exact at 25 steps


def test_ddim_eta0_is_exact_for_a_point_mass():
    """With s = 0, eps_hat = (y - mu) / sigma_bar is constant along the exact path, so DDIM is exact at any step count
    (up to float32 rounding of diffusers' alpha coefficients)."""
    model = make_gaussian(LINEAR, dtype=torch.float64, mu_max=0.2, s_range=(0.0, 0.0))
    exact = model.pf_ode_exact(exact_noise(64), 1.0, model.sde.t_min)
    for steps in (1, 2, 5, 10):
        assert (run_pipeline(model, LINEAR, "ddim", steps, 64) - exact).abs().max() < 1e-4


def test_ddim_clip_is_ddim_while_x0_stays_in_range():
    """With the exact denoiser of data well inside [-1, 1], E[x_0 | x_t] never leaves [-1, 1]: no clip binds, and
    ddim-clip gives ddim's samples bit for bit."""
    model = make_gaussian(LINEAR, dtype=torch.float64, mu_max=0.2, s_range=(0.05, 0.1))
    for steps in (10, 50):
        torch.testing.assert_close(run_pipeline(model, LINEAR, "ddim-clip", steps, 64),
                                   run_pipeline(model, LINEAR, "ddim", steps, 64), rtol=0, atol=0)


def test_ddim_clip_drops_what_the_clip_removes():
    """Where the clip binds, ddim-clip steps to sqrt(abar_s) clip(x0_hat) + sqrt(1 - abar_s) eps_hat with the
    network's unclipped eps_hat (diffusers' default DDIM, use_clipped_model_output=False): the clipped-off part of
    x_t is not carried to x_s. The ODE step (ddim) keeps it; re-deriving eps from the clipped x0 (as DPM-Solver++
    thresholding does) would keep it too: x_s - sqrt(abar_s) clip(x0_hat) would then be (sigma_s / sigma_t)(x_t -
    sqrt(abar_t) clip(x0_hat))."""
    x_t, eps_hat = (torch.full((1, *SHAPE), 0.3, dtype=torch.float64),
                    torch.full((1, *SHAPE), -0.5, dtype=torch.float64))
    clipped, exact = make_scheduler("ddim-clip", LINEAR), make_scheduler("ddim", LINEAR)
    for scheduler in (clipped, exact):
        scheduler.set_timesteps(10)
    t, s = int(clipped.timesteps[0]), int(clipped.timesteps[1])
    abar_t, abar_s = (float(clipped.alphas_cumprod[i]) for i in (t, s))
    x0_hat = (x_t - math.sqrt(1 - abar_t) * eps_hat) / math.sqrt(abar_t)
    assert x0_hat.min() > 50                                                # far outside [-1, 1] at t = T - 1
    x_s = clipped.step(eps_hat, t, x_t, eta=0.0).prev_sample
    torch.testing.assert_close(x_s, math.sqrt(abar_s) * x0_hat.clamp(-1, 1) + math.sqrt(1 - abar_s) * eps_hat)
    torch.testing.assert_close(exact.step(eps_hat, t, x_t, eta=0.0).prev_sample,
                               math.sqrt(abar_s) * x0_hat + math.sqrt(1 - abar_s) * eps_hat)


def test_sde_euler_step_reproduces_diffusers_ddim_trajectory():
    """pipeline.sampling.sde's Euler step of the PF-ODE (ddim_step) on DDIM's own timesteps gives diffusers'
    DDIMScheduler trajectory (eta = 0) step by step, with the same network calls."""
    model = gaussian(LINEAR, dtype=torch.float64)
    scheduler = make_scheduler("ddim", LINEAR)
    scheduler.set_timesteps(50)
    labels = scheduler.timesteps.tolist() + [0]           # DDIM's final step lands on alpha_bar_0 (label 0)
    ts = [(label + 1) / 1000 for label in labels]
    predictor = S.NoisePredictor(model, S.VPSDE(LINEAR))
    x_diffusers = x_ours = exact_noise(16)
    for i, label in enumerate(scheduler.timesteps):
        x_diffusers = scheduler.step(model(x_diffusers, label).sample, label, x_diffusers, eta=0.0).prev_sample
        x_ours = S.ddim_step(predictor.sde, x_ours, ts[i], ts[i + 1], predictor(x_ours, ts[i]))
        assert (x_ours - x_diffusers).abs().max() < 1e-5, f"step {i}"
    assert (S.pf_ode_fixed_step(predictor, exact_noise(16), ts, heun=False) - x_diffusers).abs().max() < 1e-5


@pytest.mark.parametrize("config", [LINEAR, COSINE_V], ids=["linear-eps", "cosine-v"])
def test_ode_heun_on_the_karras_grid_reproduces_diffusers_heun(config):
    """Two independent implementations of the same algorithm (diffusers: sigma-space Euler/Heun with Karras sigmas
    and sigma -> label by log-sigma interpolation; ours: Heun in (sigma_bar, y), labels by log-abar interpolation)."""
    model = gaussian(config, dtype=torch.float64)
    for steps in (5, 25):
        ours = S.sample(model, config, "ode-heun", steps, (16, *SHAPE), torch.Generator().manual_seed(0),
                        grid="karras")
        theirs = run_pipeline(model, config, "heun", steps, 16)   # clamped to [-1, 1] by the pipeline
        assert (ours.clamp(-1, 1) - theirs).abs().max() < 1e-4, steps


# ----------------------------------------------------------------------------------------------------------------
# bookkeeping: NFE, determinism, options, names, schedules


@pytest.mark.parametrize("name", VP_SAMPLERS)
def test_nfe_counts_network_calls(name):
    model = gaussian(LINEAR)
    run_pipeline(model, LINEAR, name, 5, 2)
    if name == "ode-rk45":  # adaptive: the solver's own count of the same solve
        expected = S.sample_with_stats(gaussian(LINEAR), LINEAR, name, 5, (2, *SHAPE),
                                       torch.Generator().manual_seed(0)).nfe
    else:
        expected = nfe(name, 5)
    assert model.calls == expected
    if name == "pc":
        model.calls = 0
        run_pipeline(model, LINEAR, name, 5, 2, corrector_steps=2)
        assert model.calls == nfe("pc", 5, corrector_steps=2) == 15


@pytest.mark.parametrize("name", SDE_SAMPLERS)
def test_sde_samplers_are_deterministic_given_the_generator(name):
    model = gaussian(LINEAR)
    a, b = (S.sample(model, LINEAR, name, 10, (4, *SHAPE), torch.Generator().manual_seed(3)) for _ in range(2))
    c = S.sample(model, LINEAR, name, 10, (4, *SHAPE), torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert S.sample(model, LINEAR, name, 3, (2, *SHAPE), None).shape == (2, *SHAPE)   # generator=None allowed


def test_prediction_types_give_the_same_noise_estimate():
    """epsilon / v_prediction / sample outputs of the same exact model convert to the same eps_hat, at integer and
    fractional labels."""
    x = torch.randn(8, *SHAPE, dtype=torch.float64)
    estimates = []
    for kind in ("epsilon", "v_prediction", "sample"):
        config = dict(DDPMScheduler(prediction_type=kind).config)
        predictor = S.NoisePredictor(gaussian(config, dtype=torch.float64, seed=1), S.VPSDE(config))
        estimates.append(torch.stack([predictor(x, t) for t in (0.001, 0.2345678, 0.5, 1.0)]))
    torch.testing.assert_close(estimates[1], estimates[0])
    torch.testing.assert_close(estimates[2], estimates[0])


def test_vp_sde_matches_the_training_schedule():
    for config in (LINEAR, COSINE_V):
        sde, trained = S.VPSDE(config), DDPMScheduler.from_config(config).alphas_cumprod.double().numpy()
        labels = np.array([0, 1, 17, 500, 998, 999])
        alpha, sigma = sde.alpha_sigma((labels + 1) / sde.T)
        np.testing.assert_allclose(alpha**2, np.maximum(trained[labels], 1e-12), rtol=1e-12)
        np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-12)
        t = np.linspace(1e-5, 1, 37)
        np.testing.assert_allclose(sde.t_from_sigma_bar(sde.sigma_bar(t)), t, rtol=1e-9)
        # beta(t) = -d log abar / dt: its integral over [0, t] is -log abar(t)
        fine = np.linspace(0, 1, 200_001)
        integral = np.concatenate([[0], np.cumsum(sde.beta(fine[1:] - 0.5 / 200_000) / 200_000)])
        np.testing.assert_allclose(integral[::20_000], -sde.log_alpha_bar(fine[::20_000]), rtol=1e-3, atol=1e-6)
    # Song et al.'s continuous VP SDE beta(t) = 0.1 + 19.9 t, up to one step's increment (0.02) and the 1%
    # between T * -log(1 - beta_i) and T * beta_i
    sde, t = S.VPSDE(LINEAR), np.array([0.01, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(sde.beta(t), 0.1 + 19.9 * t, rtol=0.011, atol=0.025)


def test_make_scheduler_keeps_the_training_schedule():
    """Even from an in-memory config (whose defaults would otherwise be replaced by the target class's defaults,
    e.g. Heun's Stable-Diffusion betas), every sampler gets the training alphas_cumprod and prediction type."""
    for config in (DDPMScheduler().config, DDPMScheduler(beta_schedule="squaredcos_cap_v2",
                                                         prediction_type="v_prediction").config):
        trained = DDPMScheduler.from_config(config).alphas_cumprod
        for name in set(DIFFUSERS_SAMPLERS) - set(EDM_SAMPLERS):
            scheduler = make_scheduler(name, config)
            torch.testing.assert_close(scheduler.alphas_cumprod, trained)
            assert scheduler.config.prediction_type == config.prediction_type


def test_unknown_names_and_options_are_rejected():
    with pytest.raises(ValueError, match="'bogus'"):
        make_scheduler("bogus", LINEAR)
    with pytest.raises(ValueError, match="'pc'"):
        make_scheduler("pc", LINEAR)
    with pytest.raises(ValueError, match="'bogus'"):
        nfe("bogus", 10)
    with pytest.raises(ValueError, match="'bogus'"):
        S.sample(gaussian(LINEAR), LINEAR, "bogus", 10, (1, *SHAPE))
    with pytest.raises(ValueError, match=r"ode-heun does not take sampler option\(s\) \['rtol'\]"):
        S.sample(gaussian(LINEAR), LINEAR, "ode-heun", 10, (1, *SHAPE), rtol=1e-3)
    with pytest.raises(ValueError, match=r"ode-heun: unknown grid 'linear'; choose one of \['karras', 'uniform'\]"):
        S.SDESampler("ode-heun", {"grid": "linear"})
    with pytest.raises(ValueError, match=r"pc: unknown predictor 'euler'; choose one of \['sde-dpm\+\+2m', "):
        S.SDESampler("pc", {"predictor": "euler"})
    with pytest.raises(ValueError, match="400"):
        check_steps("ddim", 400)
    check_steps("ddim", 500)
    with pytest.raises(ValueError, match="ddim-clip.*30"):
        check_steps("ddim-clip", 30)
    check_steps("dpm++2m", 400)
    assert set(ALL_SAMPLERS) == set(DIFFUSERS_SAMPLERS) | set(SDE_SAMPLERS) and len(ALL_SAMPLERS) == 13
    assert set(MOMENT_STEPS) == set(ALL_SAMPLERS) and set(VP_SAMPLERS) | set(EDM_SAMPLERS) == set(ALL_SAMPLERS)
    with pytest.raises(ValueError, match="'edm-euler' needs a model trained with EDM preconditioning; this one is"):
        make_scheduler("edm-euler", LINEAR)


def test_sde_samplers_run_a_real_unet2dmodel():
    """A real (tiny, random) UNet2DModel takes the float labels; output is finite, NCHW, in the unet's device."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4).eval()
    pipe = CelebADiffusionPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    for name in SDE_SAMPLERS:
        kwargs = {"rtol": 1e-2, "atol": 1e-2} if name == "ode-rk45" else {}
        images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                      output_type="np", sampler=S.SDESampler(name, kwargs)).images
        assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
