"""Edit real faces with the unconditional model: inpaint, colorize, interpolate (``pipeline.sampling.editing``).

    python -m pipeline.edit inpaint --image face.jpg --mask center --method repaint --out edits/inpaint
    python -m pipeline.edit inpaint --celeba ../shared/celeba --split test --num_images 8 --mask eyes --out edits/eyes
    python -m pipeline.edit colorize --image faces/ --out edits/colour
    python -m pipeline.edit interpolate --image a.jpg b.jpg --frames 8 --out edits/morph

Inputs are square faces at the model's resolution, or CelebA's aligned 178x218 images (cropped and resized as in
training); ``--celeba DIR --split {valid,test}`` takes held-out faces. Each command writes one PNG per result, a grid
(inputs, what the model saw, results; for interpolation the strip) and edit.json with the settings, the network
evaluations, the seconds and the PSNR against the original where one exists.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .cli import DEFAULT_DEVICE, ArgumentParser, device_argument, run_cli
from .data.images import make_grid
from .data.preprocess import (
    Preprocessing,
    decode_image,
    pipeline_preprocessing,
    preprocess_image,
    to_model_range,
    to_uint8,
    to_uint8_nhwc,
)
from .pipeline_folder import load_pipeline
from .sampling.editing import METHODS, colorize, decode, impute, interpolate, invert

NAMED_MASKS = ("center", "left", "right", "top", "bottom", "eyes", "random")
CELEBA_ALIGNED_SIZE = (178, 218)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def named_mask(name: str, resolution: int, seed: int = 0) -> torch.Tensor:
    """A 1 x 1 x R x R mask, 1 = known, 0 = to fill. ``eyes`` is the band of an aligned CelebA face's eyes;
    ``random`` drops half of the pixels at random (seeded)."""
    r = resolution
    known = torch.ones(1, 1, r, r)
    if name == "center":
        known[..., r // 4: 3 * r // 4, r // 4: 3 * r // 4] = 0
    elif name == "left":
        known[..., :, : r // 2] = 0
    elif name == "right":
        known[..., :, r // 2:] = 0
    elif name == "top":
        known[..., : r // 2, :] = 0
    elif name == "bottom":
        known[..., r // 2:, :] = 0
    elif name == "eyes":
        known[..., round(0.42 * r): round(0.61 * r), round(0.2 * r): round(0.8 * r)] = 0
    elif name == "random":
        generator = torch.Generator().manual_seed(seed)
        known = (torch.rand(1, 1, r, r, generator=generator) < 0.5).float()
    else:
        raise ValueError(f"unknown mask {name!r}; give a PNG file or one of {list(NAMED_MASKS)}")
    return known


def read_mask(value: str, resolution: int, seed: int) -> torch.Tensor:
    """A named mask, or a PNG/JPEG whose white pixels (> 127) are the region to fill."""
    if value in NAMED_MASKS:
        return named_mask(value, resolution, seed)
    if not os.path.isfile(value):
        raise FileNotFoundError(f"mask {value!r} is neither a file nor one of {list(NAMED_MASKS)}")
    grey = np.asarray(decode_image(Path(value).read_bytes(), value).convert("L"))
    if grey.shape != (resolution, resolution):
        raise ValueError(f"mask {value} is {grey.shape[1]}x{grey.shape[0]}; the model works at "
                         f"{resolution}x{resolution}")
    return torch.from_numpy(grey <= 127).float()[None, None]


def face_tensor(image: Image.Image, prep: Preprocessing, name: str = "the image") -> torch.Tensor:
    """One RGB face as a 3 x R x R tensor in [-1, 1]: an R x R image as it is, an aligned CelebA image cropped and
    resized with ``prep`` (the model's training preprocessing); anything else is a ValueError naming ``name`` and its
    size."""
    image = image.convert("RGB")
    resolution = prep.resolution
    if image.size == (resolution, resolution):
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()
    elif image.size == CELEBA_ALIGNED_SIZE:
        pixels = preprocess_image(image, prep)
    else:
        raise ValueError(f"{name} is {image.size[0]}x{image.size[1]}; give a {resolution}x{resolution} face or an "
                         f"aligned CelebA image ({CELEBA_ALIGNED_SIZE[0]}x{CELEBA_ALIGNED_SIZE[1]})")
    return to_model_range(torch.from_numpy(pixels))


def read_face(path: str, prep: Preprocessing) -> torch.Tensor:
    """``face_tensor`` of an image file."""
    return face_tensor(decode_image(Path(path).read_bytes(), path), prep, path)


def image_paths(values: list[str]) -> list[str]:
    paths = []
    for value in values:
        if os.path.isdir(value):
            paths += sorted(os.path.join(value, name) for name in os.listdir(value)
                            if name.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.isfile(value):
            paths.append(value)
        else:
            raise FileNotFoundError(f"image not found: {value}")
    if not paths:
        raise ValueError(f"no images ({'/'.join(IMAGE_SUFFIXES)}) in {values}")
    return paths


def load_faces(args, prep: Preprocessing) -> tuple[torch.Tensor, list[str]]:
    """The input faces (N x 3 x R x R in [-1, 1]) and their names, from --image or from --celeba."""
    if (args.image is None) == (args.celeba is None):
        raise ValueError("give either --image FILE|DIR ... or --celeba DIR (with --split, --num_images)")
    if args.image is not None:
        paths = image_paths(args.image)
        return torch.stack([read_face(path, prep) for path in paths]), [Path(p).name for p in paths]
    from .data.celeba import ExamplePreprocessor, load_celeba

    preprocessor = ExamplePreprocessor(prep)
    faces, names = [], []
    for example in load_celeba(train_data_dir=args.celeba, split=args.split).take(args.num_images):
        processed = preprocessor(example)
        faces.append(to_model_range(torch.from_numpy(processed["pixels"])))
        names.append(processed["key"])
    if len(faces) < args.num_images:
        raise ValueError(f"split {args.split!r} of {args.celeba} has only {len(faces)} images")
    return torch.stack(faces), names


def psnr(result: torch.Tensor, original: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """PSNR in dB on the 256-level scale (peak 2 on [-1, 1]), over ``where`` if given; summed in float64, so that
    the same images give the same number wherever their memory lies."""
    error = (to_uint8(result).double() - to_uint8(original).double()) ** 2
    if where is not None:
        error = error[where.expand_as(error).bool()]
    return float(10 * np.log10(255.0**2 / max(error.mean().item(), 1e-12)))


def write(out: Path, name: str, rows: list[torch.Tensor], record: dict, upscale: int) -> None:
    """PNGs of the last row, the grid of all rows (one column per image) and edit.json."""
    out.mkdir(parents=True, exist_ok=True)
    results = to_uint8_nhwc(rows[-1])
    for index, image in enumerate(results):
        Image.fromarray(image).save(out / f"{name}_{index:03d}.png")
    make_grid(np.concatenate([to_uint8_nhwc(row) for row in rows]), columns=len(rows[0]), upscale=upscale).save(
        out / "grid.png")
    (out / "edit.json").write_text(json.dumps(record, indent=1))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("inpaint", "colorize", "interpolate"):
        sub = commands.add_parser(name)
        sub.add_argument("--model", default="pretrained/celeba-64")
        sub.add_argument("--image", nargs="+", default=None, help="face files or folders")
        sub.add_argument("--celeba", default=None, help="or a CelebA folder in the official layout")
        sub.add_argument("--split", default="test", choices=["train", "valid", "test"])
        sub.add_argument("--num_images", type=int, default=8)
        sub.add_argument("--steps", type=int, default=100 if name == "interpolate" else 250)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
        sub.add_argument("--upscale", type=int, default=2, help="nearest-neighbour factor of the grid")
        sub.add_argument("--out", required=True)
        if name == "interpolate":
            sub.add_argument("--frames", type=int, default=8)
        else:
            sub.add_argument("--method", default="repaint", choices=METHODS)
            sub.add_argument("--jump_length", type=int, default=10, help="repaint")
            sub.add_argument("--jump_n_sample", type=int, default=10, help="repaint")
            sub.add_argument("--corrector_steps", type=int, default=1, help="pc")
            sub.add_argument("--snr", type=float, default=0.16, help="pc")
        if name == "inpaint":
            sub.add_argument("--mask", default="center", help=f"a PNG (white = fill) or one of {list(NAMED_MASKS)}")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("num_images", "steps", "upscale", "frames", "jump_length", "jump_n_sample", "corrector_steps"):
        if getattr(args, name, 1) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.command == "interpolate" and args.frames < 2:
        raise ValueError(f"--frames must be >= 2, got {args.frames}")
    pipe = load_pipeline(args.model, args.device)
    pipe.set_progress_bar_config(desc=args.command)
    prep = pipeline_preprocessing(pipe)
    resolution = prep.resolution
    faces, names = load_faces(args, prep)
    if args.command == "interpolate" and len(faces) != 2:
        raise ValueError(f"interpolate takes exactly 2 faces, got {len(faces)}")
    settings = {key: value for key, value in vars(args).items() if key not in ("device",)}
    generator = torch.Generator().manual_seed(args.seed)
    started = time.perf_counter()
    if args.command == "interpolate":
        frames = interpolate(pipe, faces[0], faces[1], args.frames, args.steps).float()
        seconds = time.perf_counter() - started
        reconstructed = decode(pipe, invert(pipe, faces, args.steps), args.steps).float()
        record = {**settings, "inputs": names, "seconds": seconds,
                  "reconstruction_psnr": [psnr(reconstructed[i:i + 1], faces[i:i + 1]) for i in range(2)]}
        write(Path(args.out), "frame", [frames], record, args.upscale)
        print(f"wrote {args.frames} frames to {args.out} (reconstruction PSNR "
              f"{', '.join(f'{v:.1f}' for v in record['reconstruction_psnr'])} dB)")
        return 0
    options = {"method": args.method, "steps": args.steps, "generator": generator,
               "progress_bar": pipe.progress_bar, **({"jump_length": args.jump_length,
                                                       "jump_n_sample": args.jump_n_sample}
                                                      if args.method == "repaint" else
                                                      {"corrector_steps": args.corrector_steps, "snr": args.snr})}
    if args.command == "inpaint":
        mask = read_mask(args.mask, resolution, args.seed)
        results, nfe = impute(pipe, faces, mask, **options)
        seen = faces * mask + (1 - mask) * -1.0    # the hole shown in black
        filled = 1 - mask
    else:
        results, nfe = colorize(pipe, faces, **options)
        seen = faces.mean(dim=1, keepdim=True).expand_as(faces)
        filled = None
    results = results.float()
    seconds = time.perf_counter() - started
    record = {**settings, "inputs": names, "nfe": nfe, "seconds": seconds,
              "psnr": [psnr(results[i:i + 1], faces[i:i + 1], filled) for i in range(len(faces))],
              "psnr_where": "filled region" if filled is not None else "whole image"}
    record["psnr_mean"] = float(np.mean(record["psnr"]))
    write(Path(args.out), args.command, [faces, seen, results], record, args.upscale)
    print(f"wrote {len(results)} {args.command} results to {args.out} ({nfe} NFE, {seconds:.1f} s, "
          f"PSNR {record['psnr_mean']:.1f} dB on the {record['psnr_where']})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
