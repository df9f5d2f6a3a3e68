"""Shared test helpers: the committed CelebA fixture, and runs of the project's commands (subprocess or in-process)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "celeba"
SMOKE_CONFIG = ROOT / "configs" / "smoke.yaml"
# the valid and test names of the fixture's partition file, whose images it does not hold
HELDOUT = ("162771.jpg", "162772.jpg", "162773.jpg", "182638.jpg", "182639.jpg", "182640.jpg")

# two cores: two threads for one test process, one each when pytest-xdist runs two workers side by side (commands
# called in-process read OMP_NUM_THREADS for their thread count, as their subprocesses do)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


def subprocess_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def run_command(args: list[str], timeout: float = 300, check: bool = True,
                env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` from the repo root with the test interpreter (``env`` updates the environment)."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env={**subprocess_env(), **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def run_in_process(main, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """``run_command`` for a command whose ``__main__`` is ``sys.exit(run_cli(main))``, without a fresh interpreter:
    the same exit status (user errors give 2, argparse's its own) and the captured output. For tests of what a
    command writes, where a subprocess would only add seconds of imports; the thread count is restored afterwards."""
    stdout, stderr, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = run_cli(main, argv)
    except SystemExit as stop:
        code = stop.code
    finally:
        torch.set_num_threads(threads)
    result = subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        raise AssertionError(f"{argv} failed ({code}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def celeba_with_heldout(folder: Path) -> Path:
    """A copy of the fixture whose held-out names (valid and test split) hold images: other real faces."""
    shutil.copytree(FIXTURE, folder)
    for index, name in enumerate(HELDOUT):
        shutil.copy(folder / "img_align_celeba" / f"{index + 40:06d}.jpg", folder / "img_align_celeba" / name)
    return folder


def train_args(output_dir, *extra) -> list[str]:
    return ["train_unet.py", "--config", str(SMOKE_CONFIG), "--train_data_dir", str(FIXTURE),
            "--output_dir", str(output_dir), *map(str, extra)]


@pytest.fixture
def one_torch_thread():
    """Many tiny ops (or LAPACK) on a machine shared with other jobs: one thread avoids oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_pipeline_dir(tmp_path_factory) -> Path:
    """A pipeline trained for 8 steps by train_unet.py on the fixture (shared by the pipeline/generation tests)."""
    output_dir = tmp_path_factory.mktemp("smoke_run")
    run_command(train_args(output_dir))
    return output_dir
