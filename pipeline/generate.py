"""Generate faces with a saved pipeline: ``python -m pipeline.generate --model PATH --num_images N --out DIR``."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .cli import DEFAULT_DEVICE, ArgumentParser, default_threads, device_argument, run_cli
from .data.images import make_grid, save_pngs
from .pipeline_celeba import MIXED_PRECISION, CelebADiffusionPipeline
from .pipeline_folder import load_pipeline, weights_checksum
from .sampling.sample_store import BatchStore
from .sampling.schedulers import ALL_SAMPLERS, check_steps, default_sampler, get_sampler, scheduler_for
from .sampling.sde import SDESampler

DEFAULT_MODEL = "pretrained/celeba-64"


def sampler_arguments(pipe: CelebADiffusionPipeline, name: str, options: dict | None = None) -> dict:
    """The ``pipe(...)`` arguments that sample with registry sampler ``name``: ``{"scheduler": ...}`` for a diffusers
    scheduler on the model's noise schedule, ``{"sampler": SDESampler(name, options)}`` for a score-SDE sampler;
    ValueError when it does not fit the model."""
    sampler = get_sampler(name)
    sampler.check_model(pipe.config.edm_schedule is not None)
    if sampler.is_scheduler:
        return {"scheduler": scheduler_for(pipe, name)}
    return {"sampler": SDESampler(name, dict(options or {}))}


MIXED_PRECISION_HELP = ("the UNet's precision; default: bf16 autocast on CPUs with native bf16 (AVX512_BF16 or AMX, "
                        "about 2x faster, same quality: results/bench/bf16_paired_kid.json), no elsewhere and for "
                        "ode-rk45")


def parse_sampler_options(values: list[str] | None) -> dict:
    """``["rtol=1e-3", "grid=karras"]`` -> {"rtol": 0.001, "grid": "karras"}: ints and floats where they parse."""
    options = {}
    for value in values or []:
        key, separator, text = value.partition("=")
        if not separator or not key or not text:
            raise ValueError(f"--sampler_option entries look like rtol=1e-3 or grid=karras; got {value!r}")
        for kind in (int, float, str):
            try:
                options[key] = kind(text)
                break
            except ValueError:
                continue
    return options


def parse_attributes(text: str | None) -> dict | None:
    """``"Smiling=1,Eyeglasses=-1"`` -> {"Smiling": 1, "Eyeglasses": -1}; None for None. Names are checked against the
    model's attributes when sampling."""
    if text is None:
        return None
    attributes = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, separator, value = item.partition("=")
        if not separator or value.strip() not in ("1", "-1", "0", "+1"):
            raise ValueError(f"--attributes entries look like Smiling=1 or Eyeglasses=-1; got {item!r}")
        attributes[name.strip()] = int(value)
    if not attributes:
        raise ValueError("--attributes is empty; give e.g. Smiling=1,Eyeglasses=1")
    return attributes


def check_sampling(scheduler: str, mixed_precision: str | None, sampler_options: dict | None = None) -> None:
    """One clear error, before any sampling (and before a long reference computation), for settings that cannot work:
    an unknown sampler, options it does not take (``pipeline.sampling.sde.OPTIONS``), or bf16 for an adaptive solver
    (``Sampler.check_precision``; experiments/rk45_nfe.py measures why)."""
    sampler = get_sampler(scheduler)
    sampler.check_precision(mixed_precision)
    sampler.check_options(sampler_options or {})


def load_for_sampling(model: str, device: str, scheduler: str | None, steps: int | None,
                      mixed_precision: str | None, sampler_options: dict | None = None):
    """Load ``model`` for sampling with ``scheduler`` at ``steps`` steps, each the model's own default
    (``default_sampler``, ``default_num_inference_steps``) where None. A named sampler is checked
    (``check_sampling``) before anything loads, the default one right after.

    Returns:
        (pipeline, sampler name, steps).
    """
    if scheduler is not None:
        check_sampling(scheduler, mixed_precision, sampler_options)
    pipe = load_pipeline(model, device)
    if scheduler is None:
        scheduler = default_sampler(pipe)
        check_sampling(scheduler, mixed_precision, sampler_options)
    return pipe, scheduler, steps or pipe.config.default_num_inference_steps


