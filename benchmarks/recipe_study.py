"""Which training recipe learns fastest on this CPU? Every recipe trains for the same wall-clock budget, then FID.

    python benchmarks/recipe_study.py --train_data_dir ../shared/celeba --minutes 45

Recipes are overrides of configs/celeba64_cpu.yaml (64x64, epsilon, linear schedule): v-prediction, the cosine
schedule, min-SNR-5 loss weighting, a "simple diffusion" UNet on 2x2 pixel-unshuffled input (a 32x32 model with
12 channels) with the cosine schedule shifted for 64x64 (base 32), and the same UNet trained on 32x32 images (its
samples are upsampled to the base resolution with the references' filter before scoring, so every recipe is scored
as a maker of 64x64 faces against the same reference). All recipes use a 250-step warm-up instead of the
long run's 1000, since the budgets are short. Each recipe runs ``accelerate launch train_unet.py
--max_train_minutes M`` alone on the machine (resumable: an interrupted recipe continues from its checkpoint and its
wall clock, summed over resumes: keep the machine otherwise idle, since contention and pauses count against the
budget), then ``pipeline.evaluate`` (FID-N, bf16 UNet, by default DDIM with x0 clipping at 20 steps, ``ddim-clip``:
early in training the unclipped ODE samplers DDIM/DPM-Solver++ still give saturated noise, REPORT Section 6.4)
against the cached reference of all official-train images, always without the mean-colour correction (the study
compares what the networks learned; a prior in a recipe's pipeline would otherwise switch it on). A recipe whose
results JSON exists for the same budget, sample count and seed is skipped, so the study can span several sessions.
Writes results/recipes/<recipe>.json and results/recipes/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from pipeline import evaluate  # noqa: E402
from pipeline.cli import run_cli  # noqa: E402
from pipeline.model_card import read_training_log  # noqa: E402

BASE_CONFIG = "configs/celeba64_cpu.yaml"
COMMON = {"lr_warmup_steps": 250, "max_train_steps": 10**9, "save_images_steps": 0, "checkpointing_steps": 0,
          "checkpointing_minutes": 10}
RECIPES = {
    "eps-linear": {},
    "v-linear": {"prediction_type": "v_prediction"},
    "eps-cosine": {"ddpm_beta_schedule": "squaredcos_cap_v2"},
    "eps-linear-minsnr5": {"snr_gamma": 5.0},
    "eps-linear-32px": {"resolution": 32},
    "unshuffle2-shifted-cosine": {"pixel_unshuffle": 2, "ddpm_beta_schedule": "shifted_cosine",
                                  "shifted_cosine_base_resolution": 32, "block_out_channels": [64, 128, 128],
                                  "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                                  "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]},
}


def as_flags(overrides: dict) -> list[str]:
    flags = []
    for key, value in overrides.items():
        flags.append(f"--{key}")
        flags += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return flags


def run_dir(name: str, args) -> Path:
    """One training folder per recipe and budget: a run resumed with another budget would mislabel its result."""
    return Path(args.runs_dir) / f"{name}-{args.minutes:g}min"


def train_command(name: str, args) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--num_cpu_threads_per_process", str(args.threads), "--mixed_precision", "bf16", "--dynamo_backend",
            "no", "train_unet.py", "--config", args.base_config, "--train_data_dir", args.train_data_dir,
            "--output_dir", str(run_dir(name, args)), "--resume_from_checkpoint", "latest",
            "--max_train_minutes", str(args.minutes), *as_flags({**COMMON, **RECIPES[name]})]


def base_resolution(base_config: str) -> int:
    """Every recipe is scored at the base config's resolution (a 32x32 recipe's samples are resized to it)."""
    if not os.path.isfile(base_config):
        raise FileNotFoundError(f"base config not found: {base_config}")
    with open(base_config) as handle:
        return int((yaml.safe_load(handle) or {}).get("resolution", 64))


def run_training(name: str, command: list[str]) -> None:
    """A failed or killed training is resumable: say so in one line rather than a CalledProcessError traceback."""
    returncode = subprocess.run(command, cwd=ROOT).returncode
    if returncode != 0:
        raise ValueError(f"{name}: training exited with status {returncode} (its log is above); "
                         f"rerun the same command to resume it")


def require_full_budget(name: str, training: dict, minutes: float) -> None:
    """A training stopped by a signal also exits 0; scoring it would record a short run as the recipe's result."""
    trained = 60 * training["wall_hours"]
    if trained < minutes:
        raise ValueError(f"{name}: training stopped after {trained:.1f} of its {minutes:g} minutes (interrupted?); "
                         f"rerun the same command to resume it")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", required=True)
    parser.add_argument("--base_config", default=BASE_CONFIG, help="the recipes' common starting point")
    parser.add_argument("--minutes", type=float, default=45.0, help="wall-clock training budget per recipe")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), help=f"subset of {list(RECIPES)}")
    parser.add_argument("--num_samples", type=int, default=2000, help="FID-N")
    parser.add_argument("--scheduler", default="ddim-clip", help="sampler that scores every recipe (pipeline.evaluate)")
    parser.add_argument("--steps", type=int, default=20, help="its number of steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs_dir", default="runs/recipes", help="training outputs (checkpoints; not committed)")
    parser.add_argument("--out_dir", default="results/recipes")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.recipes) - set(RECIPES))
    if unknown:
        raise ValueError(f"unknown recipes {unknown}; choose from {list(RECIPES)}")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = {"minutes": args.minutes, "num_samples": args.num_samples, "seed": args.seed,
                "base_config": args.base_config, "scheduler": args.scheduler, "steps": args.steps,
                "resolution": base_resolution(args.base_config)}
    for name in args.recipes:
        path = out_dir / f"{name}.json"
        if path.is_file() and all(json.loads(path.read_text()).get(k) == v for k, v in protocol.items()):
            print(f"{name}: done before ({path})")
            continue
        command = train_command(name, args)
        print(f"{name}: training for {args.minutes} minutes", flush=True)
        run_training(name, command)
        training = read_training_log(str(run_dir(name, args) / "training_log.jsonl"))
        require_full_budget(name, training, args.minutes)
        evaluate.main(["--model", str(run_dir(name, args)), "--train_data_dir", args.train_data_dir, "--num_samples",
                       str(args.num_samples), "--scheduler", args.scheduler, "--steps", str(args.steps), "--seed",
                       str(args.seed), "--resolution", str(protocol["resolution"]), "--mixed_precision", "bf16",
                       "--no-mean_colour_correction", "--out", str(path)])
        result = json.loads(path.read_text())
        path.write_text(json.dumps({**result, **protocol, "recipe": name, "overrides": {**COMMON, **RECIPES[name]},
                                    "base_config": args.base_config, "train_command": " ".join(command[1:]),
                                    "training": training}, indent=1))
    rows = []
    for name in RECIPES:
        path = out_dir / f"{name}.json"
        result = json.loads(path.read_text()) if path.is_file() else {}
        if all(result.get(k) == v for k, v in protocol.items()):  # only results of this budget and protocol
            rows.append({"recipe": name, "fid": result["fid"], "kid_mean": result["kid_mean"],
                         "precision": result["precision"], "recall": result["recall"],
                         "steps": result["training"]["step"], "images_seen": result["training"]["images_seen"],
                         "minutes": result["minutes"], "label": result["label"], "file": str(path)})
    (out_dir / "summary.json").write_text(json.dumps({"protocol": protocol, "recipes": rows}, indent=1))
    for row in sorted(rows, key=lambda r: r["fid"]):
        print(f"{row['recipe']:>28}  {row['label']} {row['fid']:7.2f}  {row['steps']:>6} steps in {row['minutes']} min")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
