"""The training log's plot command reads what train_unet.py writes: checkpoint records and FID records."""

import json

from PIL import Image

from conftest import run_command


def test_plot_of_checkpoint_and_fid_records(tmp_path):
    records = [{"step": 100, "images_seen": 3200, "cpu_hours": 0.1, "loss": 0.2},
               {"step": 200, "images_seen": 6400, "cpu_hours": 0.2, "loss": 0.1},
               {"step": 200, "images_seen": 6400, "fid_1000": 150.0, "fid_protocol": "dpm++2m-20, seed 0"},
               {"step": 300, "images_seen": 9600, "cpu_hours": 0.3, "loss": 0.05},
               {"step": 300, "images_seen": 9600, "fid_1000": 120.0, "fid_protocol": "dpm++2m-20, seed 0"}]
    log = tmp_path / "training_log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_command(["-m", "pipeline.training_log", "--log", str(log), "--plot", str(tmp_path / "curve.png")])
    assert "5 records" in result.stdout
    with Image.open(tmp_path / "curve.png") as picture:
        assert picture.height > 600  # two panels: loss, and FID because the log has FID records
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    failed = run_command(["-m", "pipeline.training_log", "--log", str(empty), "--plot", str(tmp_path / "x.png")],
                         check=False)
    assert failed.returncode == 2 and "is empty" in failed.stderr