def open_batch_store(folder: str | os.PathLike, pipe: CelebADiffusionPipeline, scheduler: str, steps: int, seed: int,
                     batch_size: int = 64, eta: float = 0.0, mixed_precision: str | None = None,
                     sampler_options: dict | None = None, attributes: dict | None = None,
                     guidance_scale: float = 1.0, reuse: tuple = ()) -> BatchStore:
    """A ``BatchStore`` for ``generate`` with these arguments: everything that decides a batch's images is its key.
    An EDM sampler runs on the model's own EDM schedule (fixed by training, like the weights), so the saved scheduler
    (``train_scheduler``, which shipping another default replaces) is recorded but not compared. ``reuse``: batch
    folders whose batches of the same settings are taken instead of generated (``BatchStore``)."""
    sampler = get_sampler(scheduler)
    sampler.check_model(pipe.config.edm_schedule is not None)
    mixed_precision = sampler.resolve_mixed_precision(pipe, mixed_precision)
    return BatchStore(folder, {
        "unet_sha256": weights_checksum(pipe.unet), "train_scheduler": dict(pipe.scheduler.config),
        "pixel_unshuffle": pipe.config.pixel_unshuffle, "scheduler": scheduler, "steps": steps, "seed": seed,
        "batch_size": batch_size, "eta": eta, "mixed_precision": mixed_precision, "device": pipe.device.type,
        # only when given, so that batches stored before these settings existed keep their key
        **({"sampler_options": sampler_options} if sampler_options else {}),
        **({"attributes": attributes, "guidance_scale": guidance_scale} if attributes else {})},
        reuse=reuse, ignored=("train_scheduler",) if sampler.edm else ())


def add_resume_arguments(parser, example: str) -> None:
    """Add ``--resume_dir`` and ``--reuse_batches`` (``open_batch_store``'s folder and ``reuse``) to a command that
    samples; ``example`` names a run whose batches this one can reuse. Check them with ``check_resume_arguments``."""
    parser.add_argument("--resume_dir", default=None, help="keep each finished batch of samples here; the same "
                        "command rerun after an interruption continues from the first missing batch, with identical "
                        "results")
    parser.add_argument("--reuse_batches", nargs="*", default=[], metavar="DIR",
                        help=f"with --resume_dir: batch folders of the same settings ({example}) whose batches are "
                             "linked in instead of generated; a folder of other settings is named and skipped")


def check_resume_arguments(args) -> None:
    """Reject ``--reuse_batches`` without ``--resume_dir``, the folder its batches are linked into."""
    if args.reuse_batches and args.resume_dir is None:
        raise ValueError("--reuse_batches links batches into --resume_dir: give --resume_dir too")


def generate(pipe: CelebADiffusionPipeline, num_images: int, scheduler: str, steps: int, seed: int,
             batch_size: int = 64, eta: float = 0.0, progress: bool = True, mixed_precision: str | None = None,
             store: BatchStore | None = None, sampler_options: dict | None = None, attributes: dict | None = None,
             guidance_scale: float = 1.0) -> tuple[np.ndarray, float]:
    """``num_images`` uint8 NHWC images and the measured network evaluations (NFE) per batch.

    Batch ``i`` uses seed ``seed + i`` (a CPU generator, so the initial noise is the same on every device), so results
    do not depend on timing. NFE is counted with a forward hook on the
    UNet, so it is exact for adaptive solvers too. ``mixed_precision`` is the UNet's precision: "bf16" (bf16
    autocast), "no", or None for the default of the pipeline and sampler (``Sampler.resolve_mixed_precision``: bf16
    on CPUs with native bf16, except for adaptive solvers); sampler arithmetic stays fp32.
    ``store`` (``open_batch_store`` with the same arguments) keeps every
    finished batch on disk and reuses those already there, so an interrupted run resumes with identical results.
    ``sampler_options`` go to a score-SDE sampler (e.g. {"rtol": 1e-3, "atol": 1e-3} for ode-rk45).
    ``attributes`` ({"Smiling": 1, ...}) and ``guidance_scale`` ask an attribute model for those attributes."""
    check_sampling(scheduler, mixed_precision, sampler_options)
    pipe.guided_denoiser(attributes, guidance_scale)  # unknown names or no attribute model: fail before sampling
    mixed_precision = get_sampler(scheduler).resolve_mixed_precision(pipe, mixed_precision)
    arguments = sampler_arguments(pipe, scheduler, sampler_options)
    check_steps(scheduler, steps, pipe.scheduler.config.num_train_timesteps)
    # the pipeline's own per-step bar under the batch bar: a batch of DDPM-1000 takes tens of minutes on a CPU
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc="steps of this batch")
    calls = []
    hook = pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    batches, evaluations = [], []
    try:
        for index, start in enumerate(tqdm(range(0, num_images, batch_size), desc=f"{scheduler}-{steps}",
                                           unit="batch", disable=not progress)):
            size = min(batch_size, num_images - start)
            finished = store.load(index, size) if store is not None else None
            if finished is None:
                calls.clear()
                generator = torch.Generator().manual_seed(seed + index)
                images = pipe(batch_size=size, num_inference_steps=steps, generator=generator, eta=eta,
                              output_type="np", attributes=attributes,
                              guidance_scale=guidance_scale, mixed_precision=mixed_precision, **arguments).images
                finished = (images * 255).round().astype(np.uint8), len(calls)
                if store is not None:
                    store.save(index, *finished)
            batches.append(finished[0])
            evaluations.append(finished[1])
    finally:
        hook.remove()
    return np.concatenate(batches), sum(evaluations) / len(evaluations)


