"""FID against the number of network evaluations (NFE) for every sampler, on one trained pipeline.

    python benchmarks/fid_vs_nfe.py --model pretrained/celeba-64 --train_data_dir ../shared/celeba --num_samples 2000

Each (sampler, steps, N) point is one ``pipeline.evaluate`` run, written to ``results/nfe/<sampler>-<steps>_n<N>.json``
(``ode-rk45,rtol=0.001,atol=0.001:1``: with score-SDE sampler options, as ``pipeline.evaluate --sampler_option``
takes them).
A point whose JSON already exists for the same weights (SHA-256 of the UNet file), seed and precision is reused, so
the sweep can be spread over several working sessions: on 2 cores the UNet of configs/celeba64_cpu.yaml manages
~44 image-NFE/s in bf16, so 2,000 samples cost ~45 s per NFE (DDPM-1000: 12 h). ``--points ddim:10,20 dpm++2m:20``
restricts the grid; expensive points can be run with a smaller ``--num_samples`` (KID is unbiased in N, FID is not,
so compare small-N points by KID). ``ode-rk45`` points run the UNet in float32 whatever ``--mixed_precision`` says
(its adaptive step-size control cannot work with bf16 outputs: ``Sampler.full_precision``); each point's JSON
records its precision. With ``--resume_dir DIR`` each point keeps its finished batches in
``DIR/<sampler>-<steps>_n<N>/``, so even a point longer than a session resumes exactly. Points run cheapest first.
Then ``results/nfe/summary.json`` (every point measured on these weights, with its N) and
``results/nfe/fid_vs_nfe.png`` (vs NFE, log x: FID of the points at the largest N, KID of all).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pipeline import evaluate
from pipeline.cli import DEFAULT_DEVICE, ArgumentParser, device_argument, run_cli
from pipeline.evaluation.plots import PALETTE, line_chart
from pipeline.evaluation.results_tables import unet_precision
from pipeline.generate import MIXED_PRECISION_HELP, check_sampling, load_pipeline, parse_sampler_options
from pipeline.pipeline_celeba import MIXED_PRECISION, default_mixed_precision
from pipeline.pipeline_folder import weights_checksum
from pipeline.sampling.schedulers import ALL_SAMPLERS, get_sampler

# The grid of the samplers issue: DDPM 1000; DDIM 10/20/50/100 (exact ODE and with x0 clipping); DPM-Solver++
# 10/15/20/25; Heun with 18 steps (2 x 18 - 1 = 35 NFE); predictor-corrector (2 NFE per step); adaptive RK45 (steps
# unused: NFE is measured).
GRID = {"ddim": [10, 20, 50, 100], "ddim-clip": [10, 20, 50, 100], "dpm++2m": [10, 15, 20, 25], "heun": [18],
        "ode-rk45": [1], "pc": [500], "ddpm": [1000]}
# added for a model trained with EDM preconditioning: diffusers' EDM samplers on Karras sigmas
EDM_GRID = {"edm-euler": [20, 25], "edm-dpm++2m": [10, 15, 20, 25], "edm-dpm++2m-sde": [20, 25]}
# ode-rk45: measured on the instance-norm model at rtol = atol = 1e-5 in float32
# (results/instance-norm-model/bench/rk45_nfe.json)
APPROXIMATE_NFE = {"heun": lambda steps: 2 * steps - 1, "pc": lambda steps: 2 * steps, "ode-rk45": lambda _: 750}


def split_point_name(name: str) -> tuple[str, dict]:
    """``"ode-rk45,rtol=1e-3"`` -> ("ode-rk45", {"rtol": 0.001}): sampler and sampler options."""
    sampler, *options = name.split(",")
    return sampler, parse_sampler_options(options)


def point_name(sampler: str, options: dict) -> str:
    """The canonical name of a point (options sorted, numbers as Python prints them): file names and plot labels."""
    return sampler + "".join(f",{key}={value}" for key, value in sorted(options.items()))


def parse_points(values: list[str] | None, mixed_precision: str = "bf16", edm: bool = False
                 ) -> list[tuple[str, int]]:
    """``["ddim:10,20", "pc:500"]`` -> [("ddim", 10), ("ddim", 20), ("pc", 500)]; None -> the whole GRID (with
    ``edm``, the model is EDM-trained: EDM_GRID too).

    A sampler name may be followed by ``,KEY=VALUE`` options of a score-SDE sampler
    (``ode-rk45,rtol=1e-3,atol=1e-3:1``), checked here."""
    grid = ({**GRID, **(EDM_GRID if edm else {})}) if not values else {}
    for value in values or []:
        name, _, steps = value.partition(":")
        sampler, options = split_point_name(name)
        if sampler not in ALL_SAMPLERS or not steps:
            raise ValueError(f"--points entries look like ddim:10,20 or ode-rk45,rtol=1e-3:1 with a "
                             f"sampler of {list(ALL_SAMPLERS)}; got {value!r}")
        check_sampling(sampler, point_precision(sampler, mixed_precision), options)
        grid[point_name(sampler, options)] = [int(s) for s in steps.split(",")]
    points = [(name, steps) for name, all_steps in grid.items() for steps in all_steps]
    return sorted(points, key=lambda p: APPROXIMATE_NFE.get(split_point_name(p[0])[0], lambda s: s)(p[1]))


POINT_FILE = re.compile(r".+-\d+_n\d+\.json")  # <point name>-<steps>_n<N>.json, as main() names each point


def point_precision(name: str, mixed_precision: str) -> str:
    """The sweep's precision, except float32 ("no") for the samplers that cannot run in bf16."""
    sampler = split_point_name(name)[0]
    return "no" if sampler in ALL_SAMPLERS and get_sampler(sampler).full_precision else mixed_precision


