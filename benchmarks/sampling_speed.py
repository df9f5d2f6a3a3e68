"""Sampling img/s on this CPU: precision, memory format, compilation and batch size, at batch 64 by default.

    python benchmarks/sampling_speed.py --samplers dpm++2m          # ~10 min on 2 quiet cores
    python benchmarks/sampling_speed.py --samplers --variants "bf16, channels_last" --batch_sizes 8 16 32 64

The pipeline is CelebADiffusionPipeline with the UNet of ``--config`` (the shipped celeba64_edm: 6.3M parameters) and
RANDOM weights (seed 0): speed does not depend on the weights' values. Images are generated with
pipeline.generate.generate (the code path of ``python -m pipeline.generate``), samplers from the registry. Variants:

* fp32 / bf16: ``mixed_precision`` "no" or "bf16" (bf16 autocast around the UNet; the sampler arithmetic stays fp32);
* NCHW / channels_last: ``unet.to(memory_format=torch.channels_last)``;
* compiled: ``torch.compile`` (Inductor with weight freezing, i.e. inference-mode constant folding); its compilation
  time is recorded separately;
* batch 32: the same ``--batch_size`` images generated in batches of 32 (``pipeline.generate``'s default).

For every sampler the variants take turns (``--repeats`` rounds, rotating order) in one process. Recorded per
variant: img/s of each whole run (median and min-max over rounds), the time of every UNet call (median and min-max),
the scheduler/pipeline overhead (wall time minus UNet time), the speed-up vs fp32 NCHW (per-round ratios), and how far
its images are from the fp32 ones (same seed; mean and max |difference| in [0, 1] units). ``--batch_sizes`` adds a
sweep of one variant (``--sweep_variant``, default the fastest) over batch sizes, in interleaved rounds of
``--batch_size`` images each (with no ``--samplers``, only the sweep runs and replaces its entry). Achieved GFLOP/s
(UNet FLOPs per image x NFE x img/s) is compared with this CPU's measured GEMM rate (benchmarks/cpu_ceiling.py). Each
sampler's results are stored under its name in results/bench/sampling.json (a rerun replaces that entry), with the load
average at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from benchmarks.cpu_ceiling import cpu_identity, gemm_ceiling, share_of
from pipeline import CelebADiffusionPipeline
from pipeline.generate import generate
from pipeline.training.build import build_model_and_scheduler
from pipeline.training.settings import load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = {"ddim": 50, "dpm++2m": 20}
VARIANTS = {  # name: (bf16, channels_last, compiled, batch size or None for --batch_size)
    "fp32, NCHW": (False, False, False, None), "fp32, channels_last": (False, True, False, None),
    "bf16, NCHW": (True, False, False, None), "bf16, channels_last": (True, True, False, None),
    "bf16, channels_last, batch 32": (True, True, False, 32),
    "bf16, channels_last, compiled": (True, True, True, None),
}


def summary(values):
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def build_pipelines(config: str, variants, seed: int):
    """One pipeline per variant, all with the same random weights; compiled variants are compiled by their warm-up."""
    settings = load_settings(config, "--no-channels_last")
    torch.manual_seed(seed)
    unet, scheduler = build_model_and_scheduler(settings)
    pipes = {}
    for name in variants:
        _, channels_last, compiled, _ = VARIANTS[name]
        model, _ = build_model_and_scheduler(settings)
        model.load_state_dict(unet.state_dict())
        model.eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        pipe = CelebADiffusionPipeline(unet=model, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        if compiled:
            torch._inductor.config.freezing = True
            pipe.unet = torch.compile(model, dynamic=False)
        calls = []
        pipe.unet.register_forward_pre_hook(lambda module, inputs, calls=calls: calls.append([time.perf_counter()]))
        pipe.unet.register_forward_hook(
            lambda module, inputs, output, calls=calls: calls[-1].append(time.perf_counter()))
        pipes[name] = (pipe, calls)
    return pipes


def precision(name: str) -> str:
    return "bf16" if VARIANTS[name][0] else "no"


def unet_flops_per_image(pipe, batch_size: int = 4) -> float:
    """FLOPs of one UNet evaluation per image (convolutions and matmuls, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = pipe.unet.config.sample_size
    sample, timesteps = torch.randn(batch_size, 3, size, size), torch.full((batch_size,), 500)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        pipe.unet(sample, timesteps)
    return counter.get_total_flops() / batch_size


def time_generation(pipe, calls, name, sampler, steps, num_images, seed, batch_size=None):
    """(images, record) of one timed generation of ``num_images`` at ``batch_size`` (default: one batch)."""
    calls.clear()
    wall = time.perf_counter()
    images, nfe = generate(pipe, num_images, sampler, steps, seed, batch_size=batch_size or num_images,
                           progress=False, mixed_precision=precision(name))
    wall = time.perf_counter() - wall
    unet = [end - begin for begin, end in calls]
    return images, {"wall_s": wall, "img_per_s": num_images / wall, "unet_calls": len(unet), "unet_s": unet,
                    "nfe": nfe, "overhead_s": wall - sum(unet)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/celeba64_edm.yaml")
    parser.add_argument("--samplers", nargs="*", default=["dpm++2m"], choices=sorted(STEPS),
                        help="samplers whose variants are compared (none: only the batch sweep)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batch_sizes", type=int, nargs="*", default=[],
                        help="also sweep these batch sizes with one variant (first sampler)")
    parser.add_argument("--sweep_variant", default=None, choices=list(VARIANTS),
                        help="the variant of the batch-size sweep (default: the fastest)")
    parser.add_argument("--sweep_sampler", default="dpm++2m", choices=sorted(STEPS))
    parser.add_argument("--repeats", type=int, default=1, help="whole runs per variant and sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/bench/sampling.json")
    cli = parser.parse_args()
    os.chdir(ROOT)
    results = {}
    if os.path.isfile(cli.out):
        with open(cli.out) as handle:
            results = json.load(handle)
    results.update({"config": cli.config, "weights": f"random (seed {cli.seed}): speed only",
                    "batch_size": cli.batch_size, "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "cpu": cpu_identity()})
    results.setdefault("samplers", {})
    pipes = build_pipelines(cli.config, cli.variants, cli.seed)
    warmup_s = {}
    for name, (pipe, _) in pipes.items():  # oneDNN primitive creation; a compiled variant compiles here
        started = time.perf_counter()
        generate(pipe, cli.batch_size, "ddim", 1, cli.seed, batch_size=VARIANTS[name][3] or cli.batch_size,
                 progress=False, mixed_precision=precision(name))
        warmup_s[name] = time.perf_counter() - started
        print(f"  warm-up {name}: {warmup_s[name]:.1f} s", flush=True)
    flops = unet_flops_per_image(next(iter(pipes.values()))[0])
    ceiling = {"gemm_fp32_gflops": gemm_ceiling("float32"), "gemm_bf16_gflops": gemm_ceiling("bfloat16")}
    results.update({"unet_gflop_per_image": flops / 1e9, "cpu_ceiling": ceiling})
    reference = "fp32, NCHW" if "fp32, NCHW" in pipes else next(iter(pipes))
    for sampler in cli.samplers:
        steps, load_start, started = STEPS[sampler], [round(v, 2) for v in os.getloadavg()], time.time()
        print(f"[{sampler}-{steps}] load average {load_start}", flush=True)
        names = list(pipes)
        runs, images = {name: [] for name in names}, {}
        for round_index in range(cli.repeats):
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:
                images[name], record = time_generation(*pipes[name], name, sampler, steps, cli.batch_size, cli.seed,
                                                       VARIANTS[name][3])
                runs[name].append(record)
                print(f"  round {round_index + 1}: {name}: {record['img_per_s']:.2f} img/s ({record['wall_s']:.1f} s, "
                      f"{record['unet_calls']} UNet calls, median {statistics.median(record['unet_s']):.2f} s)",
                      flush=True)
        entry = {"steps": steps, "repeats": cli.repeats, "load_average_start": load_start, "variants": {}}
        for name in names:
            per_call = summary(s for r in runs[name] for s in r["unet_s"])
            img_s = summary(r["img_per_s"] for r in runs[name])
            gflops = flops * runs[name][0]["nfe"] * img_s["median"] / 1e9
            bf16 = VARIANTS[name][0]
            entry["variants"][name] = {
                "img_per_s": img_s, "unet_call_s": per_call,
                "overhead_s": summary(r["overhead_s"] for r in runs[name]), "nfe": runs[name][0]["nfe"],
                "warmup_s": warmup_s[name], "achieved_gflops": gflops,
                "fraction_of_gemm_ceiling": share_of(gflops, ceiling[f"gemm_{'bf16' if bf16 else 'fp32'}_gflops"]),
                "speedup_vs_" + reference.replace(", ", "_"): summary(
                    r["img_per_s"] / q["img_per_s"] for r, q in zip(runs[name], runs[reference])),
                "per_run_img_per_s": [round(r["img_per_s"], 3) for r in runs[name]],
            }
            if name != reference:
                difference = np.abs(images[name].astype(np.float64) - images[reference].astype(np.float64)) / 255
                entry["variants"][name]["image_difference_vs_" + reference.replace(", ", "_")] = {
                    "mean_abs": float(difference.mean()), "max_abs": float(difference.max())}
        entry["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        entry["wall_s"] = time.time() - started
        results["samplers"][sampler] = entry
        print(f"{sampler}-{steps}, batch {cli.batch_size}:")
        for name, v in entry["variants"].items():
            s, u = v["img_per_s"], v["unet_call_s"]
            ratio = v["speedup_vs_" + reference.replace(", ", "_")]["median"]
            share = v["fraction_of_gemm_ceiling"]
            print(f"  {name:30s} {s['median']:6.2f} img/s (min {s['min']:.2f}, max {s['max']:.2f}); UNet call "
                  f"{u['median']:.2f} s ({u['min']:.2f}-{u['max']:.2f}); {ratio:.2f}x vs {reference}; "
                  f"{v['achieved_gflops']:.0f} GFLOP/s" + (f" = {share:.0%} of the GEMM rate" if share else ""))
        write(results, cli.out)
    if cli.batch_sizes:
        batch_sweep(results, pipes, cli)
        write(results, cli.out)
    print(f"wrote {cli.out}")


def batch_sweep(results: dict, pipes: dict, cli) -> None:
    """img/s of one variant at each of ``cli.batch_sizes``: ``cli.batch_size`` images per run, ``cli.repeats`` rounds
    in a rotating order of batch sizes; the variant is ``--sweep_variant`` or the fastest one just measured."""
    sampler = cli.sweep_sampler
    if cli.sweep_variant:
        variant = cli.sweep_variant
    else:
        speed = {name: v["img_per_s"]["median"] for name, v in results["samplers"][sampler]["variants"].items()}
        variant = max(speed, key=speed.get)
    pipe, calls = pipes[variant]
    for size in cli.batch_sizes:  # warm-up at every size (oneDNN primitives, recompilation)
        generate(pipe, size, "ddim", 1, cli.seed, batch_size=size, progress=False, mixed_precision=precision(variant))
    runs = {size: [] for size in cli.batch_sizes}
    for round_index in range(cli.repeats):
        sizes = cli.batch_sizes[round_index % len(cli.batch_sizes):] + cli.batch_sizes[:round_index % len(
            cli.batch_sizes)]
        for size in sizes:
            _, record = time_generation(pipe, calls, variant, sampler, STEPS[sampler], cli.batch_size, cli.seed, size)
            runs[size].append(record["img_per_s"])
            print(f"  round {round_index + 1}: batch {size:4d}: {record['img_per_s']:.2f} img/s ({variant})",
                  flush=True)
    results["batch_sweep"] = {"sampler": sampler, "steps": STEPS[sampler], "variant": variant,
                              "images_per_run": cli.batch_size, "repeats": cli.repeats,
                              "img_per_s": {str(size): summary(values) for size, values in runs.items()}}


def write(results: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
