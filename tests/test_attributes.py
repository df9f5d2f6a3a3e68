"""Attribute conditioning: the zero-initialised encoder, classifier-free guidance, names, the saved folder."""

import json
import subprocess
import sys

import pytest
import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, UNet2DModel

from benchmarks.attribute_control import linear_label_gain, noise_errors
from pipeline import CelebADiffusionPipeline
from pipeline.generate import generate, parse_attributes
from pipeline.models.architecture import AttributeConditionedUNet, drop_attributes
from pipeline.models.attribute_encoder import CELEBA_ATTRIBUTES, AttributeEncoder
from pipeline.pipeline_folder import load_pipeline, save_pipeline_folder
from pipeline.training.build import build_optimizer_and_ema
from pipeline.training.lr_schedules import build_lr_scheduler
from pipeline.training.settings import OptimizerSettings

from conftest import run_command, subprocess_env, train_args


def tiny_unet(**overrides) -> UNet2DModel:
    torch.manual_seed(0)
    config = dict(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                  down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                  norm_num_groups=4)
    return UNet2DModel(**{**config, **overrides}).eval()


def attribute_pipeline(random_encoder: bool = True) -> CelebADiffusionPipeline:
    """A tiny attribute model; ``random_encoder`` gives the encoder weights as after some fine-tuning."""
    unet = tiny_unet(class_embed_type="identity")
    encoder = AttributeEncoder(embedding_dim=4 * unet.config.block_out_channels[0])
    if random_encoder:
        torch.nn.init.normal_(encoder.projection.weight, std=0.5)
        torch.nn.init.normal_(encoder.projection.bias, std=0.5)
    pipe = CelebADiffusionPipeline(unet=unet, scheduler=DDPMScheduler(), attribute_encoder=encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def predictions(pipe, attributes, guidance_scale, x, t):
    with torch.no_grad():
        return pipe.guided_denoiser(attributes, guidance_scale)(x, t).sample


def test_a_zero_initialised_encoder_leaves_the_unconditional_unet_unchanged():
    plain = tiny_unet()
    conditional = UNet2DModel.from_config(plain.config, class_embed_type="identity").eval()
    conditional.load_state_dict(plain.state_dict())  # the identity class embedding adds no weights
    pipe = CelebADiffusionPipeline(unet=conditional, scheduler=DDPMScheduler(),
                                   attribute_encoder=AttributeEncoder(embedding_dim=32))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    with torch.no_grad():
        expected = plain(x, t).sample
    for guidance in (0.0, 1.0, 3.0):  # (3: the two predictions come from one doubled batch, equal up to rounding)
        torch.testing.assert_close(predictions(pipe, {"Smiling": 1, "Male": -1}, guidance, x, t), expected,
                                   rtol=0, atol=1e-6)


def test_guidance_0_is_unconditional_1_conditional_and_w_extrapolates_linearly():
    pipe = attribute_pipeline()
    x, t = torch.randn(3, 3, 8, 8), torch.tensor([5, 500, 999])
    wanted = {"Smiling": 1, "Eyeglasses": 1, "Male": -1}
    vector = pipe.attribute_encoder.vector(wanted)
    with torch.no_grad():
        conditional = pipe.unet(x, t, class_labels=pipe.attribute_encoder(vector.expand(3, -1))).sample
        plain = pipe.unet(x, t, class_labels=pipe.attribute_encoder(torch.zeros(3, len(CELEBA_ATTRIBUTES)))).sample
    assert not torch.allclose(conditional, plain, atol=1e-3)  # the attributes matter to this encoder
    torch.testing.assert_close(predictions(pipe, wanted, 0.0, x, t), plain)
    torch.testing.assert_close(predictions(pipe, wanted, 1.0, x, t), conditional)
    torch.testing.assert_close(predictions(pipe, wanted, 3.0, x, t), plain + 3 * (conditional - plain),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(predictions(pipe, None, 1.0, x, t), plain)  # no attributes: unconditional
    scalar = torch.tensor(500)  # a scheduler's 0-dim timestep, batched with the conditional copy
    torch.testing.assert_close(predictions(pipe, wanted, 3.0, x, scalar)[1], predictions(pipe, wanted, 3.0, x, t)[1],
                               rtol=1e-5, atol=1e-5)


def test_attribute_names_values_and_models_are_checked_before_sampling():
    pipe = attribute_pipeline()
    with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['Smilling'\]; the attributes are 5_o_Clock"):
        pipe(attributes={"Smilling": 1}, num_inference_steps=2)
    with pytest.raises(ValueError, match="must be 1 .*got {'Smiling': 2}"):
        pipe.guided_denoiser({"Smiling": 2}, 1.0)
    plain = CelebADiffusionPipeline(unet=tiny_unet(), scheduler=DDPMScheduler())
    for call in ({"attributes": {"Smiling": 1}}, {"guidance_scale": 3.0}):
        with pytest.raises(ValueError, match="need an attribute model"):
            plain(num_inference_steps=2, **call)
    assert parse_attributes("Smiling=1, Eyeglasses=-1") == {"Smiling": 1, "Eyeglasses": -1}
    for text in ("Smiling", "Smiling=yes", ","):
        with pytest.raises(ValueError, match="--attributes"):
            parse_attributes(text)


def test_guided_generation_is_seeded_and_depends_on_the_attributes():
    pipe = attribute_pipeline()
    smiling, _ = generate(pipe, 2, "ddim", 4, seed=0, progress=False, attributes={"Smiling": 1}, guidance_scale=3.0)
    again, _ = generate(pipe, 2, "ddim", 4, seed=0, progress=False, attributes={"Smiling": 1}, guidance_scale=3.0)
    plain, _ = generate(pipe, 2, "ddim", 4, seed=0, progress=False)
    assert (smiling == again).all() and not (smiling == plain).all()


def test_the_attribute_folder_round_trips_and_loads_with_plain_diffusers(tmp_path):
    pipe = attribute_pipeline()
    save_pipeline_folder(pipe, tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["attribute_encoder"] == ["attribute_encoder", "AttributeEncoder"]
    assert (tmp_path / "model" / "attribute_encoder" / "attribute_encoder.py").is_file()
    loaded = load_pipeline(str(tmp_path / "model"), channels_last=False)  # the weights' own layout: equal outputs
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    assert torch.equal(predictions(loaded, {"Bangs": 1}, 2.0, x, t), predictions(pipe, {"Bangs": 1}, 2.0, x, t))
    # sys.modules["pipeline"] = None: the folder's own code must be enough
    load = ("import sys, torch; sys.modules['pipeline'] = None; from diffusers import DiffusionPipeline; "
            "pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True); "
            "out = pipe(batch_size=1, num_inference_steps=2, attributes={'Bangs': 1}, guidance_scale=2.0, "
            "output_type='np'); print(type(pipe.attribute_encoder).__name__, out.images.shape)")
    result = subprocess.run([sys.executable, "-c", load, str(tmp_path / "model")], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "AttributeEncoder (1, 8, 8, 3)"


def test_guidance_reaches_a_pixel_unshuffled_unet():
    unet = tiny_unet(sample_size=4, in_channels=12, out_channels=12, class_embed_type="identity")
    encoder = AttributeEncoder(embedding_dim=32)
    torch.nn.init.normal_(encoder.projection.weight, std=0.5)
    pipe = CelebADiffusionPipeline(unet=unet, scheduler=DDPMScheduler(), attribute_encoder=encoder, pixel_unshuffle=2)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([10, 900])
    plain, smiling = (predictions(pipe, values, 1.0, x, t) for values in ({}, {"Smiling": 1}))
    assert smiling.shape == (2, 3, 8, 8) and not torch.allclose(plain, smiling, atol=1e-4)


def test_fine_tuning_starts_from_the_unconditional_model_and_learns_the_attributes(smoke_pipeline_dir, tmp_path):
    frozen = tmp_path / "frozen"  # learning rate 0: the attribute model must predict exactly what it started from
    run_command(train_args(frozen, "--init_from", smoke_pipeline_dir, "--attribute_conditioning", "--max_train_steps",
                           2, "--learning_rate", 0))
    base, tuned = load_pipeline(str(smoke_pipeline_dir)), load_pipeline(str(frozen))
    assert tuned.attribute_encoder is not None and base.attribute_encoder is None
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([20, 800])
    torch.testing.assert_close(predictions(tuned, {"Smiling": 1, "Young": -1}, 3.0, x, t),
                               predictions(base, None, 1.0, x, t), rtol=0, atol=1e-5)
    learning = tmp_path / "learning"
    run_command(train_args(learning, "--init_from", smoke_pipeline_dir, "--attribute_conditioning",
                           "--max_train_steps", 4, "--no-use_ema"))
    weight = load_pipeline(str(learning)).attribute_encoder.projection.weight
    assert weight.abs().sum() > 0  # the labels reach the encoder's gradients
    wrong = run_command(train_args(tmp_path / "wrong", "--init_from", smoke_pipeline_dir, "--attribute_conditioning",
                                   "--block_out_channels", 16, 16), check=False)
    assert wrong.returncode == 2 and "differs from the flags' in {'block_out_channels'" in wrong.stderr


def test_training_labels_drop_attributes_at_the_asked_rates():
    generator = torch.Generator().manual_seed(0)
    attributes = torch.ones(20000, 40, dtype=torch.int8)
    labels = drop_attributes(attributes, unspecified_prob=0.5, dropout=0.1, generator=generator)
    dropped_rows = (labels == 0).all(dim=1).float().mean()
    kept = labels[(labels != 0).any(dim=1)].ne(0).float().mean()
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    assert abs(dropped_rows - 0.1) < 0.01 and abs(kept - 0.5) < 0.01  # rates within ~4 binomial SEs


def test_guidance_on_an_edm_model_is_linear_in_the_noise_estimate_of_every_sampler_family():
    """Classifier-free guidance mixes the raw network outputs; EDM's denoiser and the VP view's noise estimate are
    affine in them with the same weights, so guidance w gives eps_u + w (eps_c - eps_u) there too, and both sampler
    families generate with attributes."""
    pipe = attribute_pipeline()
    pipe = CelebADiffusionPipeline(unet=pipe.unet, scheduler=EDMEulerScheduler(sigma_data=0.5),
                                   attribute_encoder=pipe.attribute_encoder)
    pipe.set_progress_bar_config(disable=True)
    x, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([30.0, 850.5])
    pipe.unet.double()
    pipe.attribute_encoder.double()

    def eps(attributes, scale):
        with torch.no_grad():
            return pipe.vp_denoiser(pipe.guided_denoiser(attributes, scale))(x, t).sample

    plain, conditional, guided = eps(None, 1.0), eps({"Smiling": 1}, 1.0), eps({"Smiling": 1}, 3.0)
    torch.testing.assert_close(eps({"Smiling": 1}, 0.0), plain)
    torch.testing.assert_close(guided, plain + 3.0 * (conditional - plain))
    pipe.unet.float()
    pipe.attribute_encoder.float()
    for sampler in ("edm-dpm++2m", "ddim"):
        images, _ = generate(pipe, 2, sampler, 4, seed=0, progress=False, attributes={"Smiling": 1},
                             guidance_scale=3.0)
        assert images.shape == (2, 8, 8, 3)


def test_the_encoder_gets_its_own_learning_rate_under_the_same_schedule():
    """A zero-initialised encoder fine-tuned at the UNet's rate barely moves; its own group moves it at its own rate
    (Adam's first step changes every weight with a gradient by exactly the rate), scaled by the same schedule."""
    unet = tiny_unet(class_embed_type="identity")
    model = AttributeConditionedUNet(unet, AttributeEncoder(embedding_dim=unet.time_embedding.linear_2.out_features))
    settings = OptimizerSettings(learning_rate=1e-4, attribute_encoder_learning_rate=1e-2, use_ema=False)
    optimizer, _ = build_optimizer_and_ema(model, settings)
    unet_group, encoder_group = optimizer.param_groups
    assert [id(p) for p in encoder_group["params"]] == [id(p) for p in model.encoder.parameters()]
    assert len(unet_group["params"]) + len(encoder_group["params"]) == len(list(model.parameters()))
    labels = torch.zeros(2, len(CELEBA_ATTRIBUTES))
    labels[:, 0] = 1
    model(torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), class_labels=labels).sample.square().mean().backward()
    before = model.encoder.projection.weight.detach().clone()
    optimizer.step()
    moved = (model.encoder.projection.weight.detach() - before).abs()
    torch.testing.assert_close(moved[:, 0], torch.full_like(moved[:, 0], 1e-2), rtol=1e-3, atol=0)
    assert moved[:, 1:].max() == 0  # attributes left unspecified get no gradient
    schedule = build_lr_scheduler("warmup_stable_decay", optimizer, num_warmup_steps=2, num_training_steps=10,
                                  num_decay_steps=4)
    for _ in range(8):
        optimizer.step()
        schedule.step()
        unet_rate, encoder_rate = schedule.get_last_lr()
        assert encoder_rate == pytest.approx(100 * unet_rate)
    assert len(build_optimizer_and_ema(model, OptimizerSettings(use_ema=False))[0].param_groups) == 1


def test_label_gain_compares_conditions_on_the_same_noise():
    clean = torch.rand(6, 3, 8, 8) * 2 - 1
    labels = torch.randint(0, 2, (6, len(CELEBA_ATTRIBUTES))).float() * 2 - 1
    none = torch.zeros_like(labels)
    untrained = attribute_pipeline(random_encoder=False)  # a zero encoder: the labels cannot matter
    assert torch.equal(noise_errors(untrained, clean, labels, 700, seed=0, batch_size=4),
                       noise_errors(untrained, clean, none, 700, seed=0, batch_size=4))
    pipe = attribute_pipeline()
    errors = noise_errors(pipe, clean, labels, 700, seed=0, batch_size=4)
    assert torch.equal(errors, noise_errors(pipe, clean, labels, 700, seed=0, batch_size=4))
    assert not torch.allclose(errors, noise_errors(pipe, clean, none, 700, seed=0, batch_size=4))
    alpha_bar = DDPMScheduler().alphas_cumprod[700]  # the batch from image 4 is noised with seed 0 + 4
    noise = torch.randn(clean[4:].shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        estimate = pipe.guided_denoiser(labels[4:], 1.0)(alpha_bar.sqrt() * clean[4:] + (1 - alpha_bar).sqrt() * noise,
                                                           torch.full((2,), 700)).sample
    assert torch.allclose(errors[4:], (estimate.double() - noise.double()).pow(2).mean(dim=(1, 2, 3)))


def test_linear_label_gain_on_faces_linear_in_their_labels():
    """Pixels 128 + 40 a + 40 b of two independent +-1 labels: knowing both explains every pixel (gain 1); knowing
    only a explains half the variance (gain 1/2 within the sampling error)."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (6000, 2), generator=generator).float() * 2 - 1
    images = (128 + 40 * labels[:, 0] + 40 * labels[:, 1]).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    train, heldout = slice(0, 4000), slice(4000, None)
    gain, _ = linear_label_gain(images[train], labels[train], images[heldout], labels[heldout])
    assert gain == pytest.approx(1.0, abs=1e-9)
    only_a = labels * torch.tensor([1.0, 0.0])  # b unspecified everywhere
    gain, stderr = linear_label_gain(images[train], only_a[train], images[heldout], only_a[heldout], chunk=999)
    assert abs(gain - 0.5) < 4 * stderr + 0.01 and 0 < stderr < 0.05
