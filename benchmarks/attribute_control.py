"""Does an attribute model give the attributes it is asked for? A CelebA attribute classifier, then guided samples.

    python benchmarks/attribute_control.py classifier --train_data_dir ../shared/celeba \
        --out results/attributes/classifier.json
    python benchmarks/attribute_control.py control --model pretrained/celeba-64-attributes \
        --train_data_dir ../shared/celeba --guidance 0 1 3 5 --out results/attributes/control.json \
        --grid results/attributes/control_grid.png --resume_dir ~/runs/attribute_control
    python benchmarks/attribute_control.py label-gain --model pretrained/celeba-64-attributes \
        --train_data_dir ../shared/celeba --out results/attributes/label_gain.json

``classifier`` trains a small CNN on the official train split's images and 40 labels (preprocessed as the model's
training images) and reports its accuracy per attribute on every valid and test image present (never trained on),
beside the accuracy of always answering the train split's majority label. Its weights are kept outside the work tree
(``--weights``, a cache file by default).

``control`` asks the attribute model, at each guidance weight, for ``--num_samples`` faces that cycle through the
attributes of ``--attributes`` (one attribute set to present per face, the rest unspecified). Per attribute it reports
the classifier's positive rate on the faces asked for it, against the unconditional model's rate (guidance 0, the
same faces' seeds), the rates of the other attributes of ``--attributes`` on those faces (``found``: does guidance
give the attribute asked for, or a change shared by all?), and per weight the FID of all its faces against the train
split's reference. ``--grid`` draws the
first faces asked for each attribute (a row each) at every weight (a block of columns each): the same seeds, so each
face changes only with the weight. ``--resume_dir`` keeps every finished batch, so that an interrupted run continues
with identical results.

``label-gain`` asks whether the network reads its labels at all: on held-out faces noised at several DDPM labels
(the same noise for every condition) it compares the noise-prediction error given the faces' own attributes (each
left unspecified with the training probability), given all of them, and given none. The relative reduction of the
error is the information the labels add; a model whose guidance changes nothing shows none. Beside it, the same gain
for the least-squares linear guess of a face from its labels (fitted on the train split) bounds from below what an
ideal denoiser gains where the noise hides the face.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from pipeline.cli import DEFAULT_DEVICE, ArgumentParser, device_argument, run_cli
from pipeline.data.celeba import load_celeba, preprocessed_batches, read_official_layout
from pipeline.data.images import make_grid
from pipeline.data.preprocess import Preprocessing, pipeline_preprocessing, random_hflip, to_model_range
from pipeline.evaluation.reference_stats import load_or_compute_reference
from pipeline.evaluation.scores import fid_against_reference
from pipeline.generate import MIXED_PRECISION_HELP, generate, load_for_sampling, load_pipeline, open_batch_store
from pipeline.models.architecture import drop_attributes
from pipeline.models.attribute_encoder import CELEBA_ATTRIBUTES
from pipeline.models.noise_schedules import schedule_config
from pipeline.pipeline_celeba import MIXED_PRECISION, default_mixed_precision

DEFAULT_WEIGHTS = Path(os.environ.get("CELEBA_DIFFUSION_CACHE", "~/.cache/celeba-diffusion")).expanduser() / \
    "attribute_classifier.pt"
GAIN_LABELS = (999, 900, 700, 500, 300)
CONTROL_ATTRIBUTES = ("Smiling", "Eyeglasses", "Male", "Blond_Hair", "Black_Hair", "Wearing_Hat", "Bangs",
                      "Mouth_Slightly_Open", "Young", "No_Beard")


class AttributeClassifier(torch.nn.Module):
    """Four stride-2 convolution stages, global average pooling and one logit per attribute, for [-1, 1] images."""

    def __init__(self, num_attributes: int = len(CELEBA_ATTRIBUTES), width: int = 32):
        super().__init__()
        layers, channels = [], 3
        for stage in range(4):
            out = width * 2**stage
            layers += [torch.nn.Conv2d(channels, out, 3, stride=2, padding=1), torch.nn.BatchNorm2d(out),
                       torch.nn.SiLU(), torch.nn.Conv2d(out, out, 3, padding=1), torch.nn.BatchNorm2d(out),
                       torch.nn.SiLU()]
            channels = out
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(channels, num_attributes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))


def labelled_images(train_data_dir: str, splits: tuple[str, ...], prep: Preprocessing,
                    limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 NCHW images, {0, 1} labels (N, 40)) of every present image of ``splits`` (at most ``limit`` each)."""
    layout = read_official_layout(train_data_dir)
    images, labels = [], []
    for split in (split for split in splits if layout.records[split]):  # a copy may hold none of a split
        official = {name: attributes for name, _, attributes in layout.records[split]}
        raw = load_celeba(train_data_dir=train_data_dir, split=split)
        for batch, keys in tqdm(preprocessed_batches(raw if limit is None else raw.take(limit), prep, 256),
                                desc=f"{split} images", unit="batch"):
            images.append(batch)
            labels.append(torch.tensor([official[key] for key in keys], dtype=torch.float32))
    if not images:
        return torch.zeros(0, 3, prep.resolution, prep.resolution, dtype=torch.uint8), torch.zeros(0, 40)
    return torch.cat(images), torch.cat(labels)


