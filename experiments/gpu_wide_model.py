"""The shipped recipe at a larger width, trained for a few minutes on one GPU from a preloaded uint8 tensor.

    python -m experiments.gpu_wide_model pack --train_data_dir ../shared/celeba --out gpu_pack/celeba64_train.npz
    python -m experiments.gpu_wide_model train --pack gpu_pack/celeba64_train.npz --out gpu_run --train_seconds 390
    python -m experiments.gpu_wide_model ship --run gpu_run --out pretrained/celeba-64-gpu
    python -m pipeline.evaluate --model pretrained/celeba-64-gpu --batches gpu_run/samples \
        --train_data_dir ../shared/celeba --out results/gpu/fid2k_edm-dpm++2m-20.json

``pack`` (on the CPU machine) preprocesses the official train-split images present (crop and resize exactly as
training does) and stores them as JPEG (4:4:4, quality 90) in one file small enough to travel to the GPU machine.
``train`` (on the GPU) runs ``configs/celeba64_edm.yaml`` with ``--width`` channels: the same EDM loss, AdamW, EMA,
gradient clipping and warmup-stable-decay schedule as ``train_unet.py``, with bf16 autocast and a larger batch, for a
wall-clock budget: the step count is fixed after timing the first steps so that the cooldown ends inside the
budget. It then rounds the EMA weights to float16 (so they travel in half the bytes and what is shipped is exactly
what was sampled), draws the FID-2k samples with the shipped default sampler as ``pipeline.evaluate`` would (EDM
DPM-Solver++(2M), 20 steps, seed 0, batches of 32, bf16; stored batches, scored on the CPU machine with
``pipeline.evaluate --batches``) and writes its training log. ``ship`` turns the run into a pipeline folder (stored
in float32).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.cli import ArgumentParser, run_cli
from pipeline.data.preprocess import decode_image, preprocess_image, random_hflip, to_model_range
from pipeline.generate import generate, open_batch_store
from pipeline.pipeline_celeba import CelebADiffusionPipeline
from pipeline.pipeline_folder import save_pipeline_folder, weights_checksum, with_default_sampler
from pipeline.training.build import build_model_and_scheduler, build_optimizer_and_ema
from pipeline.training.losses import edm_loss
from pipeline.training.lr_schedules import warmup_stable_decay_factor
from pipeline.training.settings import load_settings

RECIPE = "configs/celeba64_edm.yaml"
SAMPLER, STEPS, SEED, SAMPLE_BATCH, PRECISION = "edm-dpm++2m", 20, 0, 32, "bf16"
WEIGHTS_FILE, CONFIG_FILE, LOG_FILE, SUMMARY_FILE = ("unet_fp16.safetensors", "unet_config.json",
                                                     "training_log.jsonl", "run.json")


def recipe_settings(width: list[int], batch_size: int, seed: int, lr_warmup_steps: int | None = None):
    """The training settings of the recipe with the wider UNet and this batch (and warm-up, when given)."""
    warmup = ("--lr_warmup_steps", str(lr_warmup_steps)) if lr_warmup_steps is not None else ()
    return load_settings(RECIPE, "--block_out_channels", *map(str, width), "--train_batch_size", str(batch_size),
                         "--seed", str(seed), *warmup)


def images_checksum(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


# -------------------------------------------------------------------------------------------------------------- pack
def pack(args) -> None:
    """Preprocess the present official train-split images and store them as JPEG (4:4:4, ``--quality``) in one .npz,
    with the checksum of the decoded images and their PSNR against the lossless preprocessing."""
    from tqdm.auto import tqdm

    from pipeline.data.celeba import IMAGE_DIR, read_official_layout

    prep = recipe_settings(args.width, args.batch_size, 0).data.preprocessing
    layout = read_official_layout(args.train_data_dir)
    names = [name for name, _, _ in layout.records["train"]]
    if not names:
        raise ValueError(f"{args.train_data_dir} holds no train-split images")
    encoded, decoded, squared_error = [], [], 0.0
    for name in tqdm(names, desc="pack", unit="img"):
        pixels = preprocess_image(decode_image((layout.root / IMAGE_DIR / name).read_bytes(), name), prep)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(buffer, "JPEG", quality=args.quality,
                                                                              subsampling=0)
        encoded.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
        decoded.append(decode_pixels(encoded[-1]))
        squared_error += float(((decoded[-1].astype(np.float64) - pixels) ** 2).mean())
    offsets = np.cumsum([0] + [len(item) for item in encoded])
    psnr = 10 * np.log10(255**2 / (squared_error / len(names)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, data=np.concatenate(encoded), offsets=offsets, names=np.array(names),
             preprocessing=json.dumps(prep.to_dict()), quality=args.quality, psnr=psnr,
             sha256=images_checksum(np.stack(decoded)))
    print(f"packed {len(names)} images ({offsets[-1] / 2**20:.1f} MiB, JPEG q{args.quality} 4:4:4, PSNR {psnr:.2f} dB "
          f"against the lossless preprocessing) -> {args.out}")


def decode_pixels(jpeg: np.ndarray) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg.tobytes())).convert("RGB")).transpose(2, 0, 1)


def unpack(path: str) -> tuple[np.ndarray, dict]:
    """The packed images as uint8 NCHW, and what they are (count, JPEG quality, PSNR, whether this machine's decoder
    reproduced the packing machine's pixels)."""
    with np.load(path) as stored:
        data, offsets = stored["data"], stored["offsets"]
        facts = {"quality": int(stored["quality"]), "psnr_db": float(stored["psnr"])}
        expected = str(stored["sha256"])
    images = np.stack([decode_pixels(data[start:end]) for start, end in zip(offsets[:-1], offsets[1:])])
    return images, {"images": len(images), **facts, "decoded_as_packed": images_checksum(images) == expected}


# ------------------------------------------------------------------------------------------------------------- train
def train(args) -> None:
    """Train for ``--train_seconds`` of wall clock, then save float16 EMA weights, FID samples and the log."""
    started = time.monotonic()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = recipe_settings(args.width, args.batch_size, args.seed, args.lr_warmup_steps)
    optim = settings.optimizer
    hardware = f"1 {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "CPU"
    packed, pack_facts = unpack(args.pack)
    images = torch.from_numpy(packed).to(device)
    torch.manual_seed(args.seed)
    model, noise_scheduler = build_model_and_scheduler(settings)
    model.to(device, memory_format=torch.channels_last).train()
    optimizer, ema = build_optimizer_and_ema(model, optim)
    generator = torch.Generator().manual_seed(args.seed)  # data order and flips
    log = open(out / LOG_FILE, "w")
    step, total_steps, epoch_order, position = 0, None, None, 0
    losses, timing_start = [], None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    while total_steps is None or step < total_steps:
        if epoch_order is None or position + args.batch_size > len(images):
            epoch_order, position = torch.randperm(len(images), generator=generator).to(device), 0
        batch = images[epoch_order[position:position + args.batch_size]]
        position += args.batch_size
        clean = to_model_range(random_hflip(batch, generator)).contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = optim.learning_rate * warmup_stable_decay_factor(
                step, optim.lr_warmup_steps, decay_steps(total_steps, args.decay_fraction),
                total_steps or 10**9)
        with autocast:
            loss = edm_loss(model, noise_scheduler, clean, settings.diffusion)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        losses.append(loss.detach())
        step += 1
        if step in (args.timing_from, args.timing_until) and device.type == "cuda":
            torch.cuda.synchronize()
        if step == args.timing_from:
            timing_start = time.monotonic()
        if step == args.timing_until:  # fix the run length so that training ends at the budget
            seconds_per_step = (time.monotonic() - timing_start) / (args.timing_until - args.timing_from)
            remaining = args.train_seconds - (time.monotonic() - started)
            total_steps = step + max(1, int(remaining / seconds_per_step))
            if total_steps <= optim.lr_warmup_steps:
                raise ValueError(f"{total_steps} steps fit the budget, fewer than the {optim.lr_warmup_steps} "
                                 "warm-up steps: give more --train_seconds")
            print(f"{seconds_per_step * 1e3:.1f} ms/step -> {total_steps} steps", flush=True)
        if step % args.log_every == 0 or step == total_steps:
            hours = (time.monotonic() - started) / 3600
            record = {"step": step, "images_seen": step * args.batch_size,
                      "loss": torch.stack(losses).mean().item(), "lr": optimizer.param_groups[0]["lr"],
                      "wall_hours": hours, **({"gpu_hours": hours, "hardware": hardware} if step == total_steps
                                              else {})}
            losses = []
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(json.dumps(record), flush=True)
    log.close()
    train_seconds = time.monotonic() - started
    ema.copy_to(model.parameters())
    with torch.no_grad():
        for parameter in model.parameters():  # what travels and ships: float16 values, kept in float32
            parameter.copy_(parameter.half().float())
    model.eval()
    from safetensors.torch import save_file
    save_file({name: tensor.detach().half().cpu().contiguous() for name, tensor in model.state_dict().items()},
              str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(dict(model.config), indent=1))
    pipe = sampling_pipeline(model, noise_scheduler, settings)
    sampling = {"scheduler": SAMPLER, "steps": STEPS, "seed": SEED, "batch_size": SAMPLE_BATCH,
                "mixed_precision": PRECISION}
    sample_start = time.monotonic()
    generate(pipe, args.num_samples, **sampling, store=open_batch_store(out / "samples", pipe, **sampling),
             progress=False)
    summary = {"recipe": RECIPE, "block_out_channels": args.width, "batch_size": args.batch_size,
               "steps": step, "images_seen": step * args.batch_size, "seed": args.seed,
               "lr_warmup_steps": optim.lr_warmup_steps, "lr_decay_steps": decay_steps(step, args.decay_fraction),
               "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": train_seconds,
               "sample_seconds": time.monotonic() - sample_start, "num_samples": args.num_samples,
               "unet_sha256": weights_checksum(model), "hardware": hardware, "torch": torch.__version__,
               "training_data": {**pack_facts, "source": f"official train-split images, preprocessed as {RECIPE}, "
                                                          "stored as JPEG 4:4:4"}}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)


