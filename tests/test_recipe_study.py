"""benchmarks/recipe_study.py: equal-time training per recipe, then FID; done recipes are skipped."""

import json
import sys

import pytest

from benchmarks.recipe_study import RECIPES, base_resolution, require_full_budget, run_training
from conftest import FIXTURE, run_command


def test_two_recipes_train_for_the_budget_are_scored_and_then_skipped(tmp_path):
    argv = ["benchmarks/recipe_study.py", "--train_data_dir", str(FIXTURE), "--base_config", "configs/smoke.yaml",
            "--minutes", "0.001", "--recipes", "eps-linear", "unshuffle2-shifted-cosine", "--num_samples", "4",
            "--threads", "1", "--runs_dir", str(tmp_path / "runs"), "--out_dir", str(tmp_path / "recipes")]
    env = {"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")}
    run_command(argv, env=env, timeout=600)
    summary = json.loads((tmp_path / "recipes" / "summary.json").read_text())
    assert [row["recipe"] for row in summary["recipes"]] == ["eps-linear", "unshuffle2-shifted-cosine"]
    assert summary["protocol"]["scheduler"] == "ddim-clip" and summary["protocol"]["steps"] == 20
    assert all(row["steps"] == 1 and row["fid"] > 0 and row["label"] == "FID-4" for row in summary["recipes"])
    assert json.loads((tmp_path / "recipes" / "eps-linear.json").read_text())["mean_colour_correction"] is False
    unshuffled = json.loads((tmp_path / "runs" / "unshuffle2-shifted-cosine-0.001min" / "model_index.json").read_text())
    assert unshuffled["pixel_unshuffle"] == 2
    again = run_command(argv, env=env)
    assert again.stdout.count("done before") == 2
    bad = run_command([*argv, "--recipes", "nope"], env=env, check=False)
    assert bad.returncode == 2 and "unknown recipes ['nope']" in bad.stderr


def test_a_recipe_stopped_before_its_budget_is_not_scored():
    require_full_budget("eps-linear", {"wall_hours": 0.75}, 45.0)
    with pytest.raises(ValueError, match=r"eps-linear: training stopped after 30.0 of its 45 minutes"):
        require_full_budget("eps-linear", {"wall_hours": 0.5}, 45.0)


def test_a_failed_or_killed_training_is_one_error_to_rerun():
    run_training("eps-linear", [sys.executable, "-c", "pass"])
    with pytest.raises(ValueError, match=r"eps-linear: training exited with status -15 .* rerun the same command"):
        run_training("eps-linear", [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])


def test_every_recipe_is_scored_at_the_base_resolution():
    assert base_resolution("configs/celeba64_cpu.yaml") == 64 and base_resolution("configs/smoke.yaml") == 32
    assert RECIPES["eps-linear-32px"] == {"resolution": 32}
    with pytest.raises(FileNotFoundError, match="base config not found: nope.yaml"):
        base_resolution("nope.yaml")