def predict(classifier: AttributeClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """{0, 1} predictions (N, 40) for uint8 NCHW images."""
    classifier.eval()
    with torch.no_grad():
        return torch.cat([(classifier(to_model_range(images[i:i + batch_size])) > 0).float()
                          for i in range(0, len(images), batch_size)])


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int, seed: int,
                     learning_rate: float = 2e-3) -> AttributeClassifier:
    """AdamW on the 40 binary cross-entropies, random flips, a cosine learning rate."""
    torch.manual_seed(seed)
    classifier = AttributeClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=learning_rate, weight_decay=1e-4)
    steps = epochs * max(len(images) // batch_size, 1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    classifier.train()
    with tqdm(total=steps, desc="classifier", unit="step") as progress:
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, max(len(images) - batch_size + 1, 1), batch_size):
                index = order[start:start + batch_size]
                logits = classifier(random_hflip(to_model_range(images[index]), generator))
                loss = F.binary_cross_entropy_with_logits(logits, labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.3f}")
    return classifier


def classifier_main(args) -> dict:
    prep = Preprocessing(resolution=args.resolution)
    train_images, train_labels = labelled_images(args.train_data_dir, ("train",), prep, args.num_train)
    heldout_images, heldout_labels = labelled_images(args.train_data_dir, ("valid", "test"), prep)
    if len(heldout_images) == 0:
        raise ValueError(f"no valid or test images in {args.train_data_dir}: nothing held out to measure accuracy on")
    started = time.perf_counter()
    classifier = train_classifier(train_images, train_labels, args.epochs, args.batch_size, args.seed)
    seconds = time.perf_counter() - started
    weights = Path(args.weights).expanduser()
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": classifier.state_dict(), "preprocessing": prep.to_dict()}, weights)
    correct = (predict(classifier, heldout_images) == heldout_labels).float().mean(dim=0)
    majority = (train_labels.mean(dim=0) > 0.5).float()
    baseline = (heldout_labels == majority).float().mean(dim=0)
    per_attribute = {name: {"accuracy": float(correct[i]), "majority_accuracy": float(baseline[i]),
                            "heldout_positive_rate": float(heldout_labels[:, i].mean())}
                     for i, name in enumerate(CELEBA_ATTRIBUTES)}
    return {"num_train": len(train_images), "num_heldout": len(heldout_images), "heldout_splits": ["valid", "test"],
            "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "preprocessing": prep.to_dict(),
            "train_seconds": seconds, "weights": str(weights),
            "mean_accuracy": float(correct.mean()), "mean_majority_accuracy": float(baseline.mean()),
            "attributes": per_attribute}


def load_classifier(path: str) -> tuple[AttributeClassifier, Preprocessing]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no attribute classifier at {path}; train it first with "
                                f"python benchmarks/attribute_control.py classifier --train_data_dir DIR")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    classifier = AttributeClassifier()
    classifier.load_state_dict(saved["state_dict"])
    return classifier, Preprocessing(**saved["preprocessing"])


