"""pipeline.likelihood against closed forms for Gaussian data (tests/gaussian_model.py).

For the exact Gaussian denoiser the probability-flow ODE maps the N(0, I) prior at t = 1 linearly, so the model
density at any t is a known Gaussian (``flow_marginal``), and its Jacobian is diagonal, which makes the Rademacher
Hutchinson estimate of the trace exact: the only error left is the ODE solver's.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from pipeline import CelebADiffusionPipeline
from pipeline import likelihood as L
from pipeline.pipeline_folder import weights_checksum

from gaussian_model import make_gaussian

LINEAR = dict(DDPMScheduler(beta_schedule="linear").config)
COSINE_V = dict(DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").config)
SHAPE = (3, 4, 4)
DIM = math.prod(SHAPE)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian(config):
    return make_gaussian(config, dtype=torch.float64, mu_max=0.2, s_range=(0.2, 0.3))


def data(model, n, seed=0):
    noise = torch.randn(n, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return model.mu + model.s * noise


def to_bpd(log_likelihood):
    return -log_likelihood / (DIM * math.log(2)) + 7


@pytest.mark.parametrize("config", [LINEAR, COSINE_V], ids=["linear-eps", "cosine-v"])
def test_log_likelihood_matches_the_exact_gaussian(config):
    model = gaussian(config)
    x = data(model, 64)
    t_min = model.sde.t_min
    with torch.inference_mode():   # as when called from pipeline code: autograd must still work
        result = L.log_likelihood(model, config, x, generator=torch.Generator().manual_seed(1), eps=t_min)
    exact = to_bpd(model.flow_log_density(x, t_min))
    assert ((to_bpd(result.log_likelihood) - exact) / exact).abs().max() < 1e-3
    assert result.nfe > 10
    # score_sde's eps = 1e-5 lies below the first trained step, where the label is clamped to 0 (so the model is no
    # longer the exact one there); still within the 1% asked of the estimate
    result = L.log_likelihood(model, config, x, generator=torch.Generator().manual_seed(1))
    exact = to_bpd(model.flow_log_density(x, 1e-5))
    assert ((to_bpd(result.log_likelihood) - exact) / exact).abs().max() < 1e-2


def test_gaussian_hutchinson_noise_is_unbiased():
    model = gaussian(LINEAR)
    x = data(model, 256, seed=2)
    result = L.log_likelihood(model, LINEAR, x, generator=torch.Generator().manual_seed(3), hutchinson="gaussian",
                              eps=model.sde.t_min, rtol=1e-4, atol=1e-4)
    diff = to_bpd(result.log_likelihood) - to_bpd(model.flow_log_density(x, model.sde.t_min))
    assert diff.std() > 1e-3                                     # it is noisy (unlike Rademacher here) ...
    assert diff.mean().abs() < 5 * diff.std() / math.sqrt(len(diff))   # ... but unbiased


def discretized_images(model, n, seed=0):
    """uint8 images whose pixel values are a discretised N(mu, s^2) on the [-1, 1] scale."""
    x = data(model, n, seed)
    return ((x + 1) * 128).floor().clamp(0, 255).to(torch.uint8)


def test_bits_per_dim_of_uint8_images_matches_the_exact_density():
    """End to end: dequantization (first draw of the generator), batching, bits/dim on the 256-level scale."""
    model = gaussian(LINEAR)
    images = discretized_images(model, 48)
    t_min = model.sde.t_min
    result = L.bits_per_dim(model, LINEAR, images, batch_size=32, generator=torch.Generator().manual_seed(5),
                            eps=t_min)
    x = L.dequantize(images, torch.Generator().manual_seed(5))
    assert x.min() >= -1 and x.max() < 1 and ((x + 1) * 128).floor().to(torch.uint8).equal(images)
    exact = to_bpd(model.flow_log_density(x, t_min))
    torch.testing.assert_close(result.bpd, exact, rtol=1e-3, atol=0)
    assert result.mean == pytest.approx(result.bpd.mean().item())
    assert result.stderr == pytest.approx(result.bpd.std().item() / math.sqrt(48))
    assert len(result.nfe) == 2


def test_dequantized_bpd_matches_the_discrete_nll_on_the_256_level_scale():
    """The model's bin probabilities P(k) = prod_i P(x_i in [k_i/128 - 1, (k_i+1)/128 - 1)) give the discrete NLL
    -log2 P(k) / D, computed here without any change of variables. Dequantized bpd is an upper bound on it in
    expectation (Jensen), and for a density this smooth on the bin scale the gap is ~1e-4 bits: this pins the
    '+ 7' (a 127.5 scale would be off by log2(128/127.5) = 0.0056 bits/dim)."""
    model = gaussian(LINEAR)
    images = discretized_images(model, 96, seed=6)
    t_min = model.sde.t_min
    result = L.bits_per_dim(model, LINEAR, images, batch_size=96, generator=torch.Generator().manual_seed(7),
                            eps=t_min)
    mean, std = model.flow_marginal(t_min)
    normal = torch.distributions.Normal(mean, std)
    lower = images.double() / 128 - 1
    bin_probability = normal.cdf(lower + 1 / 128) - normal.cdf(lower)
    discrete_bpd = -torch.log2(bin_probability).flatten(1).sum(1) / DIM
    gap = result.bpd - discrete_bpd
    assert abs(gap.mean()) < 1e-3 and gap.mean() > -3 * gap.std() / math.sqrt(len(gap))


def test_cli_writes_a_report(tmp_path, monkeypatch):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    CelebADiffusionPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "model")
    calls = []

    def fake_load_eval_images(train_data_dir, split, resolution, num_images):
        calls.append((train_data_dir, split, resolution, num_images))
        return torch.randint(0, 256, (num_images, 3, resolution, resolution), dtype=torch.uint8,
                             generator=torch.Generator().manual_seed(0))

    monkeypatch.setattr("pipeline.data.celeba.load_eval_images", fake_load_eval_images)
    out = tmp_path / "results" / "likelihood.json"
    argv = ["--model", str(tmp_path / "model"), "--num_images", "3", "--batch_size", "2", "--split", "valid",
            "--rtol", "1e-2", "--atol", "1e-2", "--device", "cpu", "--resume_dir", str(tmp_path / "batches"),
            "--out", str(out)]
    L.main(argv)
    report = json.loads(out.read_text())
    L.main(argv)  # a rerun reads both batches back
    again = json.loads(out.read_text())
    assert report["resumed_batches"] == 0 and again["resumed_batches"] == 2 and again["bpd"] == report["bpd"]
    assert calls == [(None, "valid", 8, 3)] * 2
    assert report["num_images"] == 3 and len(report["bpd"]) == 3 and len(report["nfe_per_batch"]) == 2
    assert all(math.isfinite(b) for b in report["bpd"]) and math.isfinite(report["bpd_stderr"])
    assert report["bpd_mean"] == pytest.approx(sum(report["bpd"]) / 3)
    assert report["unet_sha256"] == weights_checksum(unet)  # which weights the number belongs to


def test_an_interrupted_bits_per_dim_run_resumes_with_identical_numbers(tmp_path):
    """With a store, finished batches are read back instead of solved, and their Hutchinson draws are still made, so
    the batches after them get the same noise as in an uninterrupted run (Gaussian probes: with Rademacher ones the
    diagonal Jacobian's trace estimate would not depend on the noise)."""
    from pipeline.sampling.sample_store import BatchStore

    model = gaussian(LINEAR)
    images = discretized_images(model, 7)
    settings = {"seed": 5, "batch_size": 3}

    def run(store=None):
        return L.bits_per_dim(model, LINEAR, images, batch_size=3, generator=torch.Generator().manual_seed(5),
                              rtol=1e-3, atol=1e-3, hutchinson="gaussian", store=store)

    straight = run()
    run(BatchStore(tmp_path, settings))
    (tmp_path / "batch_000001_n3.npz").unlink()  # as if killed while solving the second batch
    store = BatchStore(tmp_path, settings)
    resumed = run(store)
    assert store.loaded == 2 and torch.equal(resumed.bpd, straight.bpd) and resumed.nfe == straight.nfe


def test_progress_reports_every_evaluation_and_the_span_covered_without_changing_the_result():
    """The progress callback sees NFE 1, 2, ... and the share of the log sigma_bar span, which starts at 0 and whose
    furthest point is the end of the solve (1); reporting it leaves the estimate unchanged."""
    model = gaussian(LINEAR)
    x = data(model, 8)
    seen = []
    with_progress = L.log_likelihood(model, LINEAR, x, generator=torch.Generator().manual_seed(1), rtol=1e-3,
                                     atol=1e-3, progress=lambda fraction, nfe: seen.append((fraction, nfe)))
    plain = L.log_likelihood(model, LINEAR, x, generator=torch.Generator().manual_seed(1), rtol=1e-3, atol=1e-3)
    assert torch.equal(with_progress.log_likelihood, plain.log_likelihood)
    fractions, counts = zip(*seen)
    assert list(counts) == list(range(1, plain.nfe + 1))
    assert fractions[0] == pytest.approx(0.0, abs=1e-12) and max(fractions) == pytest.approx(1.0, abs=1e-12)
    assert min(fractions) >= -1e-12
