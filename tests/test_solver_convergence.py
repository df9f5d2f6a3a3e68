"""experiments/solver_convergence.py: each sampler's distance from a reference ODE solution from the same noise."""

import json

import pytest

from conftest import run_command

pytestmark = pytest.mark.slow  # a finished experiment's tool (experiments/): ./run.sh test-slow


def test_distances_vanish_for_the_reference_and_shrink_with_steps(smoke_pipeline_dir, tmp_path):
    out = tmp_path / "convergence.json"
    run_command(["experiments/solver_convergence.py", "--model", str(smoke_pipeline_dir), "--num_images", "2",
                 "--points", "ddim:2,10,50", "--reference", "ddim:50", "--check", "heun:25", "--mixed_precision", "no",
                 "--device", "cpu", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {row["steps"]: row for row in result["points"]}
    assert rows[50]["rms_levels_max"] == 0  # the same solver from the same noise: deterministic
    assert rows[2]["rms_levels_mean"] > rows[10]["rms_levels_mean"] > 0  # a first-order solver converges
    assert result["reference"]["nfe"] == 50 and result["check"]["nfe"] == 49 and rows[10]["nfe"] == 10
    assert result["check"]["rms_levels_mean"] < rows[10]["rms_levels_mean"]  # the check agrees with the reference


def test_unknown_sampler_is_named(tmp_path):
    result = run_command(["experiments/solver_convergence.py", "--points", "rk4:10", "--out",
                          str(tmp_path / "x.json")], check=False)
    assert result.returncode == 2 and "rk4:10" in result.stderr and "Traceback" not in result.stderr
