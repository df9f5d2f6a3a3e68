"""benchmarks/heldout_eval.py: scores against the valid+test images, next to real training images (the floor)."""

import json

import pytest

from pipeline.generate import generate, load_pipeline, open_batch_store

from conftest import celeba_with_heldout, run_command


@pytest.mark.slow
def test_model_and_floor_are_scored_against_the_heldout_images(smoke_pipeline_dir, tmp_path):
    data = celeba_with_heldout(tmp_path / "celeba")
    out = tmp_path / "heldout.json"
    # an FID run's batches of the same settings: its batch 0 (4 images) is the held-out run's batch 0
    sampling = {"scheduler": "ddpm", "steps": 3, "seed": 0, "batch_size": 4, "mixed_precision": "no"}
    pipe = load_pipeline(str(smoke_pipeline_dir))
    fid_samples, _ = generate(pipe, 8, progress=False, store=open_batch_store(tmp_path / "fid", pipe, **sampling),
                              **sampling)
    run_command(["benchmarks/heldout_eval.py", "--model", str(smoke_pipeline_dir), "--train_data_dir", str(data),
                 "--scheduler", "ddpm", "--steps", "3", "--mixed_precision", "no", "--batch_size", "4",
                 "--resume_dir", str(tmp_path / "batches"), "--reuse_batches", str(tmp_path / "fid"),
                 "--out", str(out)], env={"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")}, timeout=600)
    result = json.loads(out.read_text())
    assert result["num_heldout"] == 6 and result["num_samples"] == 6   # as many samples as held-out faces
    assert result["reused_batches"] == 1 and result["batch_size"] == 4   # batch 1 (2 images) is generated
    # real faces are closer to real held-out faces than an 8-step model's noise is
    assert result["train_floor"]["fid"] < result["model_scores"]["fid"]
    assert result["fid_above_floor"] == result["model_scores"]["fid"] - result["train_floor"]["fid"]
    assert result["memorization"]["num_heldout"] == 6 and "0.5" in result["memorization"]["ratio_quantiles"]
