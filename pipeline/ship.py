"""Make a trained pipeline the shipped one: a folder whose plain ``pipe()`` samples with the chosen sampler.

    python -m pipeline.ship --model RUN_DIR --out pretrained/celeba-64 --sampler edm-dpm++2m --steps 20 --replace

The model is loaded, its scheduler replaced by registry sampler ``--sampler`` (configured exactly as
``pipeline.sampling.schedulers`` configures it, e.g. ``"trailing"`` timesteps) with ``--steps`` as the pipeline's
default step count, and saved in the Hub layout (``pipeline_folder.save_pipeline_folder``). The folder is written
beside ``--out`` and renamed into place only when complete, so an interrupted or failed run leaves ``--out`` as it
was. Write its model card with ``python -m pipeline.model_card``, publish it with ``python -m pipeline.publish``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from .cli import ArgumentParser, run_cli
from .pipeline_folder import load_pipeline, save_pipeline_folder, with_default_sampler
from .sampling.schedulers import DIFFUSERS_SAMPLERS


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
    parser.add_argument("--sampler", required=True, choices=DIFFUSERS_SAMPLERS,
                        help="the sampler of a plain pipe() call")
    parser.add_argument("--steps", type=int, required=True, help="its default number of steps")
    parser.add_argument("--replace", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    out = ship(args.model, args.out, args.sampler, args.steps, args.replace)
    print(f"shipped {args.model} to {out}: a plain pipe() samples with {args.sampler}, {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
