"""benchmarks/fid_vs_nfe.py: one pipeline.evaluate run per (sampler, steps), reused when the protocol matches."""

import json
import shutil

from conftest import FIXTURE, run_command

from pipeline.mean_colour import MeanColourPrior, write_prior


def test_sweep_writes_points_summary_and_plot_then_reuses_them(smoke_pipeline_dir, tmp_path):
    out, model = tmp_path / "nfe", tmp_path / "model"
    shutil.copytree(smoke_pipeline_dir, model)
    write_prior(str(model), MeanColourPrior([0.0, -0.1, -0.2], [[0.05, 0.04, 0.03], [0.04, 0.05, 0.04],
                                                               [0.03, 0.04, 0.05]], 100))
    argv = ["benchmarks/fid_vs_nfe.py", "--model", str(model), "--train_data_dir", str(FIXTURE), "--num_samples", "8",
            "--points", "ddim:2", "ddim+mc:2", "dpm++2m:3", "--mixed_precision", "no", "--out_dir", str(out)]
    env = {"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")}
    run_command(argv, env=env)
    summary = json.loads((out / "summary.json").read_text())
    assert [(p["sampler"], p["steps"], p["nfe"]) for p in summary["points"]] == [
        ("ddim", 2, 2), ("ddim+mc", 2, 2), ("dpm++2m", 3, 3)]
    assert all(p["num_samples"] == 8 and p["label"] == "FID-8" for p in summary["points"])
    assert json.loads((out / "ddim-2_n8.json").read_text())["mean_colour_correction"] is False
    assert json.loads((out / "ddim+mc-2_n8.json").read_text())["mean_colour_correction"] is True
    assert summary["points"][0]["fid"] != summary["points"][1]["fid"]  # the correction changes the samples
    assert all(p["fid"] > 0 for p in summary["points"]) and (out / "fid_vs_nfe.png").is_file()
    again = run_command(argv, env=env)
    assert again.stdout.count("reused") == 3 and json.loads((out / "summary.json").read_text()) == summary
    # a point whose evaluation was interrupted after its samples were made: --resume_dir reuses them exactly
    measured = json.loads((out / "ddim-2_n8.json").read_text())
    (out / "ddim-2_n8.json").unlink()
    resumable = [*argv, "--points", "ddim:2", "--resume_dir", str(tmp_path / "batches")]
    run_command(resumable, env=env)
    assert json.loads((out / "ddim-2_n8.json").read_text())["resumed_batches"] == 0
    assert (tmp_path / "batches" / "ddim-2_n8" / "batch_000000_n8.npz").is_file()
    (out / "ddim-2_n8.json").unlink()
    run_command(resumable, env=env)
    resumed = json.loads((out / "ddim-2_n8.json").read_text())
    assert resumed["resumed_batches"] == 1 and resumed["fid"] == measured["fid"] and resumed["nfe"] == measured["nfe"]
    bad = run_command([*argv, "--points", "ddim10", "--out_dir", str(tmp_path / "never")], env=env, check=False)
    assert bad.returncode == 2 and "--points entries look like ddim:10,20" in bad.stderr
    assert not (tmp_path / "never").exists()
