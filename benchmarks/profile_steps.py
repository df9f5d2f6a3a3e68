"""Where the time of a training step and of a sampling step goes: ``torch.profiler`` tables of the top operators.

    python benchmarks/profile_steps.py --train_data_dir ../shared/celeba        # ~3 min on 2 quiet cores

The training step is train_unet.py's own (``train_unet.Run`` at the shipped config, bf16 as its launch command
gives); the sampling step is one UNet evaluation at batch 64 as ``pipeline.generate`` runs it by default. Each is
warmed up, then ``--steps`` of them are profiled. Writes ``results/bench/profile.json`` (per operator: self CPU time
per step, its share and call count; and the same grouped into convolution, matmul, normalisation, activation,
attention, optimizer and the rest) and the profiler's own tables as ``results/bench/profile_{train,sample}.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OPERATOR_GROUPS = {  # first matching substring of the operator name wins
    "convolution": ("convolution", "conv2d", "mkldnn_conv"),
    "matmul": ("addmm", "::mm", "bmm", "matmul", "linear"),
    "attention": ("scaled_dot_product", "softmax", "_flash_attention"),
    "normalisation": ("group_norm", "native_group_norm", "layer_norm"),
    "activation": ("silu", "gelu"),
    "optimizer": ("adam", "_foreach", "lerp"),
    "resampling": ("upsample", "interpolate", "avg_pool"),
}


def operator_group(name: str) -> str:
    lowered = name.lower()
    for group, needles in OPERATOR_GROUPS.items():
        if any(needle in lowered for needle in needles):
            return group
    return "elementwise and other"


def profile_steps(step, steps: int, warmup: int, rows: int) -> tuple[dict, str]:
    """(summary, table) of ``steps`` calls of ``step`` after ``warmup`` unprofiled ones."""
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - started
    averages = profiler.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=rows)
    events = [event for event in averages if event.self_cpu_time_total > 0]
    total = sum(event.self_cpu_time_total for event in events)
    top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:rows]
    groups: dict[str, float] = {}
    for event in events:
        group = operator_group(event.key)
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total
    summary = {
        "steps": steps, "wall_s_per_step": wall / steps, "self_cpu_s_per_step": total / 1e6 / steps,
        "top_operators": [{"name": event.key, "self_cpu_s_per_step": event.self_cpu_time_total / 1e6 / steps,
                           "share": event.self_cpu_time_total / total, "calls_per_step": event.count / steps}
                          for event in top],
        "groups": {group: {"self_cpu_s_per_step": value / 1e6 / steps, "share": value / total}
                   for group, value in sorted(groups.items(), key=lambda item: -item[1])},
    }
    return summary, table


def training_step(config: str, train_data_dir: str):
    from pipeline.training.settings import load_settings
    from train_unet import Run, make_accelerator

    settings = load_settings(config, "--train_data_dir", train_data_dir, "--mixed_precision", "bf16",
                             "--logger", "none")
    run = Run(settings, make_accelerator(settings))
    run.begin()
    batches = iter(run.stream)
    return lambda: run.train_step(next(batches)), settings.optimizer.train_batch_size


def sampling_step(config: str, batch_size: int):
    from pipeline.pipeline_celeba import CelebADiffusionPipeline
    from pipeline.training.build import build_model_and_scheduler
    from pipeline.training.settings import load_settings

    torch.manual_seed(0)
    unet, scheduler = build_model_and_scheduler(load_settings(config))
    pipe = CelebADiffusionPipeline(unet=unet.eval(), scheduler=scheduler)
    denoiser = pipe.vp_denoiser()
    size = unet.config.sample_size
    sample, timesteps = torch.randn(batch_size, 3, size, size), torch.full((batch_size,), 500)

    def step():
        with torch.inference_mode(), pipe.precision("bf16"):
            denoiser(sample, timesteps)

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/celeba64_edm.yaml")
    parser.add_argument("--train_data_dir", default="../shared/celeba")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sample_batch_size", type=int, default=64)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out_dir", default="results/bench")
    cli = parser.parse_args()
    os.chdir(ROOT)
    train, train_batch = training_step(cli.config, cli.train_data_dir)
    result = {"config": cli.config, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_average_start": [round(v, 2) for v in os.getloadavg()]}
    os.makedirs(cli.out_dir, exist_ok=True)
    for name, step, batch, precision in (
            ("train", train, train_batch, "bf16 autocast (accelerate), AdamW + EMA"),
            ("sample", sampling_step(cli.config, cli.sample_batch_size), cli.sample_batch_size,
             "bf16 autocast, inference mode, one UNet evaluation")):
        print(f"profiling {name} ...", flush=True)
        summary, table = profile_steps(step, cli.steps, cli.warmup, cli.rows)
        result[name] = {"batch_size": batch, "precision": precision, **summary}
        with open(os.path.join(cli.out_dir, f"profile_{name}.txt"), "w") as handle:
            handle.write(f"{name} step, batch {batch}, {precision}, {cli.steps} steps profiled\n{table}\n")
        print(table, flush=True)
        for group, value in summary["groups"].items():
            print(f"  {group:24s} {value['share']:6.1%}  {value['self_cpu_s_per_step']:.3f} s/step")
    result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    with open(os.path.join(cli.out_dir, "profile.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    print(f"wrote {cli.out_dir}/profile.json")


if __name__ == "__main__":
    main()
