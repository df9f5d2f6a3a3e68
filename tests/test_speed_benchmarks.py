"""The speed benchmarks run end to end on the smoke UNet and the fixture, and write what the result tables read."""

import json

import pytest

from conftest import FIXTURE, SMOKE_CONFIG, run_command

pytestmark = pytest.mark.slow


def test_train_throughput_compares_the_example_at_both_precisions_with_ours(tmp_path):
    out = tmp_path / "train_throughput.json"
    run_command(["benchmarks/train_throughput.py", "--config", str(SMOKE_CONFIG), "--train_data_dir", str(FIXTURE),
                 "--repeats", "2", "--steps", "1", "--warmup", "1", "--data_batches", "1", "--out", str(out)],
                timeout=900)
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"A_example_fp32", "A_example_bf16", "B_train_unet"}
    assert [result["variants"][name]["mixed_precision"] for name in result["variants"]] == ["no", "bf16", "bf16"]
    ours = result["variants"]["B_train_unet"]["img_per_s"]["median"]
    assert result["ratio_vs_example_bf16"] == pytest.approx(
        ours / result["variants"]["A_example_bf16"]["img_per_s"]["median"])
    assert result["ratio_vs_example_fp32_per_round"]["runs"] == 2
    assert 0 < result["flops"]["B_train_unet"]["fraction_of_gemm_ceiling"]


def test_profile_steps_tables_add_up(tmp_path):
    run_command(["benchmarks/profile_steps.py", "--config", str(SMOKE_CONFIG), "--train_data_dir", str(FIXTURE),
                 "--steps", "1", "--warmup", "1", "--sample_batch_size", "2", "--out_dir", str(tmp_path)],
                timeout=600)
    result = json.loads((tmp_path / "profile.json").read_text())
    for step in ("train", "sample"):
        assert sum(group["share"] for group in result[step]["groups"].values()) == pytest.approx(1.0)
        assert (tmp_path / f"profile_{step}.txt").read_text().startswith(f"{step} step")
    assert result["train"]["groups"]["convolution"]["share"] > 0


def test_sampling_speed_variants_and_batch_sweep(tmp_path):
    out = tmp_path / "sampling.json"
    common = ["benchmarks/sampling_speed.py", "--config", str(SMOKE_CONFIG), "--batch_size", "4", "--out", str(out)]
    run_command([*common, "--variants", "fp32, NCHW", "bf16, channels_last"], timeout=600)
    run_command([*common, "--samplers", "--variants", "bf16, channels_last", "--batch_sizes", "2", "4",
                 "--sweep_variant", "bf16, channels_last"], timeout=600)  # the sweep alone keeps the variants
    result = json.loads(out.read_text())
    variants = result["samplers"]["dpm++2m"]["variants"]
    assert variants["fp32, NCHW"]["speedup_vs_fp32_NCHW"]["median"] == 1.0
    assert 0 < variants["bf16, channels_last"]["image_difference_vs_fp32_NCHW"]["mean_abs"] < 0.05
    assert set(result["batch_sweep"]["img_per_s"]) == {"2", "4"} and result["batch_sweep"]["images_per_run"] == 4
