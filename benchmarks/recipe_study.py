"""Which training recipe gives the best sampler-ready model for the same compute? Train each, then FID.

    python benchmarks/recipe_study.py --train_data_dir ../shared/celeba --steps 2000

Recipes are overrides of configs/celeba64_cpu.yaml (64x64, 8 GroupNorm groups, epsilon, linear schedule):
``eps-linear`` as it is; ``v-zsnr``, v-prediction on the betas rescaled to zero terminal SNR; ``edm``, EDM's
preconditioning, noise distribution and loss weight (``--preconditioning edm``); ``diffusers-example``,
the recipe of diffusers' train_unconditional.py (epsilon, lr 1e-4 after 500 warm-up steps, EMA up to 0.9999, weight
decay 1e-6, its six-level UNet with attention at the 4x4 level) scaled to this machine: a quarter of its widths and of
its GroupNorm groups, so every group keeps the example's 4 channels. All recipes but the example use a 250-step
warm-up. The budget is compute, counted in training steps of the base UNet (batch 32): the other recipes share that
UNet and cost the same per step, and the example's UNet gets as many steps as cost the same, by the ratio of the two
UNets' training-step times measured here first, interleaved, on synthetic batches (``step_cost.json``). Counting
steps rather than CPU seconds keeps the comparison fair when other work shares the machine. Each recipe runs
``accelerate launch train_unet.py --max_train_steps N`` (resumable: an interrupted recipe continues exactly from its
checkpoint), then ``pipeline.evaluate`` with each scoring
sampler (FID-N, bf16 UNet, seed 0) against the cached reference of all official-train
images: DDPM and DPM-Solver++(2M), the stochastic and the fast deterministic sampler, each at 20 NFE (for ``edm``,
EDM's SDE and ODE DPM-Solver++(2M) on its Karras sigmas). A scored
(recipe, sampler) whose JSON exists for the same budget and protocol is skipped, so the study can span several
sessions. Writes <out_dir>/<recipe>_<sampler>-<steps>.json, a sample grid per recipe, <out_dir>/step_cost.json and
<out_dir>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import evaluate
from pipeline.cli import ArgumentParser, run_cli
from pipeline.data.images import make_grid
from pipeline.generate import generate, load_pipeline
from pipeline.training_log import read_training_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE_CONFIG = "configs/celeba64_cpu.yaml"
COMMON = {"lr_warmup_steps": 250, "max_train_steps": 10**9, "save_images_steps": 0, "checkpointing_steps": 0,
          "checkpointing_minutes": 10}
RECIPES = {
    "eps-linear": {},
    "v-zsnr": {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
    "edm": {"preconditioning": "edm"},
    "diffusers-example": {"learning_rate": 1e-4, "lr_warmup_steps": 500, "ema_max_decay": 0.9999,
                          "adam_weight_decay": 1e-6, "block_out_channels": [32, 32, 64, 64, 128, 128],
                          "norm_num_groups": 8,
                          "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
                          "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4},
}
BASE = "eps-linear"  # the base config as it is: the unit of the compute budget
UNET_KEYS = {"block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "norm_num_groups",
             "pixel_unshuffle", "resolution", "train_batch_size"}
# (stochastic, deterministic) sampler at 20 NFE each, for the DDPM-trained recipes and for the EDM one
SCORING_SAMPLERS = (("ddpm", 20), ("dpm++2m", 20))
EDM_SCORING_SAMPLERS = (("edm-dpm++2m-sde", 20), ("edm-dpm++2m", 20))


def scoring_samplers(name: str) -> tuple:
    return EDM_SCORING_SAMPLERS if RECIPES[name].get("preconditioning") == "edm" else SCORING_SAMPLERS


def as_flags(overrides: dict) -> list[str]:
    flags = []
    for key, value in overrides.items():
        if isinstance(value, bool):
            flags.append(f"--{key}" if value else f"--no-{key}")
        else:
            flags.append(f"--{key}")
            flags += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return flags


def run_dir(name: str, args) -> Path:
    """One training folder per recipe and budget: a run resumed with another budget would mislabel its result."""
    return Path(args.runs_dir).expanduser() / f"{name}-{args.steps}steps"


def recipe_settings(name: str, base_config: str, overrides: dict | None = None):
    """train_unet.py's settings of a recipe (no data needed: for building its UNet)."""
    from pipeline.training.settings import load_settings

    return load_settings(base_config, *as_flags({**COMMON, **RECIPES[name], **(overrides or {})}))


