"""Mean-colour correction (pipeline.mean_colour, MeanColourDenoiser): exact on Gaussian data, fitted, stored, used.

For data with independent pixels x_0[c, h, w] ~ N(mu_c, s_c^2), the per-image mean colour is N(mu_c, s_c^2 / D), and
the closed-form noise mean of the correction equals the spatial mean of the exact E[eps | x_t]. So a copy of the
exact denoiser that has lost its mean (what our U-Net does, REPORT Section 6.4) is repaired exactly.
"""

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput
from test_samplers import assert_moments, run_pipeline

from pipeline import CelebADiffusionPipeline, load_pipeline
from pipeline.data.celeba import load_eval_images
from pipeline.data.preprocess import to_model_range
from pipeline.denoisers import MeanColourDenoiser
from pipeline.mean_colour import MeanColourPrior, MeanColourStatistics
from pipeline.sampling.schedulers import make_scheduler

from conftest import FIXTURE, run_command
from gaussian_model import GaussianDenoiser

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MU, S = torch.tensor([0.1, -0.2, 0.05]), torch.tensor([0.25, 0.2, 0.3])
SIZE = 4


def iid_gaussian(config: dict, dtype=torch.float64) -> GaussianDenoiser:
    field = torch.ones(3, SIZE, SIZE, dtype=torch.float64)
    return GaussianDenoiser(MU[:, None, None] * field, S[:, None, None] * field, config, dtype=dtype)


def schedule(prediction_type: str = "epsilon", beta_schedule: str = "linear") -> dict:
    return dict(DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type).config)


# the exact prior of the per-image mean colour of iid_gaussian's data
PRIOR = {"mean": MU.tolist(), "covariance": torch.diag(S.double() ** 2 / SIZE**2).tolist(), "num_images": 0}


class WithoutMeanNoise(torch.nn.Module):
    """The exact denoiser with the spatial mean of its noise estimate removed: our U-Net's failure, made exact."""

    def __init__(self, model: GaussianDenoiser):
        super().__init__()
        self.model, self.config, self.dtype, self.device = model, model.config, model.dtype, model.device

    def forward(self, sample, timestep, return_dict=True):
        out, x = self.model(sample, timestep).sample, sample.to(torch.float64)
        a, s = self.model.coefficients(timestep, x.shape[0])
        kind = self.model.prediction_type
        eps = out if kind == "epsilon" else a * out + s * x if kind == "v_prediction" else (x - a * out) / s
        eps = eps - eps.mean(dim=(2, 3), keepdim=True)
        out = eps if kind == "epsilon" else (eps - s * x) / a if kind == "v_prediction" else (x - s * eps) / a
        return UNet2DOutput(sample=out.to(self.dtype))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_correction_restores_the_exact_denoiser_at_integer_and_fractional_labels(prediction_type):
    config = schedule(prediction_type)
    exact = iid_gaussian(config)
    broken = WithoutMeanNoise(exact)
    corrected = MeanColourDenoiser(broken, DDPMScheduler.from_config(config).alphas_cumprod, prediction_type, PRIOR)
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for label in [999, 998.4, 700, 123.25, 0, 0.5]:
        timestep = torch.full((4,), label)
        want = exact(x, timestep).sample
        assert (broken(x, timestep).sample - want).abs().max() > 1e-4  # the broken model is wrong
        torch.testing.assert_close(corrected(x, timestep).sample, want, rtol=1e-9, atol=1e-9)


class ZeroNoise(torch.nn.Module):
    """A stand-in UNet that predicts zero noise on whatever device its input is."""

    config = SimpleNamespace(in_channels=3, sample_size=SIZE)

    def forward(self, sample, timestep):
        return UNet2DOutput(sample=torch.zeros_like(sample))


def test_correction_runs_on_the_device_of_its_input():
    """The prior and the schedule are kept on the CPU; an input on another device must not meet them there. torch's
    shape-only "meta" device refuses to mix with CPU tensors as a GPU does, so it stands in for one here."""
    corrected = MeanColourDenoiser(ZeroNoise(), DDPMScheduler.from_config(schedule()).alphas_cumprod, "epsilon", PRIOR)
    x = torch.empty(2, 3, SIZE, SIZE, device="meta")
    out = corrected(x, torch.tensor(999)).sample  # (a meta timestep has no value to interpolate the schedule at)
    assert out.device.type == "meta" and out.shape == x.shape and out.dtype == torch.float32


def test_exact_ddim_keeps_the_initial_noise_mean_without_the_correction_and_is_right_with_it():
    """The ODE carries the initial noise's mean to the end divided by alpha_T (here 1 / (4 * 0.0064) ~ 39, clamped to
    [-1, 1]): without the correction the sample means are far off; with it every pixel's moments match."""
    config = schedule()
    exact = iid_gaussian(config, dtype=torch.float32)
    broken = WithoutMeanNoise(exact)
    wrong = run_pipeline(broken, config, "ddim", 500, 3000)
    assert (wrong.double().std(0) - exact.s).abs().max() > 0.3
    pipe = CelebADiffusionPipeline(unet=broken, scheduler=make_scheduler("ddim", config), mean_colour_prior=PRIOR)
    pipe.set_progress_bar_config(disable=True)
    right = pipe(batch_size=3000, num_inference_steps=500, generator=torch.Generator().manual_seed(0),
                 output_type="pt", mean_colour_correction=True).images
    assert_moments(right, exact)


