"""experiments/gpu_wide_model.py end to end on the CPU with a tiny width: pack, a budgeted run, ship, and the stored
samples scored on the shipped folder."""

import json

import numpy as np
import pytest

from experiments.gpu_wide_model import unpack
from pipeline.data.celeba import IMAGE_DIR, read_official_layout
from pipeline.data.preprocess import decode_image, preprocess_image
from pipeline.pipeline_folder import load_pipeline, weights_checksum
from pipeline.training.settings import load_settings

from conftest import FIXTURE, run_command

TINY = ["--width", "16", "16", "32", "32", "--batch_size", "4"]


@pytest.mark.slow
def test_pack_train_ship_and_score(tmp_path):
    pack, run, shipped = tmp_path / "pack.npz", tmp_path / "run", tmp_path / "shipped"
    run_command(["-m", "experiments.gpu_wide_model", "pack", "--train_data_dir", str(FIXTURE), "--out", str(pack),
                 *TINY])
    images, facts = unpack(str(pack))
    names = [name for name, _, _ in read_official_layout(FIXTURE).records["train"]]
    prep = load_settings("configs/celeba64_edm.yaml").data.preprocessing
    exact = np.stack([preprocess_image(decode_image((FIXTURE / IMAGE_DIR / name).read_bytes(), name), prep)
                      for name in names])
    assert images.shape == exact.shape == (len(names), 3, 64, 64) and facts["decoded_as_packed"]
    assert facts["psnr_db"] > 35 and np.abs(images.astype(int) - exact).mean() < 3  # JPEG q90: close, not exact

    run_command(["-m", "experiments.gpu_wide_model", "train", "--pack", str(pack), "--out", str(run),
                 "--device", "cpu", "--train_seconds", "12", "--timing_from", "2", "--timing_until", "4",
                 "--lr_warmup_steps", "3", "--log_every", "2", "--num_samples", "5", *TINY])
    summary = json.loads((run / "run.json").read_text())
    records = [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == summary["steps"] > 4  # the step count was fixed after timing steps 2-4
    assert records[-1]["lr"] == pytest.approx(2e-4 / summary["lr_decay_steps"])  # the cooldown's last step
    assert summary["block_out_channels"] == [16, 16, 32, 32] and summary["images_seen"] == 4 * summary["steps"]
    assert records[-1]["hardware"] == summary["hardware"] == "CPU" and records[-1]["gpu_hours"] > 0  # the clock


    run_command(["-m", "experiments.gpu_wide_model", "ship", "--run", str(run), "--out", str(shipped)])
    pipe = load_pipeline(str(shipped))
    assert weights_checksum(pipe.unet) == summary["unet_sha256"]  # float16 values, stored as float32
    assert all(np.array_equal(p.detach().numpy(), p.detach().half().float().numpy()) for p in pipe.unet.parameters())
    assert pipe.config.default_num_inference_steps == 20 and type(pipe.scheduler).__name__ == (
        "EDMDPMSolverMultistepScheduler")
    out = tmp_path / "fid.json"
    run_command(["-m", "pipeline.evaluate", "--model", str(shipped), "--batches", str(run / "samples"),
                 "--train_data_dir", str(FIXTURE), "--num_heldout", "8", "--kid_subset_size", "2", "--out", str(out)],
                env={"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")})
    result = json.loads(out.read_text())
    assert (result["num_samples"], result["sampler"], result["steps"], result["seed"]) == (5, "edm-dpm++2m", 20, 0)
    card = tmp_path / "card.md"
    run_command(["-m", "pipeline.model_card", "--model", str(shipped), "--eval", str(out), "--training_log",
                 str(run / "training_log.jsonl"), "--out", str(card)])
    minutes = 60 * records[-1]["gpu_hours"]
    assert (f"{summary['steps']:,} optimisation steps, {summary['images_seen']:,} training images seen. "
            f"{minutes:.1f} GPU-minutes (CPU).") in card.read_text()