def measure_step_cost(base_config: str, names: list[str], repeats: int = 5) -> dict:
    """Seconds per training step (forward, backward, AdamW; bf16 autocast, synthetic batch) of each recipe's UNet,
    measured interleaved so that both see the same machine; median over ``repeats`` after one warm-up step."""
    from pipeline.training.build import build_model_and_scheduler, build_optimizer_and_ema
    from pipeline.training.losses import diffusion_loss

    setups = {}
    for name in names:
        settings = recipe_settings(name, base_config)
        torch.manual_seed(0)
        model, scheduler = build_model_and_scheduler(settings)
        optimizer, _ = build_optimizer_and_ema(model, settings.optimizer)
        size = settings.data.resolution
        batch = torch.rand(settings.optimizer.train_batch_size, 3, size, size) * 2 - 1
        setups[name] = (model, scheduler, optimizer, batch, settings.diffusion)
    times = {name: [] for name in names}
    for repeat in range(repeats + 1):
        for name in (names if repeat % 2 else names[::-1]):
            model, scheduler, optimizer, batch, diffusion = setups[name]
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = diffusion_loss(model, scheduler, batch, diffusion)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if repeat:
                times[name].append(time.perf_counter() - started)
    return {name: {"median_seconds": statistics.median(values), "min_seconds": min(values),
                   "max_seconds": max(values)} for name, values in times.items()}


def step_budgets(args, out_dir: Path) -> dict:
    """Training steps per recipe for the same compute as ``args.steps`` steps of the base UNet (measured once)."""
    path = out_dir / "step_cost.json"
    different = [name for name in RECIPES if set(RECIPES[name]) & UNET_KEYS]
    cost = json.loads(path.read_text()) if path.is_file() else None
    if cost is None or cost.get("base_config") != args.base_config or set(cost["recipes"]) != {BASE, *different}:
        cost = {"base_config": args.base_config, "threads": torch.get_num_threads(),
                "recipes": measure_step_cost(args.base_config, [BASE, *different])}
        path.write_text(json.dumps(cost, indent=1))
    base_seconds = cost["recipes"][BASE]["median_seconds"]
    return {name: round(args.steps * base_seconds / cost["recipes"][name]["median_seconds"])
            if name in different else args.steps for name in RECIPES}


def train_command(name: str, args, steps: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--num_cpu_threads_per_process", str(args.threads), "--mixed_precision", "bf16", "--dynamo_backend",
            "no", "train_unet.py", "--config", args.base_config, "--train_data_dir", args.train_data_dir,
            "--output_dir", str(run_dir(name, args)), "--resume_from_checkpoint", "latest",
            *as_flags({**COMMON, **RECIPES[name], "max_train_steps": steps})]


def run_training(name: str, command: list[str]) -> None:
    """A failed or killed training is resumable: say so in one line rather than a CalledProcessError traceback."""
    returncode = subprocess.run(command, cwd=ROOT).returncode
    if returncode != 0:
        raise ValueError(f"{name}: training exited with status {returncode} (its log is above); "
                         f"rerun the same command to resume it")


def require_full_budget(name: str, training: dict, steps: int) -> None:
    """A training stopped by a signal also exits 0; scoring it would record a short run as the recipe's result."""
    if training["step"] < steps:
        raise ValueError(f"{name}: training stopped after {training['step']} of its {steps} steps "
                         f"(interrupted?); rerun the same command to resume it")


def save_grid(model: Path, path: Path, seed: int, samplers: tuple) -> None:
    """8 samples of every scoring sampler (a row each, stochastic first) from the same seed."""
    pipe = load_pipeline(str(model), "cpu")
    images = [generate(pipe, 8, sampler, steps, seed, mixed_precision="bf16", progress=False)[0]
              for sampler, steps in samplers]
    make_grid(np.concatenate(images), columns=8, upscale=2).save(path)


