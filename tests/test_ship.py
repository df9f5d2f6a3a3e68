"""pipeline.ship: the shipped folder's plain pipe() is the chosen sampler, and a failed ship changes nothing."""

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from pipeline import CelebADiffusionPipeline, load_pipeline, save_pipeline_folder
from pipeline.generate import main as generate_main
from pipeline.pipeline_folder import weights_checksum
from pipeline.sampling.schedulers import default_sampler, make_scheduler
from pipeline.ship import choose_default_sampler, main, ship


@pytest.fixture()
def trained(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = CelebADiffusionPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000),
                                   preprocessing={"resolution": 8, "crop_size": 140, "crop_offset_y": 0,
                                                  "resample": "bilinear"})
    save_pipeline_folder(pipe, tmp_path / "run")
    return tmp_path / "run"


def sample(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(3), output_type="np", **kwargs).images


def test_a_plain_call_of_the_shipped_folder_samples_with_the_chosen_sampler(trained, tmp_path):
    flags = ["--model", str(trained), "--out", str(tmp_path / "shipped"), "--sampler", "ddim", "--steps", "10"]
    assert main(flags) == 0
    shipped, original = load_pipeline(str(tmp_path / "shipped")), load_pipeline(str(trained))
    assert type(shipped.scheduler) is DDIMScheduler and shipped.scheduler.config.timestep_spacing == "trailing"
    assert shipped.config.default_num_inference_steps == 10 and shipped.config.preprocessing["resolution"] == 8
    expected = sample(original, num_inference_steps=10, scheduler=make_scheduler("ddim", original.scheduler.config))
    assert np.array_equal(sample(shipped), expected)
    # every other sampler is still built on the trained noise schedule
    for name in ("ddpm", "dpm++2m", "heun"):
        assert make_scheduler(name, shipped.scheduler.config).config == make_scheduler(
            name, original.scheduler.config).config
    assert sample(original).shape == (2, 8, 8, 3)  # a pipeline saved without a default keeps diffusers' 50 steps
    assert original.config.default_num_inference_steps == 50


def test_bad_choices_and_an_existing_folder_fail_before_anything_is_written(trained, tmp_path):
    out = tmp_path / "shipped"
    with pytest.raises(ValueError, match="score-SDE sampler"):
        ship(str(trained), out, "pc", 10)
    with pytest.raises(ValueError, match="dividing T"):
        ship(str(trained), out, "ddim", 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no folder, no staging left behind
    ship(str(trained), out, "ddpm", 20)
    (out / "stale.txt").write_text("from the model shipped before")
    with pytest.raises(FileExistsError, match="--replace"):
        ship(str(trained), out, "ddim", 10)
    assert load_pipeline(str(out)).config.default_num_inference_steps == 20
    ship(str(trained), out, "ddim", 10, replace=True)
    assert not (out / "stale.txt").exists() and load_pipeline(str(out)).config.default_num_inference_steps == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "shipped"]


def point(sampler, steps, nfe, fid, num_samples=2000, seconds=100.0):
    return {"sampler": sampler, "steps": steps, "nfe": nfe, "fid": fid, "num_samples": num_samples,
            "generation_seconds": seconds, "label": f"FID-{num_samples}"}


def test_the_default_is_the_fastest_scheduler_within_the_tolerance_of_the_best_cheap_point():
    points = [point("pc", 10, 20, 95.0),              # the lowest FID at <= 25 NFE, but no diffusers scheduler
              point("ddpm", 20, 20, 100.0),            # 5.3% worse than 95: out
              point("dpm++2m", 20, 20, 99.0, seconds=90.0),
              point("edm-dpm++2m", 20, 20, 99.0, seconds=80.0),  # same NFE, faster: wins the tie
              point("dpm++2m", 10, 10, 130.0),         # fastest, but far worse
              point("heun", 18, 35, 60.0),             # better, but over 25 NFE
              point("ddim", 10, 10, 50.0, num_samples=128)]  # not at the sweep's largest N
    assert choose_default_sampler(points) == points[3]
    assert choose_default_sampler(points, tolerance=0.10)["steps"] == 20  # 130 is still out at 10%
    assert choose_default_sampler(points, max_nfe=40)["sampler"] == "heun"  # 60 is then the best, and a scheduler
    with pytest.raises(ValueError, match="no point of at most 5 NFE"):
        choose_default_sampler(points, max_nfe=5)
    with pytest.raises(ValueError, match="within 1% of the lowest FID 95.00"):
        choose_default_sampler(points, tolerance=0.01)


def test_ship_from_a_sweep_checks_that_it_measured_these_weights(trained, tmp_path):
    summary = tmp_path / "summary.json"
    checksum = weights_checksum(load_pipeline(str(trained)).unet)
    summary.write_text(json.dumps({"protocol": {"unet_sha256": checksum},
                                   "points": [point("ddim", 10, 10, 80.0), point("ddpm", 20, 20, 79.0)]}))
    out = tmp_path / "shipped"
    assert main(["--model", str(trained), "--out", str(out), "--from_sweep", str(summary)]) == 0
    shipped = load_pipeline(str(out))
    assert type(shipped.scheduler) is DDIMScheduler and shipped.config.default_num_inference_steps == 10
    summary.write_text(json.dumps({"protocol": {"unet_sha256": "0" * 64}, "points": []}))
    with pytest.raises(ValueError, match="measured other weights"):
        main(["--model", str(trained), "--out", str(tmp_path / "other"), "--from_sweep", str(summary)])
    with pytest.raises(ValueError, match="either --sampler and --steps, or --from_sweep"):
        main(["--model", str(trained), "--out", str(tmp_path / "other"), "--sampler", "ddim"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "shipped", "summary.json"]
@pytest.mark.usefixtures("one_torch_thread")  # restores the thread count, which generate.main sets
def test_the_commands_default_to_the_shipped_sampler_and_steps(trained, tmp_path):
    ship(str(trained), tmp_path / "shipped", "ddim", 10)
    assert default_sampler(load_pipeline(str(tmp_path / "shipped"))) == "ddim"
    assert default_sampler(load_pipeline(str(trained))) == "ddpm"  # a run's own scheduler is no registry sampler
    for model, expected in ((tmp_path / "shipped", ("ddim", 10)), (trained, ("ddpm", 50))):
        out = tmp_path / f"samples-{model.name}"
        assert generate_main(["--model", str(model), "--num_images", "2", "--out", str(out)]) == 0
        record = json.loads((out / "generation.json").read_text())
        assert (record["scheduler"], record["steps"]) == expected and record["nfe"] == expected[1]


def test_a_folder_with_a_setting_this_version_lacks_still_loads_and_ships_without_it(trained, tmp_path, caplog):
    index_path = trained / "model_index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**index, "mean_colour_prior": {"mean": [0.0] * 3}, "retired": None}))
    with caplog.at_level(logging.WARNING, logger="pipeline.pipeline_folder"):
        pipe = load_pipeline(str(trained))
    assert [record.getMessage() for record in caplog.records] == [
        "ignoring the pipeline setting 'mean_colour_prior', which this version does not have"]  # a value is lost
    assert pipe.config.preprocessing["resolution"] == 8
    ship(str(trained), tmp_path / "shipped", "ddim", 10)
    shipped = json.loads((tmp_path / "shipped" / "model_index.json").read_text())
    assert "mean_colour_prior" not in shipped and "retired" not in shipped
