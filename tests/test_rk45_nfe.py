"""experiments/rk45_nfe.py: the adaptive solver's cost per tolerance, and how far a budget-capped bf16 solve gets."""

import json

import pytest

from conftest import run_command

pytestmark = pytest.mark.slow  # a finished experiment's tool (experiments/): ./run.sh test-slow


def test_tighter_tolerance_costs_more_and_capped_solves_report_their_progress(smoke_pipeline_dir, tmp_path):
    out = tmp_path / "rk45.json"
    run_command(["experiments/rk45_nfe.py", "--model", str(smoke_pipeline_dir), "--num_images", "2",
                 "--tolerances", "1e-2", "1e-4", "--bf16_tolerances", "1e-7", "--bf16_budget", "12",
                 "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    tight, loose, capped = result["runs"]
    assert (tight["rtol"], loose["rtol"]) == (1e-4, 1e-2) and tight["finished"] and loose["finished"]
    assert tight["nfe"] > loose["nfe"] >= 8  # scipy's RK45: 2 evaluations to pick the first step, 6 per step
    assert tight["rms_levels_from_tightest_fp32"]["rms_levels_max"] == 0  # deterministic from the same noise
    assert loose["rms_levels_from_tightest_fp32"]["rms_levels_mean"] > 0
    assert not capped["finished"] and capped["nfe"] == 12 and capped["precision"] == "bf16"
    assert 0 < capped["log_sigma_bar_fraction"] < 1
    assert capped["estimated_total_nfe"] == 12 / capped["log_sigma_bar_fraction"]
    assert "rms_levels_from_tightest_fp32" not in capped


def test_non_positive_budget_is_named(tmp_path):
    result = run_command(["experiments/rk45_nfe.py", "--bf16_budget", "0", "--out", str(tmp_path / "x.json")],
                         check=False)
    assert result.returncode == 2 and "--bf16_budget must be positive" in result.stderr
    assert "Traceback" not in result.stderr
