"""The training log's command plots what train_unet.py writes (checkpoint and FID records) and joins a warm-restarted
run to the log of the run it continues."""

import json

import pytest
from PIL import Image

from pipeline import training_log
from pipeline.training_log import fid_series, read_training_log

from conftest import run_in_process


def test_plot_of_checkpoint_and_fid_records(tmp_path):
    records = [{"step": 100, "images_seen": 3200, "cpu_hours": 0.1, "loss": 0.2},
               {"step": 200, "images_seen": 6400, "cpu_hours": 0.2, "loss": 0.1},
               {"step": 200, "images_seen": 6400, "fid_1000": 150.0, "fid_protocol": "dpm++2m-20, seed 0"},
               {"step": 300, "images_seen": 9600, "cpu_hours": 0.3, "loss": 0.05},
               {"step": 300, "images_seen": 9600, "fid_1000": 120.0, "fid_protocol": "dpm++2m-20, seed 0"}]
    log = tmp_path / "training_log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = run_in_process(training_log.main, ["--log", str(log), "--plot", str(tmp_path / "curve.png")])
    assert "5 records" in result.stdout
    with Image.open(tmp_path / "curve.png") as picture:
        assert picture.height > 600  # two panels: loss, and FID because the log has FID records
    with_rates = [{**r, "lr": 1e-4} if "loss" in r else r for r in records]
    log.write_text("".join(json.dumps(r) + "\n" for r in with_rates))
    run_in_process(training_log.main, ["--log", str(log), "--plot", str(tmp_path / "curve3.png")])
    with Image.open(tmp_path / "curve3.png") as three, Image.open(tmp_path / "curve.png") as two:
        assert three.height > two.height  # a learning-rate panel: the log records the rate
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    failed = run_in_process(training_log.main, ["--log", str(empty), "--plot", str(tmp_path / "x.png")],
                                                check=False)
    assert failed.returncode == 2 and "is empty" in failed.stderr


def test_an_evaluation_of_a_checkpoint_becomes_an_fid_record_of_its_step(tmp_path):
    log = tmp_path / "training_log.jsonl"
    log.write_text(json.dumps({"step": 200, "images_seen": 6400, "cpu_hours": 0.2, "loss": 0.1}) + "\n")
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"num_samples": 2000, "fid": 96.5, "kid_mean": 0.09, "sampler": "ddpm",
                                      "steps": 20, "seed": 0, "mixed_precision": "bf16",
                                      "reference": {"num_images": 20000}}))
    run_in_process(training_log.main, ["--log", str(log), "--add_eval", str(evaluation), "--step", "200",
                                       "--plot", str(tmp_path / "curve.png")])
    added = json.loads(log.read_text().splitlines()[-1])
    assert added == {"step": 200, "images_seen": 6400, "fid_2000": 96.5, "kid_2000": 0.09,
                     "fid_protocol": "ddpm-20, seed 0, bf16, reference 20000 train images (pipeline.evaluate)"}
    wrong_step = run_in_process(training_log.main, ["--log", str(log), "--add_eval", str(evaluation),
                                                    "--step", "300"], check=False)
    assert wrong_step.returncode == 2 and "no record at step 300" in wrong_step.stderr
    assert len(log.read_text().splitlines()) == 2  # the failed call appended nothing


def test_fid_records_of_different_samplers_are_different_curves():
    records = [{"step": 100, "fid_2000": 90.0, "fid_protocol": "ddpm-20, seed 0"},
               {"step": 300, "fid_2000": 70.0, "fid_protocol": "ddim-clip-20, seed 0"},
               {"step": 200, "fid_2000": 80.0, "fid_protocol": "ddpm-20, seed 0"},
               {"step": 200, "fid_1000": 85.0},
               {"step": 200, "loss": 0.1, "cpu_hours": 0.2}]
    assert fid_series(records) == {"FID-1000": [(200, 85.0)], "FID-2000, ddim-clip-20": [(300, 70.0)],
                                   "FID-2000, ddpm-20": [(100, 90.0), (200, 80.0)]}


