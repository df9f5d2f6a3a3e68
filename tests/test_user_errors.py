"""What a new user meets first: every bad setting is one line on stderr, exit status 2, and nothing written."""

import os

import pytest

from pipeline.cli import default_threads
from train_unet import parse_args, resolve_mixed_precision

from conftest import run_command, train_args


@pytest.mark.parametrize("flags, message", [
    (["--train_batch_size", "-1"], "--train_batch_size must be positive, got -1"),
    (["--resolution", "63"], "--resolution 63 must be a multiple of 2 (2 UNet levels), e.g. 62, 64"),
    (["--max_train_steps", "0"], "--max_train_steps must be positive"),
    (["--crop_size", "0"], "--crop_size must be positive"),
    (["--block_out_channels", "16", "32", "64"], "need one entry per level; got 3, 2 and 2"),
])
def test_bad_training_settings_are_one_line(capsys, flags, message):
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--config", "configs/smoke.yaml", "--train_data_dir", "x", *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1 and message in lines[0]


def test_a_bad_setting_fails_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    result = run_command(train_args(out, "--train_batch_size", "0"), check=False)  # it used to hang
    assert result.returncode == 2 and "usage:" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "train_unet.py: error: --train_batch_size must be positive, got 0 (see --help)"]
    assert not out.exists()


def test_a_yaml_typo_is_named_with_a_suggestion(tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("learnig_rate: 1.0e-4\n")
    result = run_command(train_args(tmp_path / "run", "--config", config), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"train_unet.py: error: {config}: unknown key 'learnig_rate'; did you mean 'learning_rate'? (see --help)"]


def test_mixed_precision_comes_from_the_flag_then_the_launcher(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert resolve_mixed_precision(None, on_gpu=False) == ("no", "the default")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what `accelerate launch --mixed_precision bf16` sets
    assert resolve_mixed_precision(None, on_gpu=False)[0] == "bf16"
    assert resolve_mixed_precision("no", on_gpu=False) == ("no", "--mixed_precision")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert resolve_mixed_precision(None, on_gpu=True)[0] == "fp16"
    with pytest.raises(ValueError, match=r"fp16 \(from the launcher .*\) needs a GPU; on a CPU use bf16"):
        resolve_mixed_precision(None, on_gpu=False)


def test_the_launchers_precision_reaches_training_and_is_logged(tmp_path):
    result = run_command(train_args(tmp_path / "run", "--max_train_steps", "1"),
                         env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert "mixed precision: bf16 (from the launcher" in result.stderr
    refused = run_command(train_args(tmp_path / "fp16", "--mixed_precision", "fp16"), check=False)
    assert refused.returncode == 2 and "needs a GPU; on a CPU use bf16" in refused.stderr
    assert not (tmp_path / "fp16").exists()


@pytest.mark.parametrize("flags, message", [
    (["--batch_size", "0"], "--batch_size must be positive, got 0"),
    (["--steps", "-3"], "--steps must be positive, got -3"),
    (["--scheduler", "dpm"], "unknown sampler 'dpm'; choose one of ddpm, ddim, ddim-clip, dpm++2m,"),
])
def test_bad_generation_settings_are_one_line_before_loading_anything(tmp_path, flags, message):
    out = tmp_path / "samples"
    result = run_command(["-m", "pipeline.generate", "--model", str(tmp_path / "none"), "--out", str(out), *flags],
                         check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not out.exists()


def test_help_lists_every_sampler():
    from pipeline.sampling.schedulers import ALL_SAMPLERS

    text = " ".join(run_command(["-m", "pipeline.generate", "--help"]).stdout.split())
    assert all(name in text for name in ALL_SAMPLERS) and "ode-rk45" in text and "pc," in text
    assert "default: the model's own" in text


def test_commands_take_their_thread_count_from_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    for value in ("", "0", "two"):  # unset, or not a positive count: every core
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert default_threads() == (os.cpu_count() or 1)
