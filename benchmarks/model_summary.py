"""Where the parameters and the FLOPs of a config's UNet2DModel are: per top-level block, at batch 1.

    python benchmarks/model_summary.py --config configs/celeba64_edm.yaml --out results/model_summary.json

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add; convolutions, matmuls and
attention) for one forward pass of one image; a training step costs about 3x that (forward + backward).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.cli import ArgumentParser, run_cli
from pipeline.training.build import build_model_and_scheduler
from pipeline.training.settings import load_settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def block_names(model) -> list[str]:
    """Top-level blocks in the order data flows through them."""
    names = ["conv_in", "time_proj", "time_embedding"]
    names += [f"down_blocks.{i}" for i in range(len(model.down_blocks))] + ["mid_block"]
    names += [f"up_blocks.{i}" for i in range(len(model.up_blocks))] + ["conv_norm_out", "conv_out"]
    return names


def summarize(config: str) -> dict:
    settings = load_settings(config)
    model, _ = build_model_and_scheduler(settings)
    model.eval()
    size, channels = model.config.sample_size, model.config.in_channels
    inputs = (torch.randn(1, channels, size, size), torch.tensor([500]))
    shapes = {}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda module, _inputs, output, name=name: shapes.__setitem__(
            name, list((output[0] if isinstance(output, tuple) else output).shape[1:])))
        for name in block_names(model) if name not in ("time_proj", "time_embedding")]
    with torch.no_grad(), FlopCounterMode(display=False, depth=None) as counter:
        model(*inputs)
    for hook in hooks:
        hook.remove()
    by_module = counter.get_flop_counts()
    total_flops = counter.get_total_flops()
    blocks = []
    for name in block_names(model):
        module = model.get_submodule(name)
        flops = sum(by_module.get(f"UNet2DModel.{name}", {}).values())
        blocks.append({"block": name, "type": type(module).__name__,
                       "parameters": sum(p.numel() for p in module.parameters()),
                       "forward_gflop_per_image": flops / 1e9, "share_of_flops": flops / total_flops,
                       "output_shape": shapes.get(name)})
    return {"config": config, "sample_size": size, "in_channels": channels,
            "pixel_unshuffle": settings.model.pixel_unshuffle,
            "parameters": sum(p.numel() for p in model.parameters()),
            "forward_gflop_per_image": total_flops / 1e9, "training_gflop_per_image_approx": 3 * total_flops / 1e9,
            "counter": "torch.utils.flop_counter.FlopCounterMode, 2 FLOP per multiply-add, batch 1, t = 500",
            "blocks": blocks}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/celeba64_edm.yaml", help="default: the shipped recipe")
    parser.add_argument("--out", default="results/model_summary.json")
    args = parser.parse_args(argv)
    summary = summarize(args.config)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=1)
    print(f"{summary['parameters']:,} parameters, {summary['forward_gflop_per_image']:.2f} GFLOP per forward pass")
    for block in summary["blocks"]:
        print(f"  {block['block']:>16} {block['type']:>22} {block['parameters']:>10,} params "
              f"{block['forward_gflop_per_image']:7.3f} GFLOP ({100 * block['share_of_flops']:4.1f}%) "
              f"-> {block['output_shape']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
