"""The model card is generated from results JSON: its numbers and Hub metadata come from the files."""

import inspect
import json
import shutil

import pytest
import torch
import yaml
from diffusers import EDMEulerScheduler, UNet2DModel

from pipeline import CelebADiffusionPipeline, model_card, save_pipeline_folder
from pipeline.pipeline_folder import copy_pipeline_code, with_default_sampler
from pipeline.sampling.schedulers import SAMPLERS, make_scheduler, scheduler_for

from conftest import run_in_process


def header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_numbers_come_from_the_results(smoke_pipeline_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(smoke_pipeline_dir, model)
    evaluation = {"label": "FID-10k", "fid": 23.4567, "kid_mean": 0.01234, "kid_std": 0.0011, "precision": 0.61234,
                  "recall": 0.4321, "sampler": "dpm++2m", "steps": 20, "nfe": 20, "num_samples": 10000,
                  "resolution": 32, "reference": {"num_images": 20000}, "mixed_precision": "bf16"}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    log = [{"step": 1000, "images_seen": 32000, "cpu_hours": 1.0},
           {"step": 2000, "images_seen": 64000, "cpu_hours": 2.5, "hardware": "2 CPU cores",
            "clock_counted_from_step": 0},
           {"step": 2000, "images_seen": 64000, "fid_1000": 80.0}]  # FID records carry no clock
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    out = tmp_path / "model_card.md"
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"png bytes")
    run_in_process(model_card.main, ["--model", str(model), "--name", "celeba-32-test", "--eval",
                                     str(tmp_path / "eval.json"), "--training_log", str(tmp_path / "log.jsonl"),
                                     "--grid", str(grid),
                                     "--out", str(out)])
    card = out.read_text()
    assert (model / "samples.png").read_bytes() == b"png bytes"  # travels with the model to the Hub
    assert "![samples](model/samples.png)" in card and "![samples](samples.png)" in (model / "README.md").read_text()
    assert (model / "README.md").read_text() == card.replace("model/samples.png", "samples.png")
    meta = header(card)
    assert meta["library_name"] == "diffusers" and meta["datasets"] == ["flwrlabs/celeba"]
    assert meta["tags"] == ["unconditional-image-generation", "diffusers", "celeba"] and meta["license"] == "other"
    assert meta["license_name"] == "celeba-dataset-release-agreement" and meta["license_link"].startswith("https://")
    metrics = {m["type"]: m for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["fid"]["value"] == 23.46 and "FID-10k, dpm++2m, 20 steps, 20 NFE" in metrics["fid"]["name"]
    assert metrics["precision"]["value"] == 0.612
    assert "| 23.46 | 12.34 ± 1.10 | 0.612 | 0.432 |" in card
    assert "2,000 optimisation steps, 64,000 training images seen. 2.50 CPU-hours (2 CPU cores)" in card
    assert "early checkpoint" not in card and "intermediate checkpoint" not in card
    # the loading code samples with the saved scheduler, then switches to the measured sampler, configured like
    # pipeline.sampling.schedulers; it runs as written
    assert "A plain call samples with the saved scheduler, `DDPMScheduler`, at 50 steps." in card
    assert "switch to `dpm++2m, 20 steps, 20 NFE`, the sampler with the lowest FID-10k below" in card
    assert "measured with the UNet under bf16 autocast, the pipeline's default on a CPU with native bf16" in card
    snippet = card.split("```python\n")[1].split("```")[0]
    assert "DPMSolverMultistepScheduler.from_config(" in snippet and "num_inference_steps=20" in snippet
    copy_pipeline_code(model)  # what pipeline.publish uploads with the weights
    namespace = {}
    exec(snippet.replace("REPO_OR_PATH", str(model)).replace("batch_size=16", "batch_size=2"), namespace)
    pipe = namespace["pipe"]
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler" and len(namespace["images"]) == 2
    trained = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    ours = make_scheduler("dpm++2m", trained)  # from the noise-schedule keys only
    accepted = inspect.signature(type(ours).__init__).parameters  # the settings DPM-Solver reads
    differing = {key for key in accepted if ours.config.get(key) != pipe.scheduler.config.get(key)}
    assert differing == {"variance_type"}  # fixed_small (DDPM's) vs None: DPM-Solver reads it only when learned
    for scheduler in (ours, pipe.scheduler):
        scheduler.set_timesteps(20)
    assert torch.equal(ours.timesteps, pipe.scheduler.timesteps) and torch.equal(ours.sigmas, pipe.scheduler.sigmas)
    run_in_process(model_card.main, ["--model", str(model), "--eval", str(tmp_path / "eval.json"),
                                     "--training_log", str(tmp_path / "log.jsonl"), "--in_progress", "--out",
                                     str(out)])
    assert "intermediate checkpoint of a training run that continues** (step 2,000" in out.read_text()
    log[1]["clock_counted_from_step"] = 262  # the clock started at a resume: a partial count, labelled as such
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    run_in_process(model_card.main, ["--model", str(model), "--eval", str(tmp_path / "eval.json"),
                                     "--training_log", str(tmp_path / "log.jsonl"), "--out", str(out)])
    assert "2.50 CPU-hours (2 CPU cores) from step 262 on; the first 262 steps were not timed." in out.read_text()
    run_in_process(model_card.main, ["--model", str(model), "--training_log", str(tmp_path / "log.jsonl"),
                                     "--training_step", "1000", "--out",
                                     str(out)])  # shipped weights older than the run's end
    assert ("1,000 optimisation steps, 32,000 training images seen. CPU time was not recorded for the whole run. The "
            "run went on to step 2,000; these are the weights of step 1,000.") in out.read_text()
    restarted = log[:1] + [{"step": 1000, "restart": "warm restart from its EMA weights"}] + log[1:]
    (tmp_path / "restarted.jsonl").write_text("\n".join(json.dumps(r) for r in restarted) + "\n")
    run_in_process(model_card.main, ["--model", str(model), "--training_log",
                                     str(tmp_path / "restarted.jsonl"), "--out",
                                     str(out)])  # a run continued from saved weights says so
    assert "from step 262 on; the first 262 steps were not timed. At step 1,000: warm restart from its EMA weights." \
        in out.read_text()
    missing = run_in_process(model_card.main, ["--model", str(model), "--training_log",
                                               str(tmp_path / "log.jsonl"), "--training_step", "1500", "--out",
                                               str(out)], check=False)
    assert missing.returncode == 2 and "has no checkpoint record at step 1500" in missing.stderr
    likelihood = {"bpd_mean": 3.4567, "bpd_stderr": 0.0123, "num_images": 16, "split": "train",
                  "options": {"rtol": 1e-5, "atol": 1e-5, "eps": 1e-5, "hutchinson": "rademacher"}}
    (tmp_path / "likelihood.json").write_text(json.dumps(likelihood))
    run_in_process(model_card.main, ["--model", str(model), "--likelihood", str(tmp_path / "likelihood.json"),
                                     "--out", str(out)])
    card = out.read_text()
    assert "**3.457 ± 0.012 bits/dim** (mean ± standard error) on 16 images of the official train split" in card
    assert "rtol 1e-05, atol 1e-05, from t = 1e-05" in card and "not a held-out likelihood" in card


def test_card_reports_heldout_scores_memorization_and_targets(smoke_pipeline_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(smoke_pipeline_dir, model)
    scores = {"fid": 31.25, "kid_mean": 0.004, "kid_std": 0.0005, "precision": 0.6, "recall": 0.3}
    heldout = {"model": "m", "sampler": "ddpm", "steps": 20, "nfe": 20, "mixed_precision": "bf16",
               "num_samples": 1440, "num_heldout": 1440, "heldout_splits": ["valid", "test"], "model_scores": scores,
               "train_floor": {**scores, "fid": 26.0, "kid_mean": 0.001}, "fid_above_floor": 5.25,
               "memorization": {"ratio_quantiles": {"0.5": 1.004}, "fraction_ratio_below_0.5": 0.0}}
    results = tmp_path / "results"
    (results / "heldout").mkdir(parents=True)
    (results / "heldout" / "celeba-64.json").write_text(json.dumps(heldout))
    out = tmp_path / "card.md"
    run_in_process(model_card.main, ["--model", str(model), "--heldout",
                                     str(results / "heldout" / "celeba-64.json"), "--targets", str(results), "--out",
                                     str(out)])
    card = out.read_text()
    assert ("| FID-1,440 vs 1,440 held-out faces (valid + test) | ddpm, 20 steps, 20 NFE, bf16 UNet | 31.25 | "
            "4.00 ± 0.50 | 0.600 | 0.300 |") in card
    assert "| FID-1,440 vs 1,440 held-out faces (valid + test) | 1,440 real train images (the floor) | 26.00 | 1.00" \
        in card
    assert "has median 1.004; none falls below 0.5" in card
    heldout["memorization"]["fraction_ratio_below_0.5"] = 3 / 1440
    (results / "heldout" / "celeba-64.json").write_text(json.dumps(heldout))
    run_in_process(model_card.main, ["--model", str(model), "--heldout", str(results / "heldout" / "celeba-64.json"),
                                     "--out", str(out)])
    assert "has median 1.004; 3 of them fall below 0.5" in out.read_text()
    targets = card.split("## Targets")[1]
    assert "| FID against held-out faces minus the real-train floor | ≤ 8 | 5.25 (FID-1,440 31.25; 1,440 real train " \
           "images 26.00) | yes |" in targets
    assert "| FID-10k, any sampler, ≤ 25 NFE | ≤ 14 | not measured | — |" in targets and "](" not in targets
    missing = run_in_process(model_card.main, ["--model", str(model), "--targets", str(tmp_path / "nope"),
                                               "--out", str(out)], check=False)
    assert missing.returncode == 2 and "--targets: results folder not found" in missing.stderr


def test_card_without_evaluation_is_labelled_early(smoke_pipeline_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(smoke_pipeline_dir, model)
    run_in_process(model_card.main, ["--model", str(model), "--out", str(tmp_path / "card.md")])
    card = (tmp_path / "card.md").read_text()
    assert "model-index" not in header(card) and "early checkpoint, not the final model" in card
    result = run_in_process(model_card.main, ["--model", str(model), "--eval", str(tmp_path / "nope.json"),
                                              "--out", str(tmp_path / "x.md")], check=False)
    assert result.returncode == 2 and "results file not found" in result.stderr


def test_card_switches_to_the_sampler_that_measured_best(smoke_pipeline_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(smoke_pipeline_dir, model)
    base = {"label": "FID-2k", "kid_mean": 0.05, "kid_std": 0.001, "precision": 0.2, "recall": 0.2, "steps": 20,
            "nfe": 20, "num_samples": 2000, "resolution": 32, "reference": {"num_images": 20000}}
    evals = [{**base, "fid": 70.0, "sampler": "ddim-clip"},
             {**base, "fid": 50.0, "sampler": "ddpm"}]
    paths = []
    for index, evaluation in enumerate(evals):
        paths.append(tmp_path / f"eval{index}.json")
        paths[-1].write_text(json.dumps(evaluation))
    out = tmp_path / "model_card.md"
    run_in_process(model_card.main, ["--model", str(model), "--eval", *map(str, paths), "--out", str(out)])
    card = out.read_text()
    assert "| ddpm, 20 steps, 20 NFE |" in card
    snippet = card.split("```python\n")[1].split("```")[0]
    assert "DDPMScheduler.from_config(" in snippet and "num_inference_steps=20" in snippet
    copy_pipeline_code(model)
    namespace = {}
    exec(snippet.replace("REPO_OR_PATH", str(model)).replace("batch_size=16", "batch_size=2"), namespace)
    assert len(namespace["images"]) == 2


@pytest.mark.parametrize("default", [None, "ddpm"])
def test_the_card_of_an_edm_model_switches_between_sampler_families(tmp_path, default):
    """An EDM-trained model saved with an EDM scheduler (``default`` None) or shipped with a DDPM-schedule default:
    the card's code reaches the best sampler of the other family too, and runs as written."""
    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = CelebADiffusionPipeline(unet=unet, scheduler=EDMEulerScheduler(sigma_data=0.5))
    best = "heun"
    if default:
        pipe, best = with_default_sampler(pipe, default, 4), "edm-dpm++2m"
    model = tmp_path / "model"
    save_pipeline_folder(pipe, model)
    evaluation = {"label": "FID-2k", "fid": 50.0, "kid_mean": 0.05, "kid_std": 0.001, "precision": 0.2,
                  "recall": 0.2, "sampler": best, "steps": 3, "nfe": 5, "num_samples": 2000, "resolution": 8,
                  "reference": {"num_images": 20000}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    run_in_process(model_card.main, ["--model", str(model), "--eval", str(tmp_path / "eval.json"),
                                     "--out", str(tmp_path / "card.md")])
    card = (tmp_path / "card.md").read_text()
    assert "CelebA faces (EDM diffusion" in card and "EDM preconditioning (Karras et al. 2022)" in card
    snippet = card.split("```python\n")[1].split("```")[0]
    assert ("pipe.config.edm_schedule" if default else "beta_schedule='linear'") in snippet
    namespace = {}
    exec(snippet.replace("REPO_OR_PATH", str(model)).replace("batch_size=16", "batch_size=1"), namespace)
    wanted = SAMPLERS[best].scheduler_class
    assert type(namespace["pipe"].scheduler) is wanted and len(namespace["images"]) == 1
    if not default:  # a DDPM-schedule sampler on the EDM model: DDPM's linear betas, as the registry builds them
        torch.testing.assert_close(namespace["pipe"].scheduler.alphas_cumprod,
                                   scheduler_for(pipe, best).alphas_cumprod)


def test_the_card_of_an_attribute_model_asks_for_attributes_and_reports_control(tmp_path):
    """An attribute model's card: its title, the code that asks for attributes (run as written) and the control
    table read from the control JSON; the same JSON on an unconditional model is refused."""
    from test_attributes import attribute_pipeline, tiny_unet

    model, plain = tmp_path / "model", tmp_path / "plain"
    save_pipeline_folder(attribute_pipeline(), model)
    save_pipeline_folder(CelebADiffusionPipeline(unet=tiny_unet(), scheduler=EDMEulerScheduler()), plain)
    control = {"sampler": "ddpm", "steps": 20, "attributes": ["Smiling", "Male"], "samples_per_attribute": 100,
               "fid_label": "FID-200", "fid_reference": "20000 train images",
               "guidance": {"0.0": {"positive_rate": {"Smiling": 0.41, "Male": 0.38}, "fid": 60.5},
                            "3.0": {"positive_rate": {"Smiling": 0.87, "Male": 0.74}, "fid": 66.25}}}
    (tmp_path / "control.json").write_text(json.dumps(control))
    run_in_process(model_card.main, ["--model", str(model), "--attribute_control",
                                     str(tmp_path / "control.json"), "--out", str(tmp_path / "card.md")])
    card = (tmp_path / "card.md").read_text()
    assert "# model: attribute-conditional 8x8 CelebA faces" in card and "Not evaluated yet" not in card
    assert "| attribute | guidance 0 | guidance 3 |" in card and "| Smiling | 0.41 | 0.87 |" in card
    assert "| Male | 0.38 | 0.74 |" in card and "| FID-200 | 60.50 | 66.25 |" in card
    snippet = card.split("```python\n")[1].split("```")[0]
    namespace = {}
    exec(snippet.replace("REPO_OR_PATH", str(model)).replace("batch_size=16", "batch_size=1"), namespace)
    assert len(namespace["images"]) == 1  # the last call: guided by Smiling and Male
    refused = run_in_process(model_card.main, ["--model", str(plain), "--attribute_control",
                                               str(tmp_path / "control.json"), "--out", str(tmp_path / "plain.md")],
                                               check=False)
    assert refused.returncode == 2 and "has no attribute_encoder" in refused.stderr
    assert not (tmp_path / "plain.md").exists()
