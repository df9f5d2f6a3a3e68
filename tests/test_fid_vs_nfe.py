"""benchmarks/fid_vs_nfe.py: one pipeline.evaluate run per (sampler, steps), reused when the protocol matches."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import fid_vs_nfe
from pipeline import pipeline_celeba
from pipeline.evaluation.plots import PALETTE
from pipeline.sampling.schedulers import ALL_SAMPLERS, SAMPLERS

from conftest import FIXTURE, ROOT, run_command


@pytest.mark.usefixtures("one_torch_thread")  # restores this process's thread count, which evaluate.main sets
def test_sweep_writes_points_summary_and_plot_then_reuses_them(smoke_pipeline_dir, tmp_path, monkeypatch, capsys):
    out, model = tmp_path / "nfe", tmp_path / "model"
    shutil.copytree(smoke_pipeline_dir, model)
    argv = ["--model", str(model), "--train_data_dir", str(FIXTURE), "--num_samples", "8",
            "--points", "ddim:2", "ddim-clip:2", "dpm++2m:3", "--mixed_precision", "no", "--out_dir", str(out)]
    run_command(["benchmarks/fid_vs_nfe.py", *argv], env={"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")})
    summary = json.loads((out / "summary.json").read_text())
    assert [(p["sampler"], p["steps"], p["nfe"]) for p in summary["points"]] == [
        ("ddim", 2, 2), ("ddim-clip", 2, 2), ("dpm++2m", 3, 3)]
    assert all(p["num_samples"] == 8 and p["label"] == "FID-8" for p in summary["points"])
    assert json.loads((out / "ddim-clip-2_n8.json").read_text())["sampler"] == "ddim-clip"
    assert all(p["fid"] > 0 for p in summary["points"]) and (out / "fid_vs_nfe.png").is_file()
    # the rest in this process (a subprocess costs seconds of imports each), on the reference cached above
    monkeypatch.setattr("pipeline.evaluation.reference_stats.DEFAULT_CACHE_DIR", tmp_path / "cache" / "ref_stats")
    capsys.readouterr()
    assert fid_vs_nfe.main(argv) == 0
    assert capsys.readouterr().out.count("reused") == 3 and json.loads((out / "summary.json").read_text()) == summary
    # a point whose evaluation was interrupted after its samples were made: --resume_dir reuses them exactly
    # (both runs in this process: a subprocess may run other thread counts, whose float sums differ in the last bits)
    (out / "ddim-2_n8.json").unlink()
    resumable = [*argv, "--points", "ddim:2", "--resume_dir", str(tmp_path / "batches")]
    assert fid_vs_nfe.main(resumable) == 0
    measured = json.loads((out / "ddim-2_n8.json").read_text())
    assert measured["resumed_batches"] == 0
    assert (tmp_path / "batches" / "ddim-2_n8" / "batch_000000_n8.npz").is_file()
    (out / "ddim-2_n8.json").unlink()
    assert fid_vs_nfe.main(resumable) == 0
    resumed = json.loads((out / "ddim-2_n8.json").read_text())
    assert resumed["resumed_batches"] == 1 and resumed["fid"] == measured["fid"] and resumed["nfe"] == measured["nfe"]
    with pytest.raises(ValueError, match="--points entries look like ddim:10,20"):
        fid_vs_nfe.main([*argv, "--points", "ddim10", "--out_dir", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def test_rk45_points_run_in_float32_within_a_bf16_sweep_and_join_its_summary(smoke_pipeline_dir, tmp_path,
                                                                             monkeypatch):
    """The wiring only: pipeline.evaluate is replaced by a stand-in that records the precision and options it got."""
    given_options = {}

    def fake_evaluate(argv):
        parser = argparse.ArgumentParser()
        for option in ("--out", "--mixed_precision", "--scheduler", "--steps", "--num_samples", "--seed"):
            parser.add_argument(option)
        parser.add_argument("--sampler_option", nargs="*", default=[])
        args, _ = parser.parse_known_args(argv)
        given_options[Path(args.out).name] = sorted(args.sampler_option)
        Path(args.out).write_text(json.dumps({
            "label": f"FID-{args.num_samples}", "num_samples": int(args.num_samples), "sampler": args.scheduler,
            "steps": int(args.steps), "nfe": 2.0, "fid": 1.0, "kid_mean": 0.0, "kid_std": 0.0, "precision": 1.0,
            "recall": 1.0, "generation_seconds": 1.0, "mixed_precision": args.mixed_precision, "seed": int(args.seed),
            "reference": {"num_images": 4}, "resolution": 8}))
        return 0

    monkeypatch.setattr(fid_vs_nfe.evaluate, "main", fake_evaluate)
    out = tmp_path / "nfe"
    argv = ["--model", str(smoke_pipeline_dir), "--train_data_dir", str(FIXTURE), "--num_samples", "4",
            "--points", "ddim:2", "ode-rk45:1", "ode-rk45,rtol=1e-3,atol=1e-3:1", "--mixed_precision", "bf16",
            "--out_dir", str(out)]
    assert fid_vs_nfe.main(argv) == 0
    loose = "ode-rk45,atol=0.001,rtol=0.001-1_n4.json"  # canonical: options sorted, numbers as Python prints them
    assert given_options == {"ddim-2_n4.json": [], "ode-rk45-1_n4.json": [], loose: ["atol=0.001", "rtol=0.001"]}
    assert json.loads((out / "ode-rk45-1_n4.json").read_text())["mixed_precision"] == "no"
    assert json.loads((out / loose).read_text())["mixed_precision"] == "no"
    assert json.loads((out / "ddim-2_n4.json").read_text())["mixed_precision"] == "bf16"
    summary = json.loads((out / "summary.json").read_text())
    assert [(p["sampler"], p["mixed_precision"]) for p in summary["points"]] == [
        ("ddim", "bf16"), ("ode-rk45", "no"), ("ode-rk45,atol=0.001,rtol=0.001", "no")]
    monkeypatch.setattr(fid_vs_nfe.evaluate, "main", lambda argv: pytest.fail(f"not reused: {argv}"))
    assert fid_vs_nfe.main(argv) == 0  # every point is recognised as measured under this sweep's protocol
    same = [*argv[:-5], "ode-rk45,atol=0.001,rtol=1e-3:1", *argv[-4:]]  # the same options, spelled differently
    assert fid_vs_nfe.main(same) == 0
    # without --mixed_precision the sweep runs as the pipeline would: bf16 only where the CPU has native bf16
    default = [*argv[:-4], *argv[-2:]]
    monkeypatch.setattr(pipeline_celeba, "native_bf16_cpu", lambda: True)
    assert fid_vs_nfe.main(default) == 0  # the bf16 points again
    monkeypatch.setattr(pipeline_celeba, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(fid_vs_nfe.evaluate, "main", fake_evaluate)
    assert fid_vs_nfe.main(default) == 0
    assert json.loads((out / "ddim-2_n4.json").read_text())["mixed_precision"] == "no"


@pytest.mark.parametrize("point, message", [
    ("ddim,rtol=1e-3:2", "'ddim' takes none"),
    ("pc,rtol=1e-3:500", r"pc does not take sampler option\(s\) \['rtol'\]"),
    ("ode-rk45,rtol:1", "look like rtol=1e-3"),
])
def test_bad_sampler_options_in_a_point_fail_before_anything_runs(point, message):
    with pytest.raises(ValueError, match=message):
        fid_vs_nfe.parse_points([point])


def test_fid_panel_keeps_only_the_largest_n_and_kid_panel_every_point():
    """FID is biased upwards at small N, so a 64-sample point must not sit on the FID panel beside 2,000-sample
    ones."""
    def row(sampler, steps, n, fid):
        return {"sampler": sampler, "steps": steps, "nfe": float(steps), "num_samples": n, "fid": fid,
                "kid_mean": fid / 1000}
    summary = [row("ddpm+mc", 20, 2000, 34.0), row("ddpm+mc", 1000, 64, 120.0), row("ddim", 20, 64, 300.0),
               row("ddim", 20, 2000, 185.0), row("ddim", 10, 2000, 197.0)]
    panels = fid_vs_nfe.panel_points(summary)
    assert panels["fid"] == {"ddim": [(10.0, 197.0, 2000), (20.0, 185.0, 2000)], "ddpm+mc": [(20.0, 34.0, 2000)]}
    assert panels["kid_mean"] == {"ddim": [(10.0, 0.197, 2000), (20.0, 0.185, 2000)],
                                  "ddpm+mc": [(20.0, 0.034, 2000), (1000.0, 0.12, 64)]}


def test_plot_gives_every_sampler_its_own_colour_or_refuses(tmp_path):
    """Lines are keyed by colour: a sampler sharing another's colour would vanish from the plot without a word."""
    def summary(count):
        return [{"sampler": f"s{i}", "steps": 10, "nfe": 10.0 * (1 + i), "num_samples": 128 if i % 2 else 2000,
                 "fid": 100.0 + i, "kid_mean": 0.1 + i / 100} for i in range(count)]
    path = tmp_path / "plot.png"
    fid_vs_nfe.plot(summary(len(PALETTE)), path, "t")
    panels = np.asarray(Image.open(path))[:, :860]  # left of the legend column (the panels end at 870)
    assert set(PALETTE) <= {tuple(color) for color in panels.reshape(-1, 3)}
    with pytest.raises(ValueError, match=f"{len(PALETTE) + 1} samplers in the summary but {len(PALETTE)} colours"):
        fid_vs_nfe.plot(summary(len(PALETTE) + 1), path, "t")