def test_a_warm_restarted_run_continues_the_log_of_the_run_it_started_from(tmp_path):
    """A run started from another run's step-200 weights counts from 0; joined, its records count on from step 200's
    checkpoint (steps, images, CPU and wall hours), the first run's later records are dropped, and repeating the
    update as the new run goes on re-joins at the restart record."""
    first = [{"step": 100, "images_seen": 3200, "cpu_hours": 0.1, "wall_hours": 0.05, "loss": 0.3},
             {"step": 200, "images_seen": 6400, "cpu_hours": 0.2, "wall_hours": 0.1, "loss": 0.2},
             {"step": 200, "images_seen": 6400, "fid_1000": 150.0},
             {"step": 300, "images_seen": 9600, "cpu_hours": 0.3, "wall_hours": 0.15, "loss": 0.1}]
    second = [{"step": 50, "images_seen": 1600, "cpu_hours": 0.05, "wall_hours": 0.02, "loss": 0.15},
              {"step": 100, "images_seen": 3200, "fid_1000": 120.0, "fid_protocol": "edm-dpm++2m-20"}]
    log, run_log = tmp_path / "log.jsonl", tmp_path / "run.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in first))
    run_log.write_text("".join(json.dumps(r) + "\n" for r in second))
    note = ["--restart_note", "warm restart from its EMA weights"]
    bad = run_in_process(training_log.main, ["--log", str(log), "--update_from", str(run_log),
                                             "--restart_step", "150", *note], check=False)
    assert bad.returncode == 2 and "no checkpoint record at step 150" in bad.stderr
    assert log.read_text() == "".join(json.dumps(r) + "\n" for r in first)  # the failed call changed nothing
    run_in_process(training_log.main, ["--log", str(log), "--update_from", str(run_log),
                                       "--restart_step", "200", *note])
    joined = [json.loads(line) for line in log.read_text().splitlines()]
    assert joined[:3] == first[:3] and joined[3] == {"step": 200, "restart": "warm restart from its EMA weights"}
    assert joined[4] == {"step": 250, "images_seen": 8000, "cpu_hours": pytest.approx(0.25),
                         "wall_hours": pytest.approx(0.12), "loss": 0.15}
    assert joined[5] == {"step": 300, "images_seen": 9600, "fid_1000": 120.0, "fid_protocol": "edm-dpm++2m-20"}
    assert len(joined) == 6  # the first run's step 300 is not an ancestor of the new weights
    second.append({"step": 150, "images_seen": 4800, "cpu_hours": 0.15, "wall_hours": 0.06, "loss": 0.12})
    run_log.write_text("".join(json.dumps(r) + "\n" for r in second))
    for _ in range(2):  # without --restart_step: re-joined at the restart record, so repeating it changes nothing
        run_in_process(training_log.main, ["--log", str(log), "--update_from", str(run_log),
                                           "--plot", str(tmp_path / "curve.png")])
        updated = [json.loads(line) for line in log.read_text().splitlines()]
        assert updated[:6] == joined and len(updated) == 7 and updated[6]["step"] == 350
    training = read_training_log(str(log))
    assert training["step"] == 350 and training["cpu_hours"] == pytest.approx(0.35)
    assert training["restarts"] == [{"step": 200, "restart": "warm restart from its EMA weights"}]
    assert read_training_log(str(log), 200)["restarts"] == []  # the weights of step 200 precede the restart
    missing = run_in_process(training_log.main, ["--log", str(log), "--shipped_step", "300"], check=False)
    assert missing.returncode == 2 and "no checkpoint record at step 300" in missing.stderr  # 300 is an FID record
    assert log.read_text().splitlines() == [json.dumps(record) for record in updated]  # nothing changed
    run_in_process(training_log.main, ["--log", str(log), "--shipped_step", "250"])
    assert [json.loads(line) for line in log.read_text().splitlines()] == joined[:5]  # up to the shipped weights
    run_in_process(training_log.main, ["--log", str(log), "--update_from", str(run_log)])
    assert [json.loads(line) for line in log.read_text().splitlines()] == updated  # the run's later records return