# what a point file that does not record a protocol key was measured with
PROTOCOL_DEFAULTS = {"batch_size": 64}


def measured_under(path: Path, protocol: dict) -> bool:
    """Whether ``path`` is a point file measured on these weights with this seed, batch size and precision (other
    JSONs in the folder, such as summary.json, are not points)."""
    if not path.is_file() or not POINT_FILE.fullmatch(path.name):
        return False
    result = json.loads(path.read_text())
    expected = {**protocol, "mixed_precision": point_precision(result.get("sampler", ""), protocol["mixed_precision"])}
    return all(result.get(key, PROTOCOL_DEFAULTS.get(key)) == value for key, value in expected.items())


def panel_points(summary: list[dict]) -> dict[str, dict[str, list[tuple[float, float, int]]]]:
    """{"fid": {sampler: [(NFE, FID, N), ...]}, "kid_mean": {...}}, one value per (sampler, steps): the one with the
    most samples. FID only at the sweep's largest N, since it is biased upwards at small N and a point measured on
    fewer samples would look worse than it is; KID, unbiased in N, at whatever N a point has."""
    best = {}
    for row in summary:
        key = (row["sampler"], row["steps"])
        if key not in best or row["num_samples"] > best[key]["num_samples"]:
            best[key] = row
    largest = max(row["num_samples"] for row in summary)
    panels = {"fid": {}, "kid_mean": {}}
    for row in sorted(best.values(), key=lambda r: (r["sampler"], r["nfe"])):
        for metric, points in panels.items():
            if metric == "kid_mean" or row["num_samples"] == largest:
                points.setdefault(row["sampler"], []).append((row["nfe"], row[metric], row["num_samples"]))
    return panels


