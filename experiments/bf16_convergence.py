"""Does bf16 autocast train like fp32? Two short runs of train_unet.py's step, identical except for the precision.

    python experiments/bf16_convergence.py --train_data_dir ../shared/celeba

A small 32x32 UNet (configs/smoke.yaml's architecture; batch, steps and learning rate below) is trained twice from
the same seed: same initial weights, same image order, same noise, timesteps and flips at every step (all drawn from
the same RNG in the same order), so the two loss curves differ only by the arithmetic. The runs are two processes
of the benchmarks/train_throughput.py harness that take turns in chunks of ``--chunk`` steps. Recorded:

* the per-step training loss of each (the loss of the batch as trained: bf16 autocast forward for the bf16 run);
* every ``--chunk`` steps, the fp32 loss of each model on one fixed batch with fixed noise and timesteps (no
  autocast), which compares the learned weights on equal terms;
* summary: mean training loss over the last 100 steps of each, the mean and standard error of the paired per-step
  difference (bf16 - fp32) there, and the final fixed-batch losses.

Writes results/bench/bf16_convergence.json and a PIL-drawn plot results/bench/bf16_convergence.png (smoothed
training-loss curves: exponential moving average, plus the fixed-batch losses as markers).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

from benchmarks.train_throughput import ROOT, load_average, start_variants
from pipeline.evaluation.plots import draw_panel

COLORS = {"fp32": (31, 119, 180), "bf16": (214, 39, 40)}


def ema_smooth(values, alpha):
    smoothed, state = [], None
    for value in values:
        state = value if state is None else (1 - alpha) * state + alpha * value
        smoothed.append(state)
    return smoothed


def relative_difference_percent(losses: dict, alpha: float) -> list:
    """100 x EMA(bf16 - fp32) / EMA(fp32) of the paired per-step training losses."""
    difference = ema_smooth([b - f for f, b in zip(losses["fp32"], losses["bf16"])], alpha)
    return [100 * d / f for d, f in zip(difference, ema_smooth(losses["fp32"], alpha))]


def draw_plot(path, smoothed: dict, difference: list, evals: dict, title: str):
    """Top: EMA-smoothed training losses (log y) and fixed-batch fp32 losses (squares); bottom: the smoothed
    paired difference bf16 - fp32 of the per-step training loss, in % of the fp32 loss. Drawn with PIL."""
    from PIL import Image, ImageDraw, ImageFont

    width, height = 900, 820
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    steps = len(difference)
    xs = list(range(1, steps + 1))
    draw.text((20, 10), title, fill="black", font=font)
    widths = {"fp32": 5, "bf16": 2}  # fp32 drawn wide underneath, bf16 thin on top: both stay visible
    draw_panel(draw, font, (90, 60, width - 30, 480),
               {COLORS[n]: (xs, c, widths[n]) for n, c in smoothed.items()},
               {COLORS[n]: e for n, e in evals.items()}, steps, True,
               "loss (log scale): lines = training loss, EMA-smoothed; squares = fixed-batch fp32 loss")
    draw_panel(draw, font, (90, 560, width - 30, height - 50), {(90, 90, 90): (xs, difference, 2)}, {}, steps,
               False, "(bf16 - fp32) / fp32 training loss, % (same batch, noise and timesteps; EMA-smoothed)",
               zero_line=True)
    draw.text((width // 2 - 10, height - 25), "step", fill="black", font=font)
    for row, name in enumerate(smoothed):
        y = 75 + 16 * row
        draw.line([width - 150, y, width - 120, y], fill=COLORS[name], width=widths[name])
        draw.text((width - 112, y - 6), name, fill="black", font=font)
    image.save(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smoke.yaml", help="architecture (and defaults) of the model")
    parser.add_argument("--train_data_dir", default="../shared/celeba")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=25, help="steps per turn; fixed-batch loss after each")
    parser.add_argument("--flags", default="--resolution 32 --train_batch_size 16 --learning_rate 5e-4 "
                        "--lr_warmup_steps 20 --lr_scheduler constant_with_warmup --shuffle_buffer_size 500 "
                        "--no-channels_last --adam_fused --ema_foreach --seed 0",
                        help="train_unet.py flags shared by both runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (1: robust on a shared CPU)")
    parser.add_argument("--smoothing", type=float, default=0.05, help="EMA weight of the plotted curves")
    parser.add_argument("--out", default="results/bench/bf16_convergence.json")
    cli = parser.parse_args()
    os.chdir(ROOT)
    started, load_start = time.time(), load_average()
    base = {"config": cli.config, "train_data_dir": cli.train_data_dir, "recipe": "ours", "warmup": 0,
            "threads": cli.threads}
    specs = {"fp32": {**base, "flags": cli.flags + " --mixed_precision no"},
             "bf16": {**base, "flags": cli.flags + " --mixed_precision bf16"}}
    variants = start_variants(specs)
    losses = {name: [] for name in specs}
    evals = {name: [(0, variants[name].run("eval")["loss"])] for name in specs}
    seconds = {name: 0.0 for name in specs}
    try:
        while len(losses["fp32"]) < cli.steps:
            count = min(cli.chunk, cli.steps - len(losses["fp32"]))
            for name, variant in variants.items():
                reply = variant.run("train", count)
                losses[name].extend(reply["losses"])
                seconds[name] += reply["wall_s"]
                evals[name].append((len(losses[name]), variant.run("eval")["loss"]))
            print(f"step {len(losses['fp32'])}: " + ", ".join(
                f"{n} loss {statistics.mean(losses[n][-count:]):.4f} fixed-batch {evals[n][-1][1]:.4f}"
                for n in variants), flush=True)
        for variant in variants.values():
            variant.stop()
    finally:
        for variant in variants.values():
            if variant.process.is_alive():
                variant.process.kill()
    last = slice(max(0, cli.steps - 100), cli.steps)
    differences = [b - f for f, b in zip(losses["fp32"][last], losses["bf16"][last])]
    smoothed = {name: ema_smooth(values, cli.smoothing) for name, values in losses.items()}
    result = {
        "config": cli.config, "flags": cli.flags, "steps": cli.steps, "chunk": cli.chunk, "threads": cli.threads,
        "load_average_start": load_start, "load_average_end": load_average(), "wall_s": time.time() - started,
        "train_seconds": seconds, "smoothing_ema_alpha": cli.smoothing,
        "summary": {
            "mean_train_loss_last_100": {n: statistics.mean(v[last]) for n, v in losses.items()},
            "paired_difference_bf16_minus_fp32_last_100": {
                "mean": statistics.mean(differences),
                "standard_error": statistics.stdev(differences) / math.sqrt(len(differences)),
                "mean_abs": statistics.mean(abs(d) for d in differences)},
            "first_train_loss": {n: v[0] for n, v in losses.items()},
            "final_fixed_batch_fp32_loss": {n: e[-1][1] for n, e in evals.items()},
            "fixed_batch_fp32_loss_ratio_bf16_over_fp32": evals["bf16"][-1][1] / evals["fp32"][-1][1],
        },
        "train_loss": losses, "train_loss_smoothed": smoothed,
        "relative_difference_percent_smoothed": relative_difference_percent(losses, cli.smoothing),
        "fixed_batch_fp32_loss": {n: [[s, v] for s, v in e] for n, e in evals.items()},
    }
    os.makedirs(os.path.dirname(cli.out), exist_ok=True)
    with open(cli.out, "w") as handle:
        json.dump(result, handle, indent=1)
    png = os.path.splitext(cli.out)[0] + ".png"
    paired = relative_difference_percent(losses, cli.smoothing)
    draw_plot(png, smoothed, paired, evals, f"bf16 autocast vs fp32 training, same seed, data, noise and timesteps "
              f"({cli.config}, 32x32, batch 16, {cli.steps} steps; see the JSON for all flags)")
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {cli.out} and {png}")


if __name__ == "__main__":
    main()