def result_path(out_dir: Path, name: str, sampler: str, steps: int) -> Path:
    return out_dir / f"{name}_{sampler}-{steps}.json"


def matches(path: Path, protocol: dict) -> bool:
    return path.is_file() and all(json.loads(path.read_text()).get(k) == v for k, v in protocol.items())


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", required=True)
    parser.add_argument("--base_config", default=BASE_CONFIG, help="the recipes' common starting point")
    parser.add_argument("--steps", type=int, default=2000, help="training budget: steps of the base UNet (batch 32; "
                        "about 2 CPU-hours alone on 2 Zen 4 cores); other UNets get the steps that cost the same")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), help=f"subset of {list(RECIPES)}")
    parser.add_argument("--num_samples", type=int, default=2000, help="FID-N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs_dir", default="~/runs/recipes_v2", help="training outputs (checkpoints; outside the "
                        "work tree so that they survive a new checkout)")
    parser.add_argument("--out_dir", default="results/recipes_v2")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.recipes) - set(RECIPES))
    if unknown:
        raise ValueError(f"unknown recipes {unknown}; choose from {list(RECIPES)}")
    if not os.path.isfile(args.base_config):
        raise FileNotFoundError(f"base config not found: {args.base_config}")
    if args.steps < 1 or args.num_samples < 2:
        raise ValueError("--steps must be positive and --num_samples at least 2")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = {"budget_steps": args.steps, "num_samples": args.num_samples, "seed": args.seed,
                "base_config": args.base_config}
    budgets = step_budgets(args, out_dir)
    for name in args.recipes:
        todo = [(s, n) for s, n in scoring_samplers(name) if not matches(result_path(out_dir, name, s, n), protocol)]
        if not todo:
            print(f"{name}: done before")
            continue
        command = train_command(name, args, budgets[name])
        print(f"{name}: training for {budgets[name]} steps", flush=True)
        run_training(name, command)
        training = read_training_log(str(run_dir(name, args) / "training_log.jsonl"))
        require_full_budget(name, training, budgets[name])
        save_grid(run_dir(name, args), out_dir / f"{name}_grid.png", args.seed, scoring_samplers(name))
        for sampler, steps in todo:
            path = result_path(out_dir, name, sampler, steps)
            evaluate.main(["--model", str(run_dir(name, args)), "--train_data_dir", args.train_data_dir,
                           "--num_samples", str(args.num_samples), "--scheduler", sampler, "--steps", str(steps),
                           "--seed", str(args.seed), "--mixed_precision", "bf16", "--out", str(path)])
            result = json.loads(path.read_text())
            path.write_text(json.dumps({**result, **protocol, "recipe": name,
                                        "overrides": {**COMMON, **RECIPES[name]},
                                        "train_command": " ".join(command[1:]), "training": training}, indent=1))
    rows = []
    for name in RECIPES:
        for sampler, steps in scoring_samplers(name):
            path = result_path(out_dir, name, sampler, steps)
            if matches(path, protocol):
                result = json.loads(path.read_text())
                rows.append({"recipe": name, "sampler": sampler, "nfe": result["nfe"], "fid": result["fid"],
                             "kid_mean": result["kid_mean"], "precision": result["precision"],
                             "recall": result["recall"], "steps": result["training"]["step"],
                             "images_seen": result["training"]["images_seen"],
                             "cpu_hours": result["training"]["cpu_hours"], "label": result["label"],
                             "file": path.name})  # beside summary.json
    summary = {"protocol": protocol, "step_budgets": budgets, "recipes": rows}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    for row in sorted(rows, key=lambda r: r["fid"]):
        print(f"{row['recipe']:>20} {row['sampler']:>8}-{row['nfe']:g}  {row['label']} {row['fid']:7.2f}  "
              f"{row['steps']:>6} steps ({row['cpu_hours']:.2f} CPU-h)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
