"""What does the adaptive RK45 probability-flow ODE solver cost on the trained network, per tolerance and precision?

    python experiments/rk45_nfe.py --model pretrained/celeba-64 --num_images 8      # ~15 min on 2 quiet cores

``ode-rk45`` (pipeline/sampling/sde.py) takes as many network evaluations (NFE) as its error control demands, so its
cost is only known by running it. In float32, for each ``--tolerances`` value (rtol = atol), this records the NFE,
the wall time and the RMS distance, in 8-bit levels, of its images from those of the tightest tolerance (same noise).
Under bf16 autocast, which ``pipeline.generate`` refuses for ode-rk45, each run of ``--bf16_tolerances`` stops after
``--bf16_budget`` evaluations and records how far along the solver's clock l = log sigma_bar it got; budget / fraction
estimates the total, assuming the rest of the path is no harder. The images are the first ``--num_images`` of the FID
protocol's first batch (same seed and noise).
Writes results/bench/rk45_nfe.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from experiments.solver_convergence import rms_levels, summary
from pipeline.cli import DEFAULT_DEVICE, ArgumentParser, device_argument, run_cli
from pipeline.generate import load_pipeline
from pipeline.pipeline_folder import weights_checksum
from pipeline.sampling.sde import VPSDE, SDESampler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BudgetSpent(Exception):
    """Raised from the UNet's forward hook to stop a solve after its evaluation budget."""


def solve(pipe, num_images: int, seed: int, tolerance: float, bf16: bool, budget: int | None) -> dict:
    """One ode-rk45 solve; NFE, seconds, the fraction of the log sigma_bar span covered, and the images if finished."""
    sde = VPSDE(pipe.scheduler.config)
    start, end = math.log(sde.sigma_bar(1.0)), math.log(sde.sigma_bar(sde.t_min))
    labels = []

    def count(_module, args, kwargs, _output):
        labels.append(float((args[1] if len(args) > 1 else kwargs["timestep"]).flatten()[0]))
        if budget is not None and len(labels) >= budget:
            raise BudgetSpent

    hook = pipe.unet.register_forward_hook(count, with_kwargs=True)
    began = time.perf_counter()
    try:
        with torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=bf16):
            images = pipe(batch_size=num_images, generator=torch.Generator().manual_seed(seed),
                          sampler=SDESampler("ode-rk45", {"rtol": tolerance, "atol": tolerance}),
                          output_type="np").images
        images = (images * 255).round().astype("uint8")
    except BudgetSpent:
        images = None
    finally:
        hook.remove()
    reached = math.log(sde.sigma_bar((min(labels) + 1.0) / sde.T))
    fraction = 1.0 if images is not None else (start - reached) / (start - end)
    run = {"precision": "bf16" if bf16 else "fp32", "rtol": tolerance, "atol": tolerance,
           "finished": images is not None, "nfe": len(labels), "seconds": time.perf_counter() - began,
           "log_sigma_bar_fraction": fraction}
    if images is None:
        run["estimated_total_nfe"] = len(labels) / fraction if fraction > 0 else math.inf
    return run | {"images": images}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained/celeba-64")
    parser.add_argument("--num_images", type=int, default=8)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3])
    parser.add_argument("--bf16_tolerances", type=float, nargs="*", default=[1e-5, 1e-3])
    parser.add_argument("--bf16_budget", type=int, default=1000, help="evaluations before a bf16 solve is stopped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
    parser.add_argument("--out", default="results/bench/rk45_nfe.json")
    args = parser.parse_args(argv)
    for name in ("num_images", "bf16_budget"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if min(args.tolerances + args.bf16_tolerances) <= 0:
        raise ValueError("tolerances must be positive")
    pipe = load_pipeline(args.model, args.device)
    pipe.set_progress_bar_config(disable=True)
    jobs = [(tol, False, None) for tol in sorted(args.tolerances)] + [(tol, True, args.bf16_budget)
                                                                      for tol in args.bf16_tolerances]
    runs = []
    for tolerance, bf16, budget in tqdm(jobs, desc="rk45 solves", unit="solve"):
        runs.append(solve(pipe, args.num_images, args.seed, tolerance, bf16, budget))
    tightest = runs[0]["images"]
    for run in runs:
        images = run.pop("images")
        if images is not None:
            run["rms_levels_from_tightest_fp32"] = summary(rms_levels(images, tightest))
    sde = VPSDE(pipe.scheduler.config)
    result = {"model": args.model, "unet_sha256": weights_checksum(pipe.unet), "num_images": args.num_images,
              "seed": args.seed, "device": pipe.device.type, "torch_threads": torch.get_num_threads(),
              "log_sigma_bar_span": [math.log(sde.sigma_bar(1.0)), math.log(sde.sigma_bar(sde.t_min))],
              "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for run in runs:
        extent = (f"{run['rms_levels_from_tightest_fp32']['rms_levels_mean']:.2f} levels from the tightest"
                  if run["finished"] else f"stopped at {run['log_sigma_bar_fraction']:.1%} of the log sigma_bar "
                                          f"span, ~{run['estimated_total_nfe']:.0f} NFE in all")
        print(f"{run['precision']} rtol=atol={run['rtol']:g}: {run['nfe']} NFE, {run['seconds']:.0f} s, {extent}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
