"""train_unet.py: learning works, checkpoints resume bit-exactly, signals and bad input are handled, 2 processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image
from safetensors.torch import load_file

from pipeline.training.losses import diffusion_loss
from pipeline.training.lr_schedules import build_lr_scheduler
from pipeline.training.settings import DiffusionSettings
from train_unet import cpu_thread_advice, parse_args

from conftest import FIXTURE, ROOT, run_command, subprocess_env, train_args

RESUME_FLAGS = ["--max_train_steps", 12, "--checkpointing_steps", 4, "--checkpoints_total_limit", 5,
                "--lr_scheduler", "cosine", "--dropout", 0.1, "--prediction_type", "v_prediction",
                "--snr_gamma", 5.0]


def tensors_equal(path_a, path_b) -> bool:
    a, b = load_file(path_a), load_file(path_b)
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_overfits_one_fixed_batch():
    """The loss on one fixed batch (fixed images, noise and timesteps) falls by >= 5x within 300 steps."""
    torch.manual_seed(0)
    model = UNet2DModel(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    clean = torch.rand(4, 3, 16, 16) * 2 - 1
    diffusion = DiffusionSettings(prediction_type="epsilon", snr_gamma=None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    fixed_noise = torch.randn_like(clean)
    fixed_t = torch.tensor([50, 300, 600, 900])

    def fixed_loss():
        state = torch.get_rng_state()  # diffusion_loss draws noise and t: make them the fixed ones
        generator_noise, generator_t = fixed_noise.clone(), fixed_t.clone()
        original_randn_like, original_randint = torch.randn_like, torch.randint
        torch.randn_like = lambda x: generator_noise
        torch.randint = lambda *a, **k: generator_t
        try:
            return diffusion_loss(model, scheduler, clean, diffusion)
        finally:
            torch.randn_like, torch.randint = original_randn_like, original_randint
            torch.set_rng_state(state)

    initial = fixed_loss().item()
    for _ in range(300):
        loss = fixed_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fixed_loss().item() < initial / 5


def test_config_and_flags(tmp_path):
    settings = parse_args(["--config", "configs/smoke.yaml", "--train_data_dir", "x", "--resolution", "16"])
    assert settings.data.resolution == 16 and settings.model.block_out_channels == [16, 32]
    assert settings.optimizer.max_train_steps == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolutoin: 32\n")
    result = run_command(train_args(tmp_path / "out", "--config", bad), check=False)
    assert result.returncode == 2 and "unknown key 'resolutoin'; did you mean 'resolution'?" in result.stderr


def test_cpu_thread_advice_names_the_launcher_flag():
    advice = cpu_thread_advice(threads=1, cores=2, local_processes=1)  # what `accelerate launch` gives by default
    assert "--num_cpu_threads_per_process 2" in advice
    assert cpu_thread_advice(threads=2, cores=2, local_processes=1) is None
    assert cpu_thread_advice(threads=1, cores=2, local_processes=2) is None  # one core each is all there is
    assert "--num_cpu_threads_per_process 4" in cpu_thread_advice(threads=2, cores=16, local_processes=4)


def test_exact_resume_after_sigkill(tmp_path):
    """Killed with SIGKILL after a checkpoint, then resumed from 'latest': bitwise identical weights and EMA."""
    straight = tmp_path / "straight"
    run_command(train_args(straight, *RESUME_FLAGS))

    resumed = tmp_path / "resumed"
    process = subprocess.Popen([sys.executable, *train_args(resumed, *RESUME_FLAGS)], cwd=ROOT,
                               env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (resumed / "checkpoint-4").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (resumed / "checkpoint-4").is_dir() and not (resumed / "model_index.json").exists(), "not killed mid-run"
    run_command(train_args(resumed, *RESUME_FLAGS, "--resume_from_checkpoint", "latest"))

    assert tensors_equal(straight / "checkpoint-12" / "model.safetensors",
                         resumed / "checkpoint-12" / "model.safetensors")
    weights = "unet/diffusion_pytorch_model.safetensors"  # the EMA weights of the final pipeline
    assert tensors_equal(straight / weights, resumed / weights)
    assert tensors_equal(straight / weights, resumed / "checkpoint-12" / "pipeline" / weights)  # shippable mid-run
    summary = json.loads((straight / "run_summary_rank0.json").read_text())
    assert summary == {**json.loads((resumed / "run_summary_rank0.json").read_text()),
                       "first_keys": summary["first_keys"]}


def test_sigterm_writes_a_checkpoint_and_exits_zero(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, *train_args(out, "--max_train_steps", 100000,
                                                            "--checkpointing_steps", 3)],
                               cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint-3").is_dir() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    checkpoints = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints and not list(out.glob(".checkpoint-*.tmp"))
    assert "stopped by signal" in stderr
    assert (out / checkpoints[-1] / "pipeline" / "model_index.json").is_file()  # the EMA pipeline, ready to ship
    run_command(train_args(out, "--max_train_steps", int(checkpoints[-1].split("-")[1]) + 2,
                           "--resume_from_checkpoint", "latest"))
    assert (out / "model_index.json").is_file()


def test_time_budget_ends_the_run_with_a_checkpoint_and_the_pipeline(tmp_path):
    out = tmp_path / "run"
    result = run_command(train_args(out, "--max_train_steps", 100000, "--max_train_minutes", 0.001))
    assert "time budget of 0.001 minutes reached at step 1" in result.stderr
    assert (out / "checkpoint-1" / "pipeline" / "model_index.json").is_file() and (out / "model_index.json").is_file()
    assert json.loads((out / "run_summary_rank0.json").read_text())["global_step"] == 1
    again = run_command(train_args(out, "--max_train_steps", 100000, "--max_train_minutes", 0.001,
                                   "--resume_from_checkpoint", "latest"))
    assert "resumed from" in again.stderr and "time budget" not in again.stderr  # spent: not even one more step
    assert json.loads((out / "run_summary_rank0.json").read_text())["global_step"] == 1
    assert not (out / "checkpoint-2").exists()


def test_warmup_stable_decay_is_constant_with_warmup_then_a_linear_cooldown_to_zero():
    def learning_rates(name, **lengths):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        scheduler = build_lr_scheduler(name, optimizer, num_warmup_steps=4, num_training_steps=20, **lengths)
        rates = []
        for _ in range(20):
            rates.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return rates + scheduler.get_last_lr()

    wsd = learning_rates("warmup_stable_decay", num_decay_steps=8)
    assert wsd[:12] == learning_rates("constant_with_warmup")[:12]  # diffusers' schedule until the decay starts
    assert wsd[2] == 0.25 and wsd[4:13] == [0.5] * 9
    assert wsd[12:] == [0.5 * (20 - step) / 8 for step in range(12, 21)]  # 0.5 at the start, 0 at max_train_steps
    for bad in (None, 0, 17):
        with pytest.raises(ValueError, match="--lr_decay_steps between 1 and max_train_steps - lr_warmup_steps = 16"):
            learning_rates("warmup_stable_decay", num_decay_steps=bad)
    with pytest.raises(ValueError, match="--lr_decay_steps applies only to --lr_scheduler warmup_stable_decay"):
        learning_rates("cosine", num_decay_steps=8)


def test_cooldown_added_on_resume_equals_the_schedule_from_the_start(tmp_path):
    """A constant-LR run resumed with a warmup-stable-decay cooldown trains exactly like a run that had the cooldown
    scheduled from step 0; a changed schedule whose LR would jump at the checkpoint is refused."""
    cooldown = ["--lr_scheduler", "warmup_stable_decay", "--lr_decay_steps", 4, "--max_train_steps", 8]
    run_command(train_args(tmp_path / "straight", *cooldown))
    resumed = tmp_path / "resumed"
    run_command(train_args(resumed, "--max_train_steps", 4))  # smoke.yaml: constant_with_warmup
    jump = run_command(train_args(resumed, *cooldown[:3], 6, *cooldown[4:], "--resume_from_checkpoint", "latest"),
                       check=False)
    assert (jump.returncode == 2
            and "has lr 0.000666667 at step 4, but the checkpoint trained with lr 0.001" in jump.stderr)
    run_command(train_args(resumed, *cooldown, "--resume_from_checkpoint", "latest"))
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert tensors_equal(tmp_path / "straight" / weights, resumed / weights)
    final = json.loads((resumed / "training_log.jsonl").read_text().splitlines()[-1])
    assert final["step"] == 8 and final["lr"] == 0.0


def child_processes(pid: int) -> list[int]:
    """The process ids whose parent is ``pid`` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            children.append(int(stat.parent.name))
    return children