def decay_steps(total_steps: int | None, fraction: float) -> int:
    """The cooldown's length: ``fraction`` of the run, once its length is known."""
    return max(1, int(fraction * total_steps)) if total_steps else 1


def sampling_pipeline(model, noise_scheduler, settings) -> CelebADiffusionPipeline:
    """The run's pipeline with the shipped default sampler, as ``pipeline.ship`` would save it."""
    pipe = CelebADiffusionPipeline(unet=model, scheduler=noise_scheduler, preprocessing=settings.data.preprocessing
                                   .to_dict())
    return with_default_sampler(pipe, SAMPLER, STEPS)


# -------------------------------------------------------------------------------------------------------------- ship
def ship(args) -> None:
    """The run's float16 EMA weights as a float32 pipeline folder, checked against the checksum of what was sampled."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    run = Path(args.run)
    summary = json.loads((run / SUMMARY_FILE).read_text())
    model = UNet2DModel.from_config(json.loads((run / CONFIG_FILE).read_text()))
    model.load_state_dict({name: tensor.float() for name, tensor in load_file(str(run / WEIGHTS_FILE)).items()})
    if weights_checksum(model) != summary["unet_sha256"]:
        raise ValueError(f"{run / WEIGHTS_FILE} is not the model the run sampled (checksum differs)")
    settings = recipe_settings(summary["block_out_channels"], summary["batch_size"], summary["seed"])
    _, noise_scheduler = build_model_and_scheduler(settings)
    save_pipeline_folder(sampling_pipeline(model.eval(), noise_scheduler, settings), args.out)
    print(f"shipped {run} -> {args.out}")


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="preprocess and store the train images (CPU machine)")
    packing.add_argument("--train_data_dir", required=True)
    packing.add_argument("--out", required=True)
    packing.add_argument("--quality", type=int, default=90, help="JPEG quality: the pack must travel in 64 MiB")
    training = commands.add_parser("train", help="train and sample (GPU machine)")
    training.add_argument("--pack", required=True)
    training.add_argument("--out", required=True)
    training.add_argument("--train_seconds", type=float, default=390.0)
    training.add_argument("--lr_warmup_steps", type=int, default=None, help="default: the recipe's")
    training.add_argument("--decay_fraction", type=float, default=0.2, help="cooldown share of the steps")
    training.add_argument("--num_samples", type=int, default=2000)
    training.add_argument("--device", default="cuda")
    training.add_argument("--timing_from", type=int, default=50)
    training.add_argument("--timing_until", type=int, default=250)
    training.add_argument("--log_every", type=int, default=250)
    shipping = commands.add_parser("ship", help="a pipeline folder of the run (CPU machine)")
    shipping.add_argument("--run", required=True)
    shipping.add_argument("--out", required=True)
    for sub in (packing, training):
        sub.add_argument("--width", type=int, nargs=4, default=[48, 96, 192, 192], help="block_out_channels")
        sub.add_argument("--batch_size", type=int, default=256)
        sub.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train":
        if not 0 < args.timing_from < args.timing_until:
            raise ValueError("--timing_from must be positive and below --timing_until")
        if not 0 < args.decay_fraction < 1:
            raise ValueError("--decay_fraction must be between 0 and 1")
        if not os.path.isfile(args.pack):
            raise FileNotFoundError(f"image pack not found: {args.pack}")
    {"pack": pack, "train": train, "ship": ship}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