def test_statistics_are_the_mean_and_covariance_of_the_image_means():
    images = torch.rand(50, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    statistics = MeanColourStatistics()
    for batch in images.split(7):
        statistics.update(batch)
    prior = statistics.prior()
    means = images.double().mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(prior.mean, means.mean(0), rtol=1e-12)
    np.testing.assert_allclose(prior.covariance, np.cov(means.T), rtol=1e-10)
    assert prior.num_images == 50
    with pytest.raises(ValueError, match="symmetric positive semi-definite"):
        MeanColourPrior([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]], 2)
    with pytest.raises(ValueError, match="at least 2 images"):
        MeanColourStatistics().prior()


def test_statistics_summed_over_shards_and_restored_from_json_equal_one_pass():
    """What training does: each process keeps its own sums, checkpoints them as JSON, and they are added at save."""
    images = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    whole, shards = MeanColourStatistics(), [MeanColourStatistics(), MeanColourStatistics()]
    for index, batch in enumerate(images.split(5)):
        whole.update(batch)
        shards[index % 2].update(batch)
    restored = MeanColourStatistics()
    restored.load_state_dict(json.loads(json.dumps(shards[0].state_dict())))
    assert torch.equal(restored.to_tensor(), shards[0].to_tensor())
    summed = MeanColourStatistics()
    summed.load_tensor(restored.to_tensor() + shards[1].to_tensor())
    assert summed.count == 40
    np.testing.assert_allclose(summed.prior().mean, whole.prior().mean, rtol=1e-12)
    np.testing.assert_allclose(summed.prior().covariance, whole.prior().covariance, rtol=1e-10)
    with pytest.raises(ValueError, match="for 3 channels need 13 values, got shape"):
        summed.load_tensor(torch.zeros(12))


def test_fit_command_stores_the_prior_that_from_pretrained_reads_back(smoke_pipeline_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(smoke_pipeline_dir, model)
    index = json.loads((model / "model_index.json").read_text())
    assert index.pop("mean_colour_prior")["num_images"] == 32  # train_unet.py fitted it on its 8 x 4 images
    (model / "model_index.json").write_text(json.dumps(index))
    pipe = load_pipeline(str(model))
    with pytest.raises(ValueError, match="mean_colour_correction needs the pipeline's mean_colour_prior"):
        pipe(num_inference_steps=2, mean_colour_correction=True)
    assert pipe.resolve_mean_colour_correction(None) is False  # without a prior, the default is not to correct
    run_command(["-m", "pipeline.mean_colour", "--model", str(model), "--train_data_dir", str(FIXTURE),
                 "--num_images", "6"])
    stored = json.loads((model / "model_index.json").read_text())["mean_colour_prior"]
    size = pipe.unet.config.sample_size
    images = to_model_range(load_eval_images(str(FIXTURE), "train", size, 6)).double()
    np.testing.assert_allclose(stored["mean"], images.mean(dim=(0, 2, 3)).numpy(), rtol=1e-9)
    assert stored["num_images"] == 6
    loaded = load_pipeline(str(model))
    assert loaded.config.mean_colour_prior == stored
    loaded.set_progress_bar_config(disable=True)

    def sample(**kwargs):
        return loaded(num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0),
                      **kwargs).images

    corrected = sample(mean_colour_correction=True)
    assert corrected.shape == (1, 3, size, size) and torch.isfinite(corrected).all()
    assert torch.equal(sample(), corrected)  # with a prior, the default is to correct
    assert not torch.equal(sample(mean_colour_correction=False), corrected)
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())["mean_colour_prior"] == stored


@pytest.mark.slow  # a finished experiment's tool (experiments/)
def test_mean_error_benchmark_tells_a_network_without_the_mean_from_the_exact_one():
    from experiments.mean_colour_error import measure

    config = schedule()
    exact = iid_gaussian(config)
    images = exact.mu + exact.s * torch.randn(64, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1),
                                              dtype=torch.float64)
    labels = [999, 500, 10]
    scheduler = DDPMScheduler.from_config(config)
    broken = measure(CelebADiffusionPipeline(unet=WithoutMeanNoise(exact), scheduler=scheduler,
                                             mean_colour_prior=PRIOR), images, labels)
    right = measure(CelebADiffusionPipeline(unet=exact, scheduler=scheduler), images, labels)
    for wrong, best in zip(broken["labels"], right["labels"]):
        assert wrong["network"]["mean_error_ratio"] == pytest.approx(1.0, abs=1e-12)
        # corrected = the exact denoiser, up to the float32 inputs and outputs of the benchmark
        assert wrong["mean_colour_corrected"] == pytest.approx(best["network"], rel=1e-6)
    assert (right["labels"][0]["network"]["mean_error_ratio"] < 0.1
            and "mean_colour_corrected" not in right["labels"][0])
    assert broken["pure_noise"]["mean_slope"] == pytest.approx(0.0, abs=1e-12)
    assert right["pure_noise"]["mean_slope"] == pytest.approx(1.0, abs=0.01)
    assert right["pure_noise"]["pixel_slope"] == pytest.approx(1.0, abs=0.01)