def test_the_default_grid_of_an_edm_model_adds_its_edm_samplers_at_20_to_25_nfe():
    plain = {name for name, _ in fid_vs_nfe.parse_points(None)}
    edm = fid_vs_nfe.parse_points(None, edm=True)
    assert not plain & set(fid_vs_nfe.EDM_GRID) and {name for name, _ in edm} == plain | set(fid_vs_nfe.EDM_GRID)
    assert all(("edm-" + kind, 20) in edm for kind in ("euler", "dpm++2m", "dpm++2m-sde"))
    nfe = [fid_vs_nfe.APPROXIMATE_NFE.get(name, lambda steps: steps)(steps) for name, steps in edm]
    assert nfe == sorted(nfe)  # cheapest first, the EDM points among the others


def test_points_are_reused_only_at_the_sweeps_batch_size(tmp_path):
    protocol = {"seed": 0, "batch_size": 64, "mixed_precision": "bf16", "unet_sha256": "abc"}
    point = tmp_path / "ddim-20_n2000.json"
    point.write_text(json.dumps({"sampler": "ddim", "seed": 0, "mixed_precision": "bf16", "unet_sha256": "abc"}))
    assert fid_vs_nfe.measured_under(point, protocol)  # recorded no batch size: measured at the old default, 64
    assert not fid_vs_nfe.measured_under(point, {**protocol, "batch_size": 32})
    point.write_text(json.dumps({"sampler": "ddim", "seed": 0, "batch_size": 32, "mixed_precision": "bf16",
                                 "unet_sha256": "abc"}))
    assert fid_vs_nfe.measured_under(point, {**protocol, "batch_size": 32})
    assert not fid_vs_nfe.measured_under(point, protocol)


def test_one_plot_has_a_colour_for_every_sampler_of_the_registry_and_of_the_shipped_sweep():
    script = (ROOT / "benchmarks" / "shipped_results.sh").read_text().replace("\\\n", " ")
    swept = {point.rsplit(":", 1)[0] for line in script.splitlines() if line.startswith("sweep ")
             for point in line.split()[2:]}  # sweep "$N" NAME:STEPS ... into one results/nfe
    assert {name for name, sampler in SAMPLERS.items() if sampler.nfe(1) is not None} <= swept  # every offered one
    assert len(set(PALETTE)) == len(PALETTE) >= max(len(ALL_SAMPLERS), len(swept))