def test_two_process_cpu_run(tmp_path):
    """torchrun with 2 CPU processes (gloo): identical weights on both ranks, disjoint images within an epoch."""
    out = tmp_path / "ddp"
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                *train_args(out, "--max_train_steps", 6)],
                               cwd=ROOT, env={**subprocess_env(), "PYTHONFAULTHANDLER": "1"}, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a hang: SIGABRT makes faulthandler print where each worker is stuck
        for worker in child_processes(process.pid):  # torchrun starts each worker in a session of its own
            os.kill(worker, signal.SIGABRT)
        time.sleep(5)
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        pytest.fail(f"the 2-process run hung; the stacks of its processes:\n{stderr[-8000:]}")
    assert process.returncode == 0, stderr[-3000:]
    assert "MULTI_CPU" in stderr
    rank0, rank1 = (json.loads((out / f"run_summary_rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world_size"] == 2 and rank0["unet_sha256"] == rank1["unet_sha256"]
    epoch0, epoch1 = rank0["first_keys"][:24], rank1["first_keys"][:24]  # 48 images = one epoch over 2 ranks
    assert not set(epoch0) & set(epoch1) and len(set(epoch0) | set(epoch1)) == 48


def test_bad_input_gives_one_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    result = run_command(["train_unet.py", "--config", "configs/smoke.yaml", "--train_data_dir", str(missing),
                          "--output_dir", str(tmp_path / "o")], check=False)
    assert result.returncode == 2 and f"CelebA folder not found: {missing}" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_command(train_args(tmp_path / "o2", "--resume_from_checkpoint", "checkpoint-77"), check=False)
    assert result.returncode == 2 and "checkpoint folder not found: checkpoint-77" in result.stderr


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    result = run_command(train_args(tmp_path / "o", "--learning_rate", 1e25, "--lr_warmup_steps", 0,
                                    "--max_grad_norm", 1e38, "--max_train_steps", 50), check=False)
    assert result.returncode == 2 and "non-finite loss" in result.stderr and "at step" in result.stderr


def test_corrupt_image_stops_or_is_skipped_and_reported(tmp_path):
    import shutil

    root = tmp_path / "celeba"
    shutil.copytree(FIXTURE, root)
    (root / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")
    flags = ["--config", "configs/smoke.yaml", "--train_data_dir", str(root), "--max_train_steps", "13"]
    result = run_command(["train_unet.py", *flags, "--output_dir", str(tmp_path / "a")], check=False)
    assert result.returncode == 2 and "cannot decode image 000003.jpg" in result.stderr
    result = run_command(["train_unet.py", *flags, "--output_dir", str(tmp_path / "b"), "--skip_corrupt_images"])
    summary = json.loads((tmp_path / "b" / "run_summary_rank0.json").read_text())
    assert summary["skipped_corrupt_images"] == ["000003.jpg"] and "skipped 1 corrupt images" in result.stderr


def test_training_log_fid_sample_grids_and_cumulative_cpu_time(tmp_path):
    """training_log.jsonl: a record per checkpoint (CPU-hours cumulative across a resume) and FID records; sample
    grids of the EMA weights at the same steps."""
    out = tmp_path / "run"
    flags = ["--checkpointing_steps", 4, "--eval_fid_every", 4, "--eval_fid_num_samples", 6, "--eval_fid_steps", 10,
             "--eval_fid_reference_images", 12, "--save_images_steps", 4, "--num_validation_images", 4,
             "--validation_inference_steps", 2, "--logger", "tensorboard"]
    env = {"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")}
    run_command(train_args(out, *flags, "--max_train_steps", 4), env=env)
    run_command(train_args(out, *flags, "--max_train_steps", 8, "--resume_from_checkpoint", "latest",
                           "--mixed_precision", "bf16"), env=env)
    records = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    checkpoints = [r for r in records if "cpu_hours" in r]
    fids = [r for r in records if "fid_6" in r]
    assert [r["step"] for r in checkpoints] == [4, 8] and [r["step"] for r in fids] == [4, 8]
    assert checkpoints[1]["images_seen"] == 8 * 4 and 0 < checkpoints[0]["cpu_hours"] < checkpoints[1]["cpu_hours"]
    assert all(r["clock_counted_from_step"] == 0 for r in checkpoints)  # the clock covers the whole run
    assert all(r["fid_6"] > 0 and "dpm++2m-10" in r["fid_protocol"] for r in fids)  # the fast ODE sampler
    assert [r["fid_protocol"].split(", ")[1] for r in fids] == ["fp32", "bf16"]  # sampled as the run trains
    assert list((tmp_path / "cache" / "ref_stats").glob("*.pt"))  # the reference was cached, not recomputed
    grids = sorted(p.name for p in (out / "samples").glob("*.png"))
    assert grids == ["step_0000004.png", "step_0000008.png"]
    with Image.open(out / "samples" / "step_0000008.png") as grid:
        assert grid.mode == "RGB" and grid.size == (2 * (32 + 2) + 2,) * 2  # 2x2 tiles of 32 px, 2 px padding
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # the grid went to TensorBoard as well
