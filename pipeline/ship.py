"""Make a trained pipeline the shipped one: a folder whose plain ``pipe()`` samples with the chosen sampler.

    python -m pipeline.ship --model RUN_DIR --out pretrained/celeba-64 --sampler edm-dpm++2m --steps 20 --replace
    python -m pipeline.ship --model RUN_DIR --out pretrained/celeba-64 --from_sweep results/nfe/summary.json --replace

The model is loaded, its scheduler replaced by registry sampler ``--sampler`` (configured exactly as
``pipeline.sampling.schedulers`` configures it, e.g. ``"trailing"`` timesteps) with ``--steps`` as the pipeline's
default step count, and saved in the Hub layout (``pipeline_folder.save_pipeline_folder``). The folder is written
beside ``--out`` and renamed into place only when complete, so an interrupted or failed run leaves ``--out`` as it
was. ``--from_sweep`` takes the sampler and steps from a ``benchmarks/fid_vs_nfe.py`` summary of the same weights
(``choose_default_sampler``). Write its model card with ``python -m pipeline.model_card``, publish it with
``python -m pipeline.publish``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from .cli import ArgumentParser, run_cli
from .pipeline_folder import load_pipeline, save_pipeline_folder, weights_checksum, with_default_sampler
from .sampling.schedulers import DIFFUSERS_SAMPLERS


def choose_default_sampler(points: list[dict], max_nfe: float = 25, tolerance: float = 0.05) -> dict:
    """The sweep point a plain ``pipe()`` should sample with: among the points of at most ``max_nfe`` NFE at the
    sweep's largest sample count, the fastest (fewest NFE, then least generation time) diffusers scheduler whose FID
    is within ``tolerance`` of the lowest FID of any of them; ValueError when none qualifies."""
    largest = max((point["num_samples"] for point in points), default=0)
    cheap = [point for point in points if point["num_samples"] == largest and point["nfe"] <= max_nfe]
    if not cheap:
        raise ValueError(f"the sweep has no point of at most {max_nfe:g} NFE")
    best = min(point["fid"] for point in cheap)
    good = [point for point in cheap
            if point["sampler"] in DIFFUSERS_SAMPLERS and point["fid"] <= (1 + tolerance) * best]
    if not good:
        raise ValueError(f"no diffusers scheduler of at most {max_nfe:g} NFE is within {tolerance:.0%} of the lowest "
                         f"FID {best:.2f}")
    return min(good, key=lambda point: (point["nfe"], point["generation_seconds"]))


def sweep_choice(model: str, summary_path: str | Path, max_nfe: float = 25, tolerance: float = 0.05) -> dict:
    """``choose_default_sampler`` on a ``fid_vs_nfe`` summary, after checking that it measured ``model``'s weights."""
    summary = json.loads(Path(summary_path).read_text())
    checksum = weights_checksum(load_pipeline(model, channels_last=False).unet)
    if summary["protocol"]["unet_sha256"] != checksum:
        raise ValueError(f"{summary_path} measured other weights than {model}'s")
    return choose_default_sampler(summary["points"], max_nfe, tolerance)


def ship(model: str, out: str | Path, sampler: str, steps: int, replace: bool = False) -> Path:
    """Write ``model`` with default sampler ``sampler`` at ``steps`` steps to ``out`` (all or nothing); an existing
    ``out`` is replaced only when ``replace``. Returns ``out``."""
    out = Path(out)
    if out.exists() and not replace:
        raise FileExistsError(f"{out} exists; pass --replace to replace it")
    # a bad sampler or step count fails here, before any writing; the weights are saved as they were stored
    pipe = with_default_sampler(load_pipeline(model, channels_last=False), sampler, steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_pipeline_folder(pipe, staging)
        if out.exists():
            old = out.with_name(f".{out.name}-replaced")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="trained pipeline folder (e.g. a run's output_dir)")
    parser.add_argument("--out", required=True, help="the shipped folder, e.g. pretrained/celeba-64")
    parser.add_argument("--sampler", choices=DIFFUSERS_SAMPLERS, help="the sampler of a plain pipe() call")
    parser.add_argument("--steps", type=int, help="its default number of steps")
    parser.add_argument("--from_sweep", metavar="SUMMARY_JSON",
                        help="instead of --sampler/--steps: the fastest diffusers scheduler of this fid_vs_nfe "
                             "summary (of the same weights) within --tolerance of the lowest FID at <= --max_nfe NFE")
    parser.add_argument("--max_nfe", type=float, default=25)
    parser.add_argument("--tolerance", type=float, default=0.05, help="relative FID tolerance")
    parser.add_argument("--replace", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if (args.from_sweep is None) == (args.sampler is None or args.steps is None):
        raise ValueError("give either --sampler and --steps, or --from_sweep")
    if args.from_sweep:
        point = sweep_choice(args.model, args.from_sweep, args.max_nfe, args.tolerance)
        args.sampler, args.steps = point["sampler"], point["steps"]
        print(f"{args.from_sweep}: {args.sampler} at {args.steps} steps ({point['nfe']:g} NFE, "
              f"{point['label']} {point['fid']:.2f})")
    out = ship(args.model, args.out, args.sampler, args.steps, args.replace)
    print(f"shipped {args.model} to {out}: a plain pipe() samples with {args.sampler}, {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
