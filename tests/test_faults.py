"""Reliability under faults, offline and bounded: kills during checkpoint saves, a corrupt newest checkpoint, a full
disk, repeated stop signals and a stuck data stream."""

import errno
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.training.checkpoints import CheckpointWriteError, list_checkpoints, save_checkpoint_atomically
from pipeline.training.run_control import DataWatchdog, StopSignals

from conftest import ROOT, run_command, subprocess_env, train_args

FAST = ["--max_train_steps", "40", "--checkpointing_steps", "1", "--checkpoints_total_limit", "3",
        "--resume_from_checkpoint", "latest"]
COMPLETE = ("model.safetensors", "optimizer.bin", "scheduler.bin", "stream_rank0.json", "clock_rank0.json",
            "pipeline/model_index.json", "pipeline/unet/diffusion_pytorch_model.safetensors")


def assert_every_checkpoint_whole(output_dir: Path) -> None:
    for checkpoint in list_checkpoints(output_dir):
        missing = [name for name in COMPLETE if not (checkpoint / name).is_file()]
        assert not missing, f"{checkpoint.name} is missing {missing}"


def test_kill_9_at_random_moments_leaves_only_whole_checkpoints_and_resume_finishes(tmp_path):
    out, rng = tmp_path / "run", random.Random(0)
    for _ in range(3):
        process = subprocess.Popen([sys.executable, *train_args(out, *FAST)], cwd=ROOT, env=subprocess_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = len(list_checkpoints(out))
        deadline = time.time() + 120
        while len(list_checkpoints(out)) <= started and time.time() < deadline and process.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))  # saves happen every step, so some kills land inside one
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert_every_checkpoint_whole(out)
    run_command(train_args(out, *FAST))
    assert json.loads((out / "run_summary_rank0.json").read_text())["global_step"] == 40
    assert not list(out.glob(".checkpoint-*.tmp"))  # an interrupted save's leftovers are cleaned up on resume


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    out = tmp_path / "run"
    run_command(train_args(out, "--max_train_steps", "4", "--checkpointing_steps", "2"))
    newest = out / "checkpoint-4" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    result = run_command(train_args(out, "--max_train_steps", "6", "--checkpointing_steps", "2",
                                    "--resume_from_checkpoint", "latest"))
    assert "checkpoint-4 is unreadable" in result.stderr and "resumed from" in result.stderr
    assert "checkpoint-2 at step 2" in result.stderr
    assert json.loads((out / "run_summary_rank0.json").read_text())["global_step"] == 6


class FullDisk:
    """An accelerator stand-in whose save_state runs out of space half-way."""

    is_main_process = True

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_clear_error_and_the_previous_checkpoint_stays(tmp_path):
    previous = tmp_path / "checkpoint-2"
    previous.mkdir()
    (previous / "model.safetensors").write_bytes(b"whole")
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint-3 .*No space left on device.*"
                                                   r"checkpoint-2 is intact"):
        save_checkpoint_atomically(FullDisk(), str(tmp_path), 3, 2, {"stream_rank0.json": "{}"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert (previous / "model.safetensors").read_bytes() == b"whole"


def test_a_second_stop_signal_exits_at_once():
    exits = []
    signals = StopSignals(exit=exits.append)
    signals.handle(signal.SIGINT)
    assert signals.requested and not exits  # the first asks for a checkpoint after the step
    signals.handle(signal.SIGTERM)
    assert exits == [128 + signal.SIGTERM]


def test_two_sigterms_end_a_real_run_with_whole_checkpoints_only(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, *train_args(out, *FAST)], cwd=ROOT, env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list_checkpoints(out) and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (0, 128 + signal.SIGTERM)  # 0 only if the step and its checkpoint beat signal two
    if process.returncode:
        assert "exiting now without a new checkpoint" in stderr
    assert_every_checkpoint_whole(out)


def test_the_watchdog_fires_on_a_stuck_wait_and_not_between_waits():
    stalled = threading.Event()
    with DataWatchdog(minutes=0.1 / 60, on_stall=stalled.set, poll_seconds=0.02) as watchdog:
        time.sleep(0.5)  # training, not waiting for data: no alarm
        assert not stalled.is_set()
        with watchdog.waiting():
            assert stalled.wait(timeout=30)  # a batch that never comes


def test_a_kill_while_a_checkpoint_is_removed_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    """Pruning renames the checkpoint out of sight before deleting it: a kill inside the delete (here, rmtree
    failing midway) leaves a stale temporary that the next run removes, never a partial checkpoint-N."""
    from pipeline.training import checkpoints

    for step in (1, 2):
        (tmp_path / f"checkpoint-{step}" / "pipeline").mkdir(parents=True)
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")

    def killed_midway(path, *args, **kwargs):
        (Path(path) / "model.safetensors").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.remove_checkpoint(tmp_path / "checkpoint-1")
    monkeypatch.undo()
    assert [path.name for path in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    checkpoints.remove_stale_temporaries(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-2"]