def control_main(args) -> dict:
    unknown = sorted(set(args.attributes) - set(CELEBA_ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; the attributes are {', '.join(CELEBA_ATTRIBUTES)}")
    if 0.0 not in args.guidance:
        raise ValueError("--guidance must include 0: the unconditional base rate every weight is compared with")
    args.mixed_precision = args.mixed_precision or default_mixed_precision(args.device)
    pipe, args.scheduler, args.steps = load_for_sampling(args.model, args.device, args.scheduler, args.steps,
                                                         args.mixed_precision)
    require_attribute_model(pipe, args.model)
    classifier, classifier_prep = load_classifier(args.weights)
    if classifier_prep.resolution != pipeline_preprocessing(pipe).resolution:
        raise ValueError(f"the classifier was trained at {classifier_prep.resolution} px, the model samples at "
                         f"{pipeline_preprocessing(pipe).resolution} px")
    reference = load_or_compute_reference(args.train_data_dir, split="train", prep=pipeline_preprocessing(pipe),
                                          cache_dir=args.cache_dir, device=args.device)
    index = {name: CELEBA_ATTRIBUTES.index(name) for name in args.attributes}
    per_attribute = args.num_samples // len(args.attributes)
    rows, shown = {}, []
    for weight in args.guidance:
        faces, rates, found = [], {}, {}
        for offset, name in enumerate(args.attributes):  # the same seeds for every weight: paired comparisons
            sampling = dict(scheduler=args.scheduler, steps=args.steps, seed=args.seed + 1000 * offset,
                            batch_size=args.batch_size, mixed_precision=args.mixed_precision,
                            attributes={name: 1}, guidance_scale=weight)
            store = (open_batch_store(Path(args.resume_dir) / f"guidance-{weight:g}" / name, pipe, **sampling)
                     if args.resume_dir else None)
            images, _ = generate(pipe, per_attribute, progress=True, store=store, **sampling)
            faces.append(images)
            shown.append(images[:args.grid_faces])
            tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
            predictions = predict(classifier, tensor)
            found[name] = {other: float(predictions[:, column].mean()) for other, column in index.items()}
            rates[name] = found[name][name]
        rows[str(weight)] = {"positive_rate": rates, "found": found,
                             "fid": fid_against_reference(np.concatenate(faces), reference)}
    if args.grid:  # rows: attributes; columns: grid_faces faces at each weight in turn
        blocks = np.stack(shown).reshape(len(args.guidance), len(args.attributes), -1, *shown[0].shape[1:])
        tiles = blocks.transpose(1, 0, 2, 3, 4, 5).reshape(-1, *shown[0].shape[1:])
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        make_grid(tiles, columns=len(args.guidance) * blocks.shape[2], upscale=2).save(args.grid)
    base = rows[str(0.0)]["positive_rate"]
    for row in rows.values():
        row["rate_minus_base"] = {name: row["positive_rate"][name] - base[name] for name in args.attributes}
    return {"model": args.model, "sampler": args.scheduler, "steps": args.steps, "seed": args.seed,
            "mixed_precision": args.mixed_precision, "attributes": list(args.attributes),
            "samples_per_attribute": per_attribute, "fid_label": f"FID-{per_attribute * len(args.attributes)}",
            "fid_reference": f"{reference['num']} train images", "classifier": str(args.weights),
            "grid": args.grid and {"path": args.grid, "rows": list(args.attributes), "column_blocks": args.guidance,
                                   "faces_per_block": args.grid_faces},
            "guidance": rows}


def require_attribute_model(pipe, model: str) -> None:
    """ValueError unless ``pipe`` (loaded from ``model``) has an attribute encoder."""
    if getattr(pipe, "attribute_encoder", None) is None:
        raise ValueError(f"{model} is not an attribute model (no attribute_encoder)")


def noise_errors(pipe, clean: torch.Tensor, attributes: torch.Tensor, label: int, seed: int,
                 batch_size: int) -> torch.Tensor:
    """Per-image mean squared error (float64) of the float32 noise estimate at DDPM label ``label`` given
    ``attributes`` (N, 40) of +1/-1/0; image i is noised with the same draw whatever the attributes."""
    alpha_bar = float(DDPMScheduler.from_config(schedule_config(pipe.vp_schedule)).alphas_cumprod[label])
    errors = []
    for start in range(0, len(clean), batch_size):
        x0 = clean[start:start + batch_size]
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + start))
        noisy = alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise
        denoiser = pipe.vp_denoiser(pipe.guided_denoiser(attributes[start:start + batch_size], 1.0))
        with torch.no_grad():
            estimate = denoiser(noisy.to(pipe.device), torch.full((len(x0),), label, device=pipe.device)).sample
        errors.append((estimate.cpu().double() - noise.double()).pow(2).mean(dim=(1, 2, 3)))
    return torch.cat(errors)


