"""benchmarks/controllable_results.sh end to end on a tiny EDM model: the attribute fine-tune shipped with its card,
attribute control with its grid, edit FID, inversion PSNR, the edit grids and the demo's screenshots; a rerun
skips or reuses every finished stage."""

import json
import shutil
import subprocess
import sys

import pytest

from pipeline.pipeline_folder import load_pipeline
from pipeline.sampling.schedulers import default_sampler

from conftest import ROOT, SMOKE_CONFIG, celeba_with_heldout, run_command, subprocess_env, train_args

SCRIPT = ROOT / "benchmarks" / "controllable_results.sh"


@pytest.mark.slow
@pytest.mark.browser
def test_controllable_results_from_a_shipped_model(tmp_path):
    data, repo, runs = celeba_with_heldout(tmp_path / "celeba"), tmp_path / "repo", tmp_path / "runs"
    cache = {"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")}
    env = {**subprocess_env(), **cache, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "RUNS": str(runs),
           "CONFIG": str(SMOKE_CONFIG), "TRAIN_ARGS": "--preconditioning edm --attribute_conditioning "
           "--max_train_steps 2", "N_CONTROL": "20", "N_EDIT": "4", "N_INVERSION": "2", "N_GRID": "2",
           "PRECISION": "no"}

    def script():
        return subprocess.run(["bash", str(SCRIPT), str(data)], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=1800)

    repo.mkdir()
    refused = script()
    assert refused.returncode == 2 and "ship the base model first" in refused.stderr and not runs.exists()
    run_command(train_args(tmp_path / "base", "--preconditioning", "edm", "--max_train_steps", "2"))
    run_command(["-m", "pipeline.ship", "--model", str(tmp_path / "base"), "--out",
                 str(repo / "pretrained" / "celeba-64"), "--sampler", "edm-dpm++2m", "--steps", "4"])
    (repo / "results").mkdir()
    shutil.copy(tmp_path / "base" / "training_log.jsonl", repo / "results" / "training_log.jsonl")
    run_command(["-m", "benchmarks.attribute_control", "classifier", "--train_data_dir", str(data), "--resolution",
                 "32", "--epochs", "1", "--batch_size", "8", "--out", str(tmp_path / "classifier.json")], env=cache)
    first = script()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    model = repo / "pretrained" / "celeba-64-attributes"
    shipped = load_pipeline(str(model))
    assert shipped.attribute_encoder is not None
    assert (default_sampler(shipped), shipped.config.default_num_inference_steps) == ("edm-dpm++2m", 4)
    card = (model / "README.md").read_text()
    assert "attribute-conditional 32x32" in card and "| Smiling |" in card
    assert "4 optimisation steps" in card and "At step 2: attribute fine-tune (smoke.yaml) from the EMA" in card
    control = json.loads((repo / "results" / "attributes" / "control.json").read_text())
    assert set(control["guidance"]) == {"0.0", "1.0", "3.0", "5.0"} and control["samples_per_attribute"] == 2
    assert control["mixed_precision"] == "no"  # PRECISION reaches the scores
    assert (repo / "results" / "attributes" / "control_grid.png").is_file()
    gain = json.loads((repo / "results" / "attributes" / "label_gain.json").read_text())
    assert [row["t"] for row in gain["labels"]] == [999, 900, 700, 500, 300]
    edits = json.loads((repo / "results" / "edit" / "edit_fid_summary.json").read_text())
    assert [(p["task"], p["method"]) for p in edits["points"]] == [
        (task, method) for task in ("center", "eyes", "colorize") for method in ("repaint", "pc")]
    assert edits["mixed_precision"] == "no"
    inversion = json.loads((repo / "results" / "edit" / "inversion_psnr.json").read_text())
    assert inversion["num_images"] == 2
    for mask in ("left", "right", "top", "bottom", "random"):
        assert json.loads((repo / "results" / "edit" / f"inpaint_{mask}" / "edit.json").read_text())
    assert (repo / "results" / "edit" / "interpolate" / "grid.png").is_file()
    screenshots = {path.name for path in (repo / "results" / "demo").glob("*.png")}
    assert screenshots == {"generate.png", "attributes.png", "inpaint.png", "colorize.png", "interpolate.png"}

    again = script()  # finished stages are skipped, kept batches reused: the same numbers
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("fine_tune", "ship", "inversion", "screenshots"):
        assert f"{stage}: finished before" in again.stdout
    assert json.loads((repo / "results" / "attributes" / "control.json").read_text()) == control
    assert json.loads((repo / "results" / "edit" / "edit_fid_summary.json").read_text()) == edits
