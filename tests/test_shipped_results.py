"""benchmarks/shipped_results.sh: from a trained run to a shipped pipeline and every result file, and a rerun that
reuses what is done."""

import json
import shutil
import subprocess
import sys

import pytest

from pipeline.pipeline_folder import load_pipeline
from pipeline.sampling.schedulers import default_sampler
from pipeline.ship import choose_default_sampler

from conftest import ROOT, celeba_with_heldout, run_command, subprocess_env, train_args

SCRIPT = ROOT / "benchmarks" / "shipped_results.sh"


@pytest.mark.slow
def test_the_shipping_script_runs_end_to_end_then_reuses_its_stages(tmp_path):
    run, repo, data = tmp_path / "run", tmp_path / "repo", celeba_with_heldout(tmp_path / "celeba")
    run_command(train_args(run, "--preconditioning", "edm", "--max_train_steps", "2"))
    repo.mkdir()
    shutil.copy(ROOT / "README.md", repo / "README.md")  # its results-at-a-glance table is regenerated
    shutil.copytree(ROOT / "configs", repo / "configs")  # the model summary's
    stale = repo / "results" / "eval" / "fid2k_of_a_milestone.json"  # an evaluation of earlier weights
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    env = {**subprocess_env(), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "BATCHES": str(tmp_path / "batches"),
           "CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache"),
           "N_SWEEP": "4", "N_FID": "6", "N_PAIRED": "4", "N_LIKELIHOOD": "2", "N_SLOW": "4", "N_PRIOR": "8",
           "PRECISION": "no"}

    def script():
        result = subprocess.run(["bash", str(SCRIPT), str(run), str(data)], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=3000)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout

    script()
    summary = json.loads((repo / "results" / "nfe" / "summary.json").read_text())
    assert {point["num_samples"] for point in summary["points"]} == {4}
    assert {point["mixed_precision"] for point in summary["points"]} == {"no"}  # PRECISION reaches every score
    assert {point["sampler"] for point in summary["points"] if point["steps"] == 1} == {
        "ode-rk45,atol=0.001,rtol=0.001"}
    chosen = choose_default_sampler(summary["points"])
    shipped = load_pipeline(str(repo / "pretrained" / "celeba-64"))
    assert (default_sampler(shipped), shipped.config.default_num_inference_steps) == (chosen["sampler"],
                                                                                       chosen["steps"])
    fid10k_path = repo / "results" / "eval" / f"fid10k_{chosen['sampler']}-{chosen['steps']}.json"
    fid10k = json.loads(fid10k_path.read_text())
    assert fid10k["num_samples"] == 6 and fid10k["sampler"] == chosen["sampler"] and fid10k["mixed_precision"] == "no"
    for path in ("nfe/frequency_attribution.json", "nfe/frequency_attribution.png",
                 "nfe/frequency_attribution_rk45.json",
                 "heldout/celeba-64.json", "likelihood.json", "bench/bf16_paired_kid.json",
                 "denoiser_response/celeba-64.json", f"samples/{chosen['sampler']}-{chosen['steps']}/grid_x4.png",
                 "samples/trajectory.png", "training_curve.png", "model_summary.json",
                 "README.md"):  # results/README.md: the tables
        assert (repo / "results" / path).is_file(), path
    assert json.loads((repo / "results" / "likelihood.json").read_text())["split"] == "test"
    heldout = json.loads((repo / "results" / "heldout" / "celeba-64.json").read_text())
    # the held-out score's 6 samples are the FID run's 6 (one batch), taken from its folder
    assert heldout["mixed_precision"] == "no" and heldout["reused_batches"] == 1
    assert not stale.exists()
    card = (repo / "model_card.md").read_text()
    assert f"{chosen['sampler']}, {chosen['steps']} steps" in card
    assert "held-out faces (valid + test)" in card and "## Targets" in card

    done = tmp_path / "batches" / "done"
    finished = {path.name for path in done.iterdir()}
    scored = fid10k_path.read_text()
    again = script()  # every finished stage and point is reused, nothing is sampled or scored anew
    skipped = {line.split(": ")[0] for line in again.splitlines() if line.endswith(": finished before")}
    default = f"{chosen['sampler']}-{chosen['steps']}"
    assert {"likelihood", f"fid10k_{default}", f"heldout_{default}", f"bf16_pair_{default}"} <= skipped <= finished
    assert {path.name for path in done.iterdir()} == finished and fid10k_path.read_text() == scored
    assert again.count(": reused") == len(summary["points"])
