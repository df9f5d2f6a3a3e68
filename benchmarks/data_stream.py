"""Is data loading a bottleneck? Stream img/s (decode + crop + resize) vs. train-step img/s of a config.

    python benchmarks/data_stream.py --config configs/celeba64_cpu.yaml --train_data_dir ../shared/celeba

Writes results/bench/data_stream.json: median and min-max of each over repetitions measured in one run, and the
share of a training step that decoding would cost when done in the training process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pipeline.data import TrainStream, load_celeba  # noqa: E402
from pipeline.preprocess import Preprocessing, to_model_range  # noqa: E402
from train_unet import build_model_and_scheduler, diffusion_loss, parse_args  # noqa: E402


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/celeba64_cpu.yaml")
    parser.add_argument("--train_data_dir", default="../shared/celeba")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stream_batches", type=int, default=20)
    parser.add_argument("--out", default="results/bench/data_stream.json")
    cli = parser.parse_args()
    args = parse_args(["--config", cli.config, "--train_data_dir", cli.train_data_dir])
    stream = TrainStream(load_celeba(train_data_dir=cli.train_data_dir),
                         Preprocessing(args.resolution, args.crop_size), args.train_batch_size, seed=0)
    batches = iter(stream)
    next(batches)
    model, noise_scheduler = build_model_and_scheduler(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.mixed_precision == "bf16")

    def train_step(pixels):
        clean = to_model_range(pixels)
        if args.channels_last:
            clean = clean.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = diffusion_loss(model, noise_scheduler, clean, args)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    pixels, _ = next(batches)
    train_step(pixels)  # warm-up
    stream_rates, train_rates = [], []
    for _ in range(cli.repeats):  # interleaved, so both see the same machine load
        started = time.perf_counter()
        for _ in range(cli.stream_batches):
            next(batches)
        stream_rates.append(cli.stream_batches * args.train_batch_size / (time.perf_counter() - started))
        started = time.perf_counter()
        train_step(pixels)
        train_rates.append(args.train_batch_size / (time.perf_counter() - started))
    result = {"config": cli.config, "resolution": args.resolution, "batch_size": args.train_batch_size,
              "mixed_precision": args.mixed_precision, "channels_last": args.channels_last,
              "torch_threads": torch.get_num_threads(),
              "stream_img_per_s": summary(stream_rates), "train_step_img_per_s": summary(train_rates)}
    result["decode_share_of_step"] = (result["train_step_img_per_s"]["median"]
                                      / result["stream_img_per_s"]["median"])
    os.makedirs(os.path.dirname(cli.out), exist_ok=True)
    with open(cli.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