def linear_label_gain(train_images: torch.Tensor, train_vectors: torch.Tensor, heldout_images: torch.Tensor,
                      heldout_vectors: torch.Tensor, chunk: int = 1024) -> tuple[float, float]:
    """(gain, stderr) of the least-squares linear guess of a face from its label vector over the mean face.

    Fits pixels ~ W [vector, 1] on the train images (uint8 NCHW, vectors of +1/-1/0) and returns the relative drop of
    the held-out images' mean squared error against the train mean, paired per image, with its standard error. Where
    noise hides the whole face (DDPM labels near 999) the ideal denoiser's label gain is the same ratio for the best
    guess of any form, so this is a lower bound on the gain a network can reach there."""
    def design(vectors: torch.Tensor) -> torch.Tensor:
        return torch.cat([vectors.double(), torch.ones(len(vectors), 1, dtype=torch.float64)], dim=1)

    gram = torch.zeros(train_vectors.shape[1] + 1, train_vectors.shape[1] + 1, dtype=torch.float64)
    moments = torch.zeros(len(gram), train_images[0].numel(), dtype=torch.float64)
    for start in range(0, len(train_images), chunk):
        features = design(train_vectors[start:start + chunk])
        gram += features.T @ features
        moments += features.T @ to_model_range(train_images[start:start + chunk]).double().flatten(1)
    weights = torch.linalg.lstsq(gram, moments).solution  # the normal equations; lstsq tolerates unused labels
    mean_face = moments[-1] / len(train_images)
    errors = {"mean": [], "linear": []}
    for start in range(0, len(heldout_images), chunk):
        faces = to_model_range(heldout_images[start:start + chunk]).double().flatten(1)
        errors["mean"].append((faces - mean_face).pow(2).mean(dim=1))
        errors["linear"].append((faces - design(heldout_vectors[start:start + chunk]) @ weights).pow(2).mean(dim=1))
    base = torch.cat(errors["mean"])
    difference = base - torch.cat(errors["linear"])
    return float(difference.mean() / base.mean()), float(difference.std() / len(difference) ** 0.5 / base.mean())


