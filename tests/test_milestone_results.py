"""benchmarks/milestone_results.sh: an intermediate checkpoint shipped with its FID, samples, log and model card, for
a run and for a run warm-restarted from its weights."""

import json
import shutil
import subprocess
import sys

import pytest

from pipeline.pipeline_folder import load_pipeline
from pipeline.sampling.schedulers import default_sampler

from conftest import ROOT, celeba_with_heldout, run_command, subprocess_env, train_args

SCRIPT = ROOT / "benchmarks" / "milestone_results.sh"


@pytest.mark.slow
def test_a_milestone_of_a_run_and_of_its_warm_restart(tmp_path):
    run, restarted, repo = tmp_path / "run", tmp_path / "restarted", tmp_path / "repo"
    data = celeba_with_heldout(tmp_path / "celeba")
    run_command(train_args(run, "--preconditioning", "edm", "--max_train_steps", "2"))
    run_command(train_args(restarted, "--preconditioning", "edm", "--max_train_steps", "2", "--init_from", run,
                           "--seed", "1"))
    repo.mkdir()
    shutil.copy(ROOT / "README.md", repo / "README.md")  # its results-at-a-glance table is regenerated
    env = {**subprocess_env(), "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "BATCHES": str(tmp_path / "batches"),
           "CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache"), "N_FID": "4"}

    def script(source, run_dir, step):
        return subprocess.run(["bash", str(SCRIPT), str(source), str(run_dir), str(step), str(data)], cwd=repo,
                              env=env, capture_output=True, text=True, timeout=1200)

    wrong = script(run, run, 3)
    assert wrong.returncode != 0 and "no checkpoint record at step 3" in wrong.stderr
    assert not (repo / "pretrained").exists()  # refused before anything was shipped
    first = script(run, run, 2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    shipped = load_pipeline(str(repo / "pretrained" / "celeba-64"))
    assert (default_sampler(shipped), shipped.config.default_num_inference_steps) == ("edm-dpm++2m", 20)
    evaluation = json.loads((repo / "results" / "eval" / "fid4_edm-dpm++2m-20.json").read_text())
    assert evaluation["num_samples"] == 4 and evaluation["sampler"] == "edm-dpm++2m" and evaluation["steps"] == 20
    for path in ("samples/edm-dpm++2m-20/grid_x4.png", "training_curve.png", "README.md"):
        assert (repo / "results" / path).is_file(), path
    card = (repo / "model_card.md").read_text()
    assert "intermediate checkpoint of a training run that continues** (step 2," in card

    run_command(["-m", "pipeline.training_log", "--log", str(repo / "results" / "training_log.jsonl"), "--update_from",
                 str(restarted / "training_log.jsonl"), "--restart_step", "2", "--restart_note",
                 "warm restart from the EMA weights of step 2"])
    second = script(restarted, restarted, 4)  # the restarted run's step 2 is step 4 of the joined log
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    card = (repo / "model_card.md").read_text()
    assert "(step 4," in card and "At step 2: warm restart from the EMA weights of step 2." in card
    restarted_weights = load_pipeline(str(restarted)).unet.state_dict()
    shipped_weights = load_pipeline(str(repo / "pretrained" / "celeba-64")).unet.state_dict()
    assert all(restarted_weights[name].equal(shipped_weights[name]) for name in restarted_weights)