def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder (model_index.json, unet/, scheduler/)")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--scheduler", default=None, metavar="NAME",
                        help=f"sampler: {', '.join(ALL_SAMPLERS)} (pipeline/sampling/schedulers.py); default: the "
                             "model's own (its saved scheduler)")
    parser.add_argument("--steps", type=int, default=None,
                        help="number of sampler steps; default: the model's default_num_inference_steps")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=32,
                        help="images per batch (32: the fastest on 2 CPU cores, results/bench/sampling.json)")
    parser.add_argument("--mixed_precision", default=None, choices=MIXED_PRECISION, help=MIXED_PRECISION_HELP)
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE,
                        help="where the UNet runs (default: cuda if available)")
    parser.add_argument("--sampler_option", nargs="*", default=[], metavar="KEY=VALUE",
                        help="options of the score-SDE samplers (pipeline/sampling/sde.py OPTIONS), e.g. rtol=1e-3 "
                             "atol=1e-3 for ode-rk45, snr=0.17 corrector_steps=2 for pc")
    parser.add_argument("--attributes", default=None, metavar="NAME=1,NAME=-1",
                        help="attribute model only: ask for these CelebA attributes (1 present, -1 absent; unnamed "
                             "ones unspecified), e.g. Smiling=1,Eyeglasses=1")
    parser.add_argument("--guidance_scale", type=float, default=1.0,
                        help="classifier-free guidance weight w (0: unconditional, 1: conditional, >1: stronger)")
    parser.add_argument("--out", default="samples")
    parser.add_argument("--upscale", type=int, default=4, help="nearest-neighbour factor of the viewing grid")
    args = parser.parse_args(argv)
    for name in ("num_images", "steps", "batch_size", "upscale"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    options = parse_sampler_options(args.sampler_option)
    attributes = parse_attributes(args.attributes)
    torch.set_num_threads(default_threads())
    pipe, args.scheduler, args.steps = load_for_sampling(args.model, args.device, args.scheduler, args.steps,
                                                         args.mixed_precision, options)
    started = time.perf_counter()
    images, nfe = generate(pipe, args.num_images, args.scheduler, args.steps, args.seed, args.batch_size, args.eta,
                           mixed_precision=args.mixed_precision,
                           sampler_options=options, attributes=attributes, guidance_scale=args.guidance_scale)
    seconds = time.perf_counter() - started
    precision = get_sampler(args.scheduler).resolve_mixed_precision(pipe, args.mixed_precision)
    save_pngs(images, args.out)
    grid = images[:64]
    make_grid(grid).save(os.path.join(args.out, "grid.png"))
    make_grid(grid, upscale=args.upscale).save(os.path.join(args.out, f"grid_x{args.upscale}.png"))
    with open(os.path.join(args.out, "generation.json"), "w") as handle:
        json.dump({"model": args.model, "scheduler": args.scheduler, "sampler_options": options, "steps": args.steps,
                   "nfe": nfe, "eta": args.eta, "attributes": attributes, "guidance_scale": args.guidance_scale,
                   "mixed_precision": precision,
                   "device": pipe.device.type, "seed": args.seed, "num_images": args.num_images,
                   "seconds": round(seconds, 2), "images_per_second": round(args.num_images / seconds, 3)},
                  handle, indent=1)
    print(f"wrote {args.num_images} images and grid.png to {args.out} ({seconds:.1f} s, "
          f"{args.num_images / seconds:.2f} images/s, UNet precision: {precision})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
