"""pipeline.sampling.editing on the exact denoiser of a correlated Gaussian, where the conditional laws are
closed-form."""


import pytest
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler

from pipeline import CelebADiffusionPipeline
from pipeline.sampling.editing import (
    COLOUR_BASIS,
    IDENTITY_BASIS,
    colorize,
    decode,
    impute,
    interpolate,
    invert,
    slerp,
    to_basis,
)

from gaussian_model import EDMGaussianDenoiser, make_correlated_gaussian, make_gaussian

N = 384


@pytest.fixture(scope="module")
def gaussian():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    model = make_correlated_gaussian(scheduler.config)
    generator = torch.Generator().manual_seed(1)
    draws = torch.linalg.cholesky(model.covariance) @ torch.randn(48, 8, generator=generator, dtype=torch.float64)
    images = model.mu + draws.T.reshape(8, 3, 4, 4)
    return CelebADiffusionPipeline(unet=model, scheduler=scheduler), model, images


def shift_left(model, truth, mask, basis, result):
    """How much of the distance from the prior mean to the exact conditional mean of the unknown coordinates the
    imputed mean still has to go (0 = exact conditional mean, 1 = no better than ignoring the known part)."""
    mean, _ = model.conditional(truth, mask[0], basis)
    keep = mask.expand(1, 3, 4, 4)[0].flatten().bool()
    rotation = torch.kron(basis, torch.eye(16, dtype=torch.float64))
    prior = (rotation @ model.mu.flatten())[~keep]
    imputed = to_basis(result, basis).flatten(1)[:, ~keep].mean(0)
    return ((imputed - mean).norm() / (prior - mean).norm()).item()


def test_an_edm_model_edits_as_the_vp_model_it_equals():
    """Editing runs an EDM-trained network through EDMNoisePredictor: for the exact denoiser of the same Gaussian the
    inversion, the decoding and an inpainting agree with the VP model's."""
    vp_model = make_gaussian(DDPMScheduler().config, dtype=torch.float32)
    vp = CelebADiffusionPipeline(unet=vp_model, scheduler=DDPMScheduler())
    edm = CelebADiffusionPipeline(unet=EDMGaussianDenoiser(vp_model.mu, vp_model.s),
                                  scheduler=EDMEulerScheduler(sigma_data=0.5))
    images = vp_model.mu + vp_model.s * torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64)
    latents = invert(edm, images, 10)
    torch.testing.assert_close(latents, invert(vp, images, 10), rtol=0, atol=1e-4)
    torch.testing.assert_close(decode(edm, latents, 10), decode(vp, latents, 10), rtol=0, atol=1e-4)
    mask = torch.ones(1, 1, 4, 4)
    mask[..., :2] = 0
    painted = [impute(pipe, images, mask, method="repaint", steps=10, generator=torch.Generator().manual_seed(1))[0]
               for pipe in (edm, vp)]
    torch.testing.assert_close(painted[0], painted[1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("method, options", [("pc", {"steps": 100}),
                                             ("repaint", {"steps": 50, "jump_length": 5, "jump_n_sample": 5})])
def test_inpainting_keeps_known_pixels_and_follows_them(gaussian, method, options):
    pipe, model, images = gaussian
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1  # the left half is known
    truth = images[0]
    result, nfe = impute(pipe, truth.expand(N, -1, -1, -1), mask, method=method,
                         generator=torch.Generator().manual_seed(0), **options)
    assert torch.equal(result[..., :2], truth.expand(N, -1, -1, -1)[..., :2])
    # replacement conditions only through the noisy known part, so its samples keep part of the prior's bias
    # (here 0.54 for pc, 0.46 for repaint; more RePaint resampling lowers it): a sampler that ignored the known
    # half would score 1, the exact conditional 0 up to Monte-Carlo error (~0.05)
    assert shift_left(model, truth, mask, IDENTITY_BASIS, result) < 0.75
    # pc: predictor + corrector per step; repaint: 50 steps, and 9 jump points that re-denoise 5 steps 4 more times
    assert nfe == (200 if method == "pc" else 50 + 9 * 4 * 5)


def test_colorization_keeps_the_luminance_exactly_and_infers_colour(gaussian):
    pipe, model, images = gaussian
    truth = images[1]
    grey = truth.mean(dim=0, keepdim=True).expand(N, 1, -1, -1)
    result, _ = colorize(pipe, grey, steps=100, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.mean(dim=1), grey[:, 0], rtol=0, atol=1e-12)
    mask = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert shift_left(model, truth, mask, COLOUR_BASIS, result) < 0.75   # here 0.26


def test_inversion_then_generation_reconstructs_and_converges_with_steps(gaussian):
    pipe, _, images = gaussian

    def psnr(steps):
        error = (decode(pipe, invert(pipe, images, steps), steps) - images).pow(2).mean()
        return (10 * torch.log10(4 / error)).item()   # peak-to-peak 2 on the [-1, 1] scale

    coarse, fine = psnr(20), psnr(100)
    assert coarse > 25 and fine > coarse + 8   # first order: 5x the steps, ~5x smaller error (14 dB)


def test_interpolation_ends_at_the_reconstructions_and_slerp_keeps_the_norm(gaussian):
    pipe, _, images = gaussian
    frames = interpolate(pipe, images[2], images[3], frames=5, steps=20)
    ends = decode(pipe, invert(pipe, images[2:4], 20), 20)
    torch.testing.assert_close(frames[[0, -1]], ends)
    a, b = torch.randn(2, 4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b = b - (a @ b) / (a @ a) * a
    b = b * a.norm() / b.norm()
    assert abs(slerp(a, b, 0.3).norm() - a.norm()) < 1e-9


@pytest.mark.parametrize("mask, message", [
    (torch.ones(1, 1, 5, 5), "does not fit images"),
    (torch.zeros(1, 1, 4, 4), "keeps no pixel"),
    (torch.ones(1, 1, 4, 4), "nothing to fill"),
    (torch.full((1, 1, 4, 4), 0.5), "must be 0 (fill) or 1 (known)"),
])
def test_bad_masks_are_refused_before_sampling(gaussian, mask, message):
    pipe, model, images = gaussian
    calls = model.calls
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        impute(pipe, images[:1], mask)
    assert model.calls == calls


def test_edits_of_a_trainable_network_keep_no_autograd_graph():
    """A loaded UNet's parameters require gradients; every edit must still run without building a graph through its
    steps (which grows by the network's activations at every evaluation and exhausted memory in a 300-step edit)."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    assert all(p.requires_grad for p in unet.parameters())
    pipe = CelebADiffusionPipeline(unet=unet, scheduler=DDPMScheduler())
    faces = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.ones(1, 1, 8, 8)
    mask[..., :4] = 0
    results = [impute(pipe, faces, mask, method=method, steps=4, jump_length=2, jump_n_sample=2)[0]
               for method in ("pc", "repaint")]
    results += [colorize(pipe, faces, method="repaint", steps=4, jump_length=2, jump_n_sample=2)[0],
                invert(pipe, faces, 3), decode(pipe, faces, 3), interpolate(pipe, faces[0], faces[1], 3, 3)]
    assert all(not result.requires_grad and result.grad_fn is None for result in results)