def plot(summary: list[dict], path: Path, title: str) -> None:
    """Two panels over NFE (log scale): FID (largest N only) and KID, one colour per sampler (``panel_points``); lines
    join the points at the largest N, so a point measured on fewer samples stands apart as a lone marker."""
    samplers = sorted({row["sampler"] for row in summary})
    if len(samplers) > len(PALETTE):  # lines are keyed by colour: two samplers must never share one
        raise ValueError(f"{len(samplers)} samplers in the summary but {len(PALETTE)} colours: "
                         "sweep fewer samplers per --out_dir")
    colors = dict(zip(samplers, PALETTE))
    largest = max(row["num_samples"] for row in summary)
    panels = []
    for metric, points in panel_points(summary).items():
        label = {"fid": f"FID at N = {largest} (lower is better; biased upwards at small N)",
                 "kid_mean": f"KID at each point's N (lower is better; unbiased in N); lone markers: N < {largest}"
                 }[metric]
        lines = {colors[name]: [(nfe, value) for nfe, value, n in values if n == largest]
                 for name, values in points.items()}
        panels.append({"lines": {color: ([x for x, _ in p], [y for _, y in p], 2) for color, p in lines.items()},
                       "markers": {colors[name]: [(nfe, value) for nfe, value, _ in values]
                                   for name, values in points.items()},
                       "y_label": label})
    nfes = [row["nfe"] for row in summary]
    line_chart(str(path), title, "network evaluations per sample (NFE, log scale)", panels, colors,
               min_x=min(nfes) / 1.2, max_x=max(nfes) * 1.2, log_x=True)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pretrained/celeba-64")
    parser.add_argument("--train_data_dir", required=True, help="CelebA in the official layout (the reference)")
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mixed_precision", default=None, choices=MIXED_PRECISION, help=MIXED_PRECISION_HELP)
    parser.add_argument("--batch_size", type=int, default=64,
                        help="generation batch; it decides which seed draws which sample, so points compare only at "
                             "one batch size (32 is faster on 2 CPU cores: results/bench/sampling.json)")
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE,
                        help="where the UNet and Inception run (recorded per point; a point measured on another "
                             "device with the same weights, seed and precision is reused)")
    parser.add_argument("--points", nargs="*", default=None, help="e.g. ddim:10,20 dpm++2m:20 (default: full grid)")
    parser.add_argument("--out_dir", default="results/nfe")
    parser.add_argument("--resume_dir", default=None, help="keep each point's finished sample batches under this "
                        "folder (pipeline.evaluate --resume_dir), so an interrupted point continues where it stopped")
    args = parser.parse_args(argv)
    args.mixed_precision = args.mixed_precision or default_mixed_precision(args.device)
    pipe = load_pipeline(args.model)
    edm = pipe.config.edm_schedule is not None
    points = parse_points(args.points, args.mixed_precision, edm)  # bad input fails before anything is written
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = {"seed": args.seed, "batch_size": args.batch_size, "mixed_precision": args.mixed_precision,
                "unet_sha256": weights_checksum(pipe.unet)}
    for name, steps in points:
        path = out_dir / f"{name}-{steps}_n{args.num_samples}.json"
        if measured_under(path, protocol):
            print(f"{path}: reused")
            continue
        sampler, options = split_point_name(name)
        resume = ["--resume_dir", str(Path(args.resume_dir) / path.stem)] if args.resume_dir else []
        sampler_options = (["--sampler_option", *(f"{key}={value}" for key, value in options.items())] if options
                           else [])
        evaluate.main([*resume, *sampler_options, "--model", args.model, "--train_data_dir", args.train_data_dir,
                       "--num_samples", str(args.num_samples), "--scheduler", sampler, "--steps", str(steps),
                       "--seed", str(args.seed), "--batch_size", str(args.batch_size),
                       "--mixed_precision", point_precision(name, args.mixed_precision),
                       "--device", args.device, "--out", str(path)])
        result = json.loads(path.read_text())
        # the point's name (with its options) as its sampler, so that tables and plots keep them apart
        path.write_text(json.dumps({**result, "sampler": name, "unet_sha256": protocol["unet_sha256"]}, indent=1))
    rows = []
    for path in filter(lambda p: measured_under(p, protocol), sorted(out_dir.glob("*.json"))):
        result = json.loads(path.read_text())
        rows.append({key: result[key] for key in ("label", "num_samples", "sampler", "steps", "nfe", "fid", "kid_mean",
                                                  "kid_std", "precision", "recall", "generation_seconds",
                                                  "mixed_precision")}
                    # points before --device ran on the CPU; before kid_generated_se, it was not recorded
                    | {"device": result.get("device", "cpu"), "kid_generated_se": result.get("kid_generated_se"),
                       "file": str(path)})
    rows.sort(key=lambda row: (row["sampler"], row["nfe"], row["num_samples"]))
    first = json.loads(Path(rows[0]["file"]).read_text())
    summary = {"protocol": {**protocol, "model": args.model, "reference": first["reference"],
                            "resolution": first["resolution"]}, "points": rows}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(rows, out_dir / "fid_vs_nfe.png",
         f"FID and KID vs NFE ({args.model}, {unet_precision(args.mixed_precision)} UNet, reference "
         f"{first['reference']['num_images']} train images; N per point in summary.json)")
    for row in rows:
        print(f"{row['sampler']:>9} {row['steps']:>5} steps {row['nfe']:>7.1f} NFE  {row['label']} {row['fid']:.2f}"
              f"  KID {1e3 * row['kid_mean']:.2f}e-3")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
