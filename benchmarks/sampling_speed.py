"""Sampling img/s on this CPU: DDIM-50 and DPM-Solver++(2M)-20 at batch 64, bf16 autocast on/off, NCHW/channels_last.

    python benchmarks/sampling_speed.py --samplers ddim          # ~7 min on 2 quiet cores
    python benchmarks/sampling_speed.py --samplers dpm++2m       # ~3 min per round (--repeats)

The pipeline is CelebADiffusionPipeline with the UNet of ``--config`` (celeba64_cpu: 6.3M parameters) and RANDOM
weights (seed 0): speed does not depend on the weights' values. Images are generated with pipeline.generate.generate
(the code path of ``python -m pipeline.generate``), samplers from pipeline/sampling/schedulers.py. Variants:

* fp32 / bf16: ``torch.autocast("cpu", bfloat16)`` around generation or not (weights stay fp32; the scheduler
  arithmetic stays fp32: only convolutions/matmuls run in bf16);
* NCHW / channels_last: ``unet.to(memory_format=torch.channels_last)``.

For every sampler the variants take turns (``--repeats`` rounds, rotating order) in one process. Recorded per
variant: img/s of each whole run (batch / wall time; median and min-max over rounds), the time of every UNet call
(forward hooks; median and min-max over all calls: a robust per-step figure on a shared machine), the
scheduler/pipeline overhead (wall time minus UNet time), the speed-up vs fp32 NCHW (per-round ratios), and how far
the bf16 images are from the fp32 ones (same seed; mean and max |difference| in [0, 1] units). Results of each
sampler are stored under its name in results/bench/sampling.json (a rerun replaces that sampler's entry), with
the load average at the start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from pipeline import CelebADiffusionPipeline
from pipeline.generate import generate
from pipeline.training.build import build_model_and_scheduler
from pipeline.training.settings import load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = {"ddim": 50, "dpm++2m": 20}
VARIANTS = {"fp32, NCHW": (False, False), "fp32, channels_last": (False, True),
            "bf16, NCHW": (True, False), "bf16, channels_last": (True, True)}


def summary(values):
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def build_pipelines(config: str, variants):
    settings = load_settings(config, "--no-channels_last")
    torch.manual_seed(0)
    unet, scheduler = build_model_and_scheduler(settings)
    unet.eval()
    pipes = {}
    for name in variants:
        _, channels_last = VARIANTS[name]
        model, _ = build_model_and_scheduler(settings)
        model.load_state_dict(unet.state_dict())
        model.eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        pipe = CelebADiffusionPipeline(unet=model, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        calls = []
        model.register_forward_pre_hook(lambda module, inputs, calls=calls: calls.append([time.perf_counter()]))
        model.register_forward_hook(lambda module, inputs, output, calls=calls: calls[-1].append(time.perf_counter()))
        pipes[name] = (pipe, calls)
    return pipes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/celeba64_cpu.yaml")
    parser.add_argument("--samplers", nargs="+", default=["ddim", "dpm++2m"], choices=sorted(STEPS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="whole runs per variant and sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/bench/sampling.json")
    cli = parser.parse_args()
    os.chdir(ROOT)
    results = {}
    if os.path.isfile(cli.out):
        with open(cli.out) as handle:
            results = json.load(handle)
    results.update({"config": cli.config, "weights": "random (seed 0): speed only", "batch_size": cli.batch_size,
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()})
    results.setdefault("samplers", {})
    pipes = build_pipelines(cli.config, cli.variants)
    for pipe, _ in pipes.values():  # warm-up: one UNet call per variant (oneDNN primitive creation)
        for bf16 in (False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                generate(pipe, 2, "ddim", 1, cli.seed, batch_size=2, progress=False)
    for sampler in cli.samplers:
        steps, load_start, started = STEPS[sampler], [round(v, 2) for v in os.getloadavg()], time.time()
        print(f"[{sampler}-{steps}] load average {load_start}", flush=True)
        names = list(cli.variants)
        runs = {name: [] for name in names}
        unet_times = {name: [] for name in names}
        images = {}
        for round_index in range(cli.repeats):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                pipe, calls = pipes[name]
                bf16, _ = VARIANTS[name]
                calls.clear()
                wall = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    images[name], nfe = generate(pipe, cli.batch_size, sampler, steps, cli.seed,
                                                 batch_size=cli.batch_size, progress=False)
                wall = time.perf_counter() - wall
                unet = [end - begin for begin, end in calls]
                unet_times[name].extend(unet)
                runs[name].append({"wall_s": wall, "img_per_s": cli.batch_size / wall, "unet_calls": len(unet),
                                   "nfe": nfe, "overhead_s": wall - sum(unet)})
                print(f"  round {round_index + 1}: {name}: {cli.batch_size / wall:.2f} img/s ({wall:.1f} s, "
                      f"{len(unet)} UNet calls, median {statistics.median(unet):.2f} s)", flush=True)
        reference = names[0]
        entry = {"steps": steps, "repeats": cli.repeats, "load_average_start": load_start, "variants": {}}
        for name in names:
            per_call = summary(unet_times[name])
            entry["variants"][name] = {
                "img_per_s": summary(r["img_per_s"] for r in runs[name]),
                "unet_call_s": per_call,
                "img_per_s_from_median_unet_call": cli.batch_size / (steps * per_call["median"]),
                "overhead_s": summary(r["overhead_s"] for r in runs[name]), "nfe": runs[name][0]["nfe"],
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
        os.makedirs(os.path.dirname(cli.out), exist_ok=True)
        with open(cli.out, "w") as handle:
            json.dump(results, handle, indent=1)
        print(f"{sampler}-{steps}, batch {cli.batch_size}:")
        for name, v in entry["variants"].items():
            s, u = v["img_per_s"], v["unet_call_s"]
            ratio = v["speedup_vs_" + reference.replace(", ", "_")]["median"]
            print(f"  {name:22s} {s['median']:6.2f} img/s (min {s['min']:.2f}, max {s['max']:.2f}); UNet call "
                  f"{u['median']:.2f} s ({u['min']:.2f}-{u['max']:.2f}); {ratio:.2f}x vs {reference}")
    print(f"wrote {cli.out}")


if __name__ == "__main__":
    main()
