"""Which settings make train_unet.py fast on this CPU? One factor at a time around a reference setting.

    python experiments/train_ablation.py --groups precision_layout optimizer_ema
    python experiments/train_ablation.py --table          # print the Markdown table of everything measured so far

Each group starts one process per variant (the harness of benchmarks/train_throughput.py: spawn, build, warm up),
then interleaves ``--repeats`` rounds of ``--steps`` training steps, so the variants of a group see the same load.
Every variant is the train_unet.py step (TrainStream data, accelerate, EMA, clipping) with the config, the
reference flags ``--reference_flags`` and the one change named by the variant. Groups are stored separately in
results/bench/train_ablation.json (a rerun of a group replaces its entry), with the load average at the start and
end of each group. The speed-up of a variant is the median over rounds of (variant img/s / reference img/s) of the
same round; the first warm-up step shows one-off costs (torch.compile's compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks.train_throughput import (
    ROOT,
    describe_runs,
    interleave,
    load_average,
    paired_ratio,
    start_variants,
    summary,
)

REFERENCE = "--mixed_precision bf16 --no-channels_last --adam_fused --ema_foreach"

# group -> {variant: (extra train_unet flags, extra worker settings)}; the first variant is the group's reference
GROUPS = {
    "precision_layout": {
        "bf16, NCHW": ("", {}),
        "bf16, channels_last": ("--channels_last", {}),
        "fp32, NCHW": ("--mixed_precision no", {}),
        "fp32, channels_last": ("--mixed_precision no --channels_last", {}),
    },
    "optimizer_ema": {
        "AdamW fused, EMA foreach": ("", {}),
        "AdamW per-tensor (PyTorch's CPU default)": ("--no-adam_fused", {"adam_foreach": False}),
        "AdamW foreach": ("--no-adam_fused", {"adam_foreach": True}),
        "EMA per-tensor (diffusers' default)": ("--no-ema_foreach", {}),
    },
    "threads": {
        "2 threads (default), default interop": ("", {}),
        "1 thread": ("", {"threads": 1}),
        "2 threads, 1 interop thread": ("", {"threads": 2, "interop_threads": 1}),
        "2 threads, OMP_WAIT_POLICY=PASSIVE": ("", {"env": {"OMP_WAIT_POLICY": "PASSIVE"}}),
    },
    "attention": {
        "SDPA (AttnProcessor2_0, diffusers' default)": ("", {}),
        "classic AttnProcessor (bmm + softmax)": ("", {"attention": "classic"}),
    },
    "batch_size": {
        "batch 32": ("", {"batch_size": 32}),
        "batch 16": ("", {"batch_size": 16}),
        "batch 64": ("", {"batch_size": 64}),
    },
    "compile_default": {
        "eager": ("", {}),
        "torch.compile (default mode)": ("", {"compile": "default"}),
    },
    "compile_max_autotune": {
        "eager": ("", {}),
        "torch.compile (max-autotune-no-cudagraphs)": ("", {"compile": "max-autotune-no-cudagraphs"}),
    },
    "compile_channels_last": {  # Inductor fuses GroupNorm + SiLU and may pick better layouts for channels_last
        "eager, NCHW": ("", {}),
        "torch.compile + channels_last": ("--channels_last", {"compile": "default"}),
    },
    "architecture": {  # speed only: each variant is a different network, whose quality would need its own run
        "the shipped UNet": ("", {}),
        "attention at 8x8 instead of 16x16": (
            "--down_block_types DownBlock2D DownBlock2D DownBlock2D AttnDownBlock2D "
            "--up_block_types AttnUpBlock2D UpBlock2D UpBlock2D UpBlock2D", {}),
        "16 instead of 32 channels at 64x64": ("--block_out_channels 16 64 128 128", {}),
    },
}


def run_group(group: str, cli) -> dict:
    load_start, started = load_average(), time.time()
    print(f"[{group}] load average {load_start}", flush=True)
    cache = tempfile.mkdtemp(prefix="inductor_cache_")  # cold compile: an empty Inductor cache per group
    base = {"config": cli.config, "train_data_dir": cli.train_data_dir, "warmup": cli.warmup, "recipe": "ours",
            "inductor_cache_dir": cache}
    specs = {name: {**base, "flags": f"{cli.reference_flags} {flags}", **extra}
             for name, (flags, extra) in GROUPS[group].items()}
    variants = start_variants(specs)
    try:
        runs = interleave(variants, "train", cli.steps, cli.repeats)
        stops = {name: variant.stop() for name, variant in variants.items()}
    finally:
        for variant in variants.values():
            if variant.process.is_alive():
                variant.process.kill()
    reference = next(iter(GROUPS[group]))
    entry = {"config": cli.config, "reference": reference, "reference_flags": cli.reference_flags,
             "repeats": cli.repeats,
             "steps_per_round": cli.steps, "load_average_start": load_start, "load_average_end": load_average(),
             "variants": {}}
    for name, variant in variants.items():
        flags, extra = GROUPS[group][name]
        entry["variants"][name] = {
            "flags": flags, "settings": {k: v for k, v in extra.items()}, **describe_runs(runs[name]),
            "speedup_vs_reference": paired_ratio(runs[name], runs[reference]),
            "batch_size": variant.info["batch_size"], "threads": variant.info["threads"],
            "interop_threads": variant.info["interop_threads"], "setup_s": variant.info["setup_s"],
            "warmup_step_s": variant.info["warmup_step_s"], "peak_rss_mib": stops[name]["vm_hwm_kib"] / 1024,
            "final_losses": runs[name][-1]["losses"],
        }
    entry["wall_s"] = time.time() - started
    return entry


def optimizer_micro(cli) -> dict:
    """ms per AdamW.step / EMAModel.step on the config's UNet (all parameters with random gradients), each
    implementation interleaved over ``--micro_rounds`` rounds, and how far fused/foreach AdamW drift from the
    per-tensor update after 20 identical steps (max |difference| of any weight)."""
    import torch
    from diffusers.training_utils import EMAModel

    from benchmarks.train_throughput import ours_settings
    from pipeline.training.build import build_model_and_scheduler

    load_start, started = load_average(), time.time()
    reference = {"config": cli.config, "train_data_dir": cli.train_data_dir, "flags": cli.reference_flags}
    settings = ours_settings(reference)
    models, steps = {}, {}
    for name in ("AdamW per-tensor", "AdamW foreach", "AdamW fused", "EMA per-tensor", "EMA foreach"):
        torch.manual_seed(0)  # identical weights and gradients for every implementation
        model, _ = build_model_and_scheduler(settings)
        torch.manual_seed(1)
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter) * 1e-3
        if name.startswith("AdamW"):
            kind = name.split()[1]
            optimizer = torch.optim.AdamW(model.parameters(), lr=settings.optimizer.learning_rate, weight_decay=1e-6,
                                          foreach=kind == "foreach", fused=kind == "fused" or None)
            steps[name] = optimizer.step
        else:
            ema = EMAModel(model.parameters(), decay=0.9995, use_ema_warmup=True, power=0.75,
                           foreach=name.endswith("foreach"))
            steps[name] = (lambda e=ema, m=model: e.step(m.parameters()))
        models[name] = model
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in range(cli.micro_rounds):
        for name, step in steps.items():
            started_call = time.perf_counter()
            for _ in range(5):
                step()
            times[name].append((time.perf_counter() - started_call) / 5 * 1000)
    reference = dict(models["AdamW per-tensor"].named_parameters())
    drift = {}
    for name in ("AdamW foreach", "AdamW fused"):
        drift[name] = max((p - reference[n]).abs().max().item() for n, p in models[name].named_parameters())
    return {"ms_per_step": {name: summary(v) for name, v in times.items()},
            "params": sum(p.numel() for p in models["AdamW fused"].parameters()),
            "max_abs_weight_difference_vs_per_tensor_after_identical_steps": drift,
            "identical_steps": 1 + 5 * cli.micro_rounds, "rounds": cli.micro_rounds,
            "load_average_start": load_start, "load_average_end": load_average(), "wall_s": time.time() - started}


def markdown_table(results: dict) -> str:
    lines = ["| group | variant | img/s median (min-max) | vs reference, per-round median (min-max) | "
             "first warm-up step s | peak RSS MiB | others' CPU share |", "|---|---|---|---|---|---|---|"]
    for group, entry in results.get("groups", {}).items():
        for name, v in entry["variants"].items():
            s, r = v["img_per_s"], v["speedup_vs_reference"]
            ref = " (ref)" if name == entry["reference"] else ""
            lines.append(f"| {group} | {name}{ref} | {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) | "
                         f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) | {v['warmup_step_s'][0]:.1f} | "
                         f"{v['peak_rss_mib']:.0f} | {v['others_cpu_share']['median']:.2f} |")
    micro = results.get("optimizer_ema_micro")
    if micro:
        lines += ["", "| optimizer / EMA update alone (6.3M params) | ms per step, median (min-max) |", "|---|---|"]
        for name, t in micro["ms_per_step"].items():
            lines.append(f"| {name} | {t['median']:.1f} ({t['min']:.1f}-{t['max']:.1f}) |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/celeba64_edm.yaml")
    parser.add_argument("--train_data_dir", default="../shared/celeba")
    parser.add_argument("--reference_flags", default=REFERENCE)
    parser.add_argument("--groups", nargs="*", default=[], choices=sorted(GROUPS) + ["optimizer_ema_micro"])
    parser.add_argument("--micro_rounds", type=int, default=10, help="rounds of the optimizer_ema_micro group")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=2, help="training steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--table", action="store_true", help="print the Markdown table of the stored results")
    parser.add_argument("--out", default="results/bench/train_ablation.json")
    cli = parser.parse_args()
    os.chdir(ROOT)
    results = {"groups": {}}
    if os.path.isfile(cli.out):
        with open(cli.out) as handle:
            results = json.load(handle)
    for group in cli.groups:
        if group == "optimizer_ema_micro":
            results[group] = optimizer_micro(cli)
        else:
            results["groups"][group] = run_group(group, cli)
        results["groups"] = {g: results["groups"][g] for g in GROUPS if g in results["groups"]}
        os.makedirs(os.path.dirname(cli.out), exist_ok=True)
        with open(cli.out, "w") as handle:
            json.dump(results, handle, indent=1)
        print(f"wrote {cli.out} [{group}]", flush=True)
    print(markdown_table(results))
    if not cli.groups and not cli.table:
        print("(no --groups given: printed the stored results)")


if __name__ == "__main__":
    main()