def label_gain_main(args) -> dict:
    pipe = load_pipeline(args.model, args.device, channels_last=False)
    require_attribute_model(pipe, args.model)
    images, labels = labelled_images(args.train_data_dir, ("valid", "test"), pipeline_preprocessing(pipe),
                                     limit=args.num_images)
    if len(images) < 2:
        raise ValueError(f"{args.train_data_dir} holds fewer than 2 valid or test images")
    clean, signed = to_model_range(images).float(), 2 * labels - 1
    conditions = {"none": torch.zeros_like(signed), "all": signed,
                  "training": drop_attributes(signed, args.unspecified_prob, 0.0,
                                              torch.Generator().manual_seed(args.seed))}
    train_images, train_labels = labelled_images(args.train_data_dir, ("train",), pipeline_preprocessing(pipe),
                                                 limit=args.num_train)
    train_signed = 2 * train_labels - 1
    train_conditions = {"all": train_signed,
                        "training": drop_attributes(train_signed, args.unspecified_prob, 0.0,
                                                    torch.Generator().manual_seed(args.seed + 1))}
    ceiling = {"num_train": len(train_images),
               "about": "least-squares linear guess of the face from its labels vs the train mean: a lower bound on "
                        "the label gain an ideal denoiser reaches where noise hides the face (t near 999)"}
    for name, vectors in train_conditions.items():
        ceiling[f"gain_{name}"], ceiling[f"gain_{name}_stderr"] = linear_label_gain(
            train_images, vectors, images, conditions[name])
    rows = []
    for label in tqdm(args.labels, desc="noise levels", unit="label"):
        errors = {name: noise_errors(pipe, clean, vectors, label, args.seed, args.batch_size)
                  for name, vectors in conditions.items()}
        base = float(errors["none"].mean())
        row = {"t": label, "mse_none": base}
        for name in ("training", "all"):
            difference = errors["none"] - errors[name]  # paired per image: same face, same noise
            row[f"mse_{name}"] = float(errors[name].mean())
            row[f"gain_{name}"] = float(difference.mean()) / base
            row[f"gain_{name}_stderr"] = float(difference.std() / len(difference) ** 0.5) / base
        rows.append(row)
    return {"model": args.model, "num_images": len(images), "splits": ["valid", "test"],
            "unspecified_prob": args.unspecified_prob, "seed": args.seed, "precision": "float32",
            "gain": "1 - mse(labels) / mse(none), paired over images; stderr from the per-image differences",
            "labels": rows, "linear_ceiling": ceiling}


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("classifier", help="train the attribute classifier, measure it on held-out images")
    train.add_argument("--train_data_dir", required=True, help="CelebA in the official layout (with valid/test)")
    train.add_argument("--resolution", type=int, default=64)
    train.add_argument("--num_train", type=int, default=None, help="default: every train image present")
    train.add_argument("--epochs", type=int, default=4)
    train.add_argument("--batch_size", type=int, default=128)
    train.add_argument("--seed", type=int, default=0)
    control = commands.add_parser("control", help="positive rates and FID of guided samples per guidance weight")
    control.add_argument("--model", required=True, help="an attribute pipeline folder")
    control.add_argument("--train_data_dir", required=True, help="CelebA in the official layout: the FID reference")
    control.add_argument("--attributes", nargs="+", default=list(CONTROL_ATTRIBUTES))
    control.add_argument("--guidance", nargs="+", type=float, default=[0.0, 1.0, 3.0, 5.0])
    control.add_argument("--num_samples", type=int, default=2000, help="per guidance weight, over all attributes")
    control.add_argument("--scheduler", default=None, help="sampler; default: the model's own (its saved scheduler)")
    control.add_argument("--steps", type=int, default=None, help="default: the model's default_num_inference_steps")
    control.add_argument("--batch_size", type=int, default=64)
    control.add_argument("--seed", type=int, default=0)
    control.add_argument("--mixed_precision", default=None, choices=MIXED_PRECISION, help=MIXED_PRECISION_HELP)
    control.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
    control.add_argument("--cache_dir", default=None)
    control.add_argument("--grid", default=None, help="PNG: the first faces of each attribute at every weight")
    control.add_argument("--grid_faces", type=int, default=None,
                         help="faces per attribute and weight in --grid (default: 4, or fewer if fewer are drawn)")
    control.add_argument("--resume_dir", default=None, help="keep each finished batch here; rerun to continue")
    for command in (train, control):
        command.add_argument("--weights", default=str(DEFAULT_WEIGHTS), help="the classifier's weights file")
    gain = commands.add_parser("label-gain", help="how much the labels reduce the noise-prediction error")
    gain.add_argument("--model", required=True, help="an attribute pipeline folder")
    gain.add_argument("--train_data_dir", required=True, help="CelebA in the official layout (with valid/test)")
    gain.add_argument("--num_images", type=int, default=256, help="first images of each held-out split")
    gain.add_argument("--labels", nargs="+", type=int, default=list(GAIN_LABELS), help="DDPM labels, 0-999")
    gain.add_argument("--num_train", type=int, default=None,
                      help="train images for the linear ceiling; default: every train image present")
    gain.add_argument("--unspecified_prob", type=float, default=0.5,
                      help="probability that an attribute is left unspecified, as in training")
    gain.add_argument("--batch_size", type=int, default=64)
    gain.add_argument("--seed", type=int, default=0)
    gain.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
    for command in (train, control, gain):
        command.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "classifier" and min(args.epochs, args.batch_size, args.resolution) <= 0:
        raise ValueError("--epochs, --batch_size and --resolution must be positive")
    if args.command == "control" and args.num_samples < 2 * len(args.attributes):
        raise ValueError(f"--num_samples must give each of the {len(args.attributes)} attributes at least 2 faces")
    if args.command == "control":
        per_attribute = args.num_samples // len(args.attributes)
        args.grid_faces = min(4, per_attribute) if args.grid_faces is None else args.grid_faces
        if not 1 <= args.grid_faces <= per_attribute:
            raise ValueError(f"--grid_faces must be between 1 and the {per_attribute} faces per attribute")
    if args.command == "label-gain":
        if args.num_images < 1 or args.batch_size < 1 or not 0 <= args.unspecified_prob < 1:
            raise ValueError("--num_images and --batch_size must be positive, --unspecified_prob in [0, 1)")
        if not all(0 <= label <= 999 for label in args.labels):
            raise ValueError(f"--labels must lie in 0-999, got {args.labels}")
    commands_main = {"classifier": classifier_main, "control": control_main, "label-gain": label_gain_main}
    result = commands_main[args.command](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
