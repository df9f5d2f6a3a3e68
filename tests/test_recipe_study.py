"""benchmarks/recipe_study.py: equal-CPU-time training per recipe, then FID per scoring sampler; done ones skipped."""

import json
import sys

import pytest

from benchmarks.recipe_study import RECIPES, SCORING_SAMPLERS, as_flags, require_full_budget, run_training

from conftest import FIXTURE, run_command


@pytest.mark.slow
def test_two_recipes_train_for_the_budget_are_scored_and_then_skipped(tmp_path):
    argv = ["benchmarks/recipe_study.py", "--train_data_dir", str(FIXTURE), "--base_config", "configs/smoke.yaml",
            "--steps", "2", "--recipes", "eps-linear", "v-zsnr", "--num_samples", "4",
            "--threads", "1", "--runs_dir", str(tmp_path / "runs"), "--out_dir", str(tmp_path / "recipes")]
    env = {"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")}
    run_command(argv, env=env, timeout=600)
    summary = json.loads((tmp_path / "recipes" / "summary.json").read_text())
    assert [(row["recipe"], row["sampler"]) for row in summary["recipes"]] == [
        (recipe, sampler) for recipe in ("eps-linear", "v-zsnr") for sampler, _ in SCORING_SAMPLERS]
    assert all(row["steps"] >= 1 and row["fid"] > 0 and row["label"] == "FID-4" for row in summary["recipes"])
    result = json.loads((tmp_path / "recipes" / "v-zsnr_dpm++2m-20.json").read_text())
    assert result["nfe"] == 20
    scheduler = json.loads((tmp_path / "runs" / "v-zsnr-2steps" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["rescale_betas_zero_snr"] is True
    assert (tmp_path / "recipes" / "eps-linear_grid.png").is_file()
    again = run_command(argv, env=env)
    assert again.stdout.count("done before") == 2
    bad = run_command([*argv, "--recipes", "nope"], env=env, check=False)
    assert bad.returncode == 2 and "unknown recipes ['nope']" in bad.stderr


def test_a_recipe_stopped_before_its_budget_is_not_scored():
    require_full_budget("eps-linear", {"step": 2000}, 2000)
    with pytest.raises(ValueError, match=r"eps-linear: training stopped after 1500 of its 2000 steps"):
        require_full_budget("eps-linear", {"step": 1500}, 2000)


def test_a_failed_or_killed_training_is_one_error_to_rerun():
    run_training("eps-linear", [sys.executable, "-c", "pass"])
    with pytest.raises(ValueError, match=r"eps-linear: training exited with status -15 .* rerun the same command"):
        run_training("eps-linear", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])


def test_recipe_overrides_become_train_flags():
    assert as_flags(RECIPES["v-zsnr"]) == ["--prediction_type", "v_prediction", "--rescale_betas_zero_snr"]
    assert as_flags({"random_flip": False, "block_out_channels": [32, 64]}) == [
        "--no-random_flip", "--block_out_channels", "32", "64"]
