"""Write the Hub model card from the results JSON files, so the numbers in it cannot drift from the measurements.

    python -m pipeline.model_card --model pretrained/celeba-64 --name celeba-64 \
        --eval results/eval/fid10k_edm-dpm++2m-10.json results/nfe/edm-dpm++2m-10_n2000.json \
        --likelihood results/likelihood.json --heldout results/heldout/celeba-64.json --targets results \
        --training_log results/training_log.jsonl --grid results/samples/edm-dpm++2m-10/grid_x4.png \
        --out model_card.md
    python -m pipeline.model_card --model pretrained/celeba-64-attributes \
        --attribute_control results/attributes/control.json --training_log RUN/training_log.jsonl \
        --grid results/attributes/control_grid.png --out pretrained/celeba-64-attributes/README.md

The same text is written to MODEL/README.md: it is the README of the published Hub repo. An attribute model (a
pipeline with an ``attribute_encoder``) gets the call that asks for attributes and, from
``benchmarks/attribute_control.py control``, how often a classifier finds them in its samples.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .cli import ArgumentParser, run_cli
from .denoisers import LINEAR_VP_SCHEDULE, is_edm
from .evaluation.targets import targets_table
from .sampling.schedulers import DIFFUSERS_SAMPLERS, SAMPLERS, registry_name
from .training_log import read_training_log

GRID_NAME = "samples.png"
TAGS = ["unconditional-image-generation", "diffusers", "celeba"]
LICENSE_NAME = "celeba-dataset-release-agreement"
LICENSE_LINK = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"results file not found: {path}")
    with open(path) as handle:
        return json.load(handle)


def sampler_label(result: dict, precision: bool = True) -> str:
    nfe, bf16 = result.get("nfe"), precision and result.get("mixed_precision") == "bf16"
    return (f"{result['sampler']}, {result['steps']} steps"
            + (f", {nfe:g} NFE" if nfe else "") + (", bf16 UNet" if bf16 else ""))


def eval_results(evals: list[dict], size: int) -> list:
    """huggingface_hub ``EvalResult``s (FID, KID, precision, recall) of each ``pipeline.evaluate`` result."""
    from huggingface_hub import EvalResult

    results = []
    for result in evals:
        protocol = f"{result['label']}, {sampler_label(result)}"
        for kind, key, digits, title in (("fid", "fid", 2, "FID"), ("kid", "kid_mean", 5, "KID"),
                                         ("precision", "precision", 3, "Precision"),
                                         ("recall", "recall", 3, "Recall")):
            results.append(EvalResult(
                task_type="unconditional-image-generation", task_name="Unconditional image generation",
                dataset_type="flwrlabs/celeba", dataset_name=f"CelebA {size}x{size}",
                dataset_config="img_align+identity+attr", dataset_split="train", metric_type=kind,
                metric_value=round(result[key], digits), metric_name=f"{title} ({protocol})"))
    return results


def card_header(model_name: str, evals: list[dict], size: int) -> str:
    """The card's YAML metadata, built with huggingface_hub's ``ModelCardData`` (model-index from ``EvalResult``s)."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="diffusers", license="other", license_name=LICENSE_NAME,
                         license_link=LICENSE_LINK, tags=TAGS, datasets=["flwrlabs/celeba"],
                         pipeline_tag="unconditional-image-generation", model_name=model_name if evals else None,
                         eval_results=eval_results(evals, size) or None)
    return data.to_yaml()


def likelihood_line(result: dict) -> str:
    """The bits/dim of ``pipeline.likelihood`` with its protocol, and a warning when the images were training
    images."""
    options = result["options"]
    line = (f"Negative log-likelihood: **{result['bpd_mean']:.3f} ± {result['bpd_stderr']:.3f} bits/dim** (mean ± "
            f"standard error) on {result['num_images']} images of the official {result['split']} split, through the "
            f"probability-flow ODE (RK45, rtol {options['rtol']:g}, atol {options['atol']:g}, from t = "
            f"{options['eps']:g}), {options['hutchinson']} Hutchinson trace estimator, uniform dequantization on the "
            "256-level scale.")
    if result["split"] == "train":
        line += " These are training images, so this is not a held-out likelihood."
    return line


def best_sampler(evals: list[dict]) -> dict | None:
    """The evaluation with the lowest FID among those with the most samples (FID is biased in N, so only equal-N
    values compare), restricted to diffusers samplers, which a Hub user can configure without this project."""
    usable = [result for result in evals if result["sampler"] in DIFFUSERS_SAMPLERS]
    if not usable:
        return None
    most = max(result["num_samples"] for result in usable)
    return min((result for result in usable if result["num_samples"] == most), key=lambda result: result["fid"])


def scheduler_setup(name: str, scheduler_config: dict) -> tuple[str, list[str]]:
    """(class name, lines) that set ``pipe.scheduler`` to registry sampler ``name`` with diffusers names only: from
    the saved scheduler's config when it is of the same family (EDM or DDPM schedule), else from the model's
    ``edm_schedule`` (an EDM sampler) or DDPM's linear schedule (any other sampler on an EDM-trained model)."""
    sampler = SAMPLERS[name]
    if sampler.edm == is_edm(scheduler_config):
        source = "pipe.scheduler.config"
    elif sampler.edm:
        source = "pipe.config.edm_schedule"
    else:
        source = "dict(" + ", ".join(f"{key}={value!r}" for key, value in
                                     {"num_train_timesteps": scheduler_config.get("num_train_timesteps", 1000),
                                      **LINEAR_VP_SCHEDULE}.items()) + ")"
    overrides = ", ".join(f"{key}={value!r}" for key, value in sampler.overrides.items())
    class_name = sampler.scheduler_class.__name__
    return class_name, [f"pipe.scheduler = {class_name}.from_config(", f"    {source}" + (f", {overrides})" if
                                                                                           overrides else ")")]


def use_section(evals: list[dict], scheduler_config: dict, default_steps: int, conditional: bool = False) -> list[str]:
    """Loading code: a plain call samples with the saved scheduler; when another measured sampler scored lower,
    the lines that switch to it, configured exactly as ``pipeline.sampling.schedulers`` does; for an attribute
    model (``conditional``), the call that asks for attributes."""
    saved, best = registry_name(scheduler_config), best_sampler(evals)
    imports = "from diffusers import DiffusionPipeline"
    call = "images = pipe(batch_size=16, generator=torch.Generator().manual_seed(0)).images"
    code = ['pipe = DiffusionPipeline.from_pretrained("REPO_OR_PATH", trust_remote_code=True)', call]
    text = ("The repository carries `pipeline_celeba.py` (the `CelebADiffusionPipeline`, named in `model_index.json`, "
            "with the `denoisers.py` it imports), so `trust_remote_code=True` is all diffusers needs. A plain call "
            "samples with the saved scheduler, "
            f"`{scheduler_config.get('_class_name')}`" + (f" (this project's `{saved}`)" if saved else "")
            + f", at {default_steps} steps.")
    if best and (best["sampler"] != saved or best["steps"] != default_steps):
        class_name, setup = scheduler_setup(best["sampler"], scheduler_config)
        imports += f", {class_name}"
        code += ["", f"# the lowest {best['label']} below: {sampler_label(best, precision=False)}", *setup,
                 f"images = pipe(batch_size=16, num_inference_steps={best['steps']}, "
                 "generator=torch.Generator().manual_seed(0)).images"]
        text += (f" The last lines switch to `{sampler_label(best, precision=False)}`, the sampler with the lowest "
                 f"{best['label']} below.")
    elif best:
        text += f" It is the sampler with the lowest {best['label']} below."
    if conditional:
        code += ["", "# smiling men, by classifier-free guidance",
                 'images = pipe(batch_size=16, attributes={"Smiling": 1, "Male": 1}, guidance_scale=3, '
                 "generator=torch.Generator().manual_seed(0)).images"]
        text += (" `attributes` names CelebA attributes as present (1) or absent (-1); unnamed ones are left "
                 "unspecified. `guidance_scale` 0 gives the unconditional model, 1 the conditional one, and larger "
                 "values push further towards the attributes.")
    if best and best.get("mixed_precision") == "bf16":
        text += (" The scores were measured with the UNet under bf16 autocast, the pipeline's default on a CPU with "
                 "native bf16 (AVX512_BF16 or AMX); `mixed_precision=\"bf16\"` asks for it anywhere.")
    elif best:
        text += (" The scores were measured with the UNet in full precision; on a CPU with native bf16, where the "
                 "default is bf16 autocast, pass `mixed_precision=\"no\"` to match them.")
    return ["## Use", "", "```python", "import torch", imports, "", *code, "```", "", text, ""]


def diffusion_description(scheduler_config) -> str:
    """One line on the noise process the model was trained with (DDPM betas, or EDM preconditioning)."""
    if "sigma_data" in scheduler_config:
        return (f"EDM preconditioning (Karras et al. 2022), sigma_data = {scheduler_config['sigma_data']}, sampled "
                f"on sigmas from {scheduler_config['sigma_min']} to {scheduler_config['sigma_max']}")
    schedule = ("custom (`trained_betas`)" if scheduler_config.get("trained_betas")
                else scheduler_config["beta_schedule"])
    zero_snr = ", rescaled to zero terminal SNR" if scheduler_config.get("rescale_betas_zero_snr") else ""
    return (f"T = {scheduler_config['num_train_timesteps']}, {schedule} beta schedule{zero_snr}, prediction type "
            f"`{scheduler_config['prediction_type']}`")


def is_attribute_model(pipeline_settings: dict) -> bool:
    """Whether a pipeline's model_index.json entries name an ``attribute_encoder`` component."""
    entry = pipeline_settings.get("attribute_encoder")
    return bool(entry and entry[0])


def heldout_lines(heldout: dict) -> tuple[list[str], str]:
    """(evaluation-table rows, memorization sentence) of a ``benchmarks/heldout_eval.py`` result: the model and, as
    its floor, as many real training images, both against the held-out faces."""
    against = f"{heldout['num_heldout']:,} held-out faces ({' + '.join(heldout['heldout_splits'])})"
    rows = []
    for scores, who in ((heldout["model_scores"], sampler_label(heldout)),
                        (heldout["train_floor"], f"{heldout['num_samples']:,} real train images (the floor)")):
        rows.append(f"| FID-{heldout['num_samples']:,} vs {against} | {who} | {scores['fid']:.2f} | "
                    f"{1e3 * scores['kid_mean']:.2f} ± {1e3 * scores['kid_std']:.2f} | {scores['precision']:.3f} | "
                    f"{scores['recall']:.3f} |")
    memorization = heldout["memorization"]
    below = memorization["fraction_ratio_below_0.5"]
    sentence = (f"Memorization: for each of the {heldout['num_samples']:,} samples, the distance to its nearest "
                "training image over that to its nearest held-out face (Inception features) has median "
                f"{memorization['ratio_quantiles']['0.5']:.3f}; "
                + (f"{round(below * heldout['num_samples']):,} of them fall" if below else "none falls")
                + " below 0.5, where a copy of a training image would lie.")
    return rows, sentence


def attribute_control_section(control: dict) -> list[str]:
    """The classifier's positive rate on faces asked for each attribute, per guidance weight, and each weight's FID
    (``benchmarks/attribute_control.py control``)."""
    weights = sorted(control["guidance"], key=float)
    lines = ["## Attribute control", "",
             f"{control['samples_per_attribute']:,} faces asked for each attribute (present, the rest unspecified) "
             f"per guidance weight, {sampler_label(control, precision=False)}, the same seeds at every weight. The "
             "table gives the share of them in which an attribute classifier (trained on the train split's labels) "
             "finds the attribute; guidance 0 is the unconditional model's base rate on the same seeds. "
             f"{control['fid_label']} of all faces of a weight against {control['fid_reference']}.", "",
             "| attribute | " + " | ".join(f"guidance {float(w):g}" for w in weights) + " |",
             "|---|" + "---|" * len(weights)]
    for name in control["attributes"]:
        lines.append(f"| {name} | " + " | ".join(f"{control['guidance'][w]['positive_rate'][name]:.2f}"
                                                 for w in weights) + " |")
    lines.append(f"| {control['fid_label']} | " + " | ".join(f"{control['guidance'][w]['fid']:.2f}" for w in weights)
                 + " |")
    return [*lines, ""]


def render_card(model_name: str, unet_config: dict, scheduler_config: dict, evals: list[dict],
                training: dict | None, grid: str | None, in_progress: bool = False, pixel_unshuffle: int = 1,
                likelihood: dict | None = None, pipeline_settings: dict | None = None,
                attribute_control: dict | None = None, heldout: dict | None = None,
                targets: list[str] | None = None) -> str:
    """The card's Markdown. ``pipeline_settings``: the pipeline's own entries of model_index.json
    (``default_num_inference_steps``, ``edm_schedule``, ``attribute_encoder`` for an attribute model);
    ``scheduler_config`` is the saved scheduler's, with its ``_class_name``; ``attribute_control``: a
    ``benchmarks/attribute_control.py control`` result for an attribute model; ``heldout``: a
    ``benchmarks/heldout_eval.py`` result; ``targets``: the lines of a targets table
    (``pipeline.evaluation.targets``)."""
    settings = pipeline_settings or {}
    conditional = is_attribute_model(settings)
    edm_schedule = settings.get("edm_schedule") or (scheduler_config if is_edm(scheduler_config) else None)
    unet_size = unet_config["sample_size"]
    unet_size = unet_size if isinstance(unet_size, int) else unet_size[0]  # square models: an int or a pair
    size = unet_size * pixel_unshuffle  # image side
    unshuffled = (f" working on {pixel_unshuffle}x{pixel_unshuffle} pixel-unshuffled input (a "
                  f"{unet_size}x{unet_size} UNet with {unet_config['in_channels']} "
                  "channels)" if pixel_unshuffle > 1 else "")
    lines = ["---", card_header(model_name, evals, size).rstrip(), "---", "",
             f"# {model_name}: {'attribute-conditional' if conditional else 'unconditional'} {size}x{size} CelebA "
             f"faces ({'EDM' if edm_schedule else 'DDPM'} diffusion, diffusers UNet2DModel)", ""]
    if training is None or not (evals or attribute_control):
        lines += ["> **Status: early checkpoint, not the final model.** "
                  + (f"Trained for {training['step']:,} steps ({training['images_seen']:,} images). "
                     if training else "")
                  + "Samples this early are noise-like or blurry; quality has not been measured yet.", ""]
    elif in_progress:
        lines += ["> **Status: intermediate checkpoint of a training run that continues** "
                  f"(step {training['step']:,}, "
                  f"{training['images_seen']:,} images seen). The numbers below are for these weights; later "
                  "checkpoints replace them.", ""]
    if grid:
        lines += [f"![samples]({grid})", ""]
    lines += use_section(evals, scheduler_config, settings.get("default_num_inference_steps", 50), conditional)
    lines += ["## Model", "",
              f"- `UNet2DModel`: {size}x{size}{unshuffled}, "
              f"block_out_channels {list(unet_config['block_out_channels'])}, "
              f"{unet_config['layers_per_block']} ResNet layers per block, "
              f"blocks {list(unet_config['down_block_types'])}.",
              f"- Diffusion: {diffusion_description(edm_schedule or scheduler_config)}; weights are the EMA weights.",
              *(["- Attributes: CelebA's 40 binary attributes (+1 present, -1 absent, 0 unspecified) through a "
                 "linear `AttributeEncoder` added to the UNet's time embedding, trained with labels dropped for "
                 "classifier-free guidance."] if conditional else []),
              "",
              "## Training data and preprocessing", "",
              "CelebA aligned-and-cropped faces (official train split; Liu et al., ICCV 2015), streamed with "
              f"`datasets`. Center crop 140x140 of the 178x218 image, antialiased bilinear resize to {size}x{size}, "
              "random horizontal flip, scaled to [-1, 1] (the score-SDE paper's CelebA protocol).", ""]
    if training:
        counted_from = training.get("clock_counted_from_step")
        if "gpu_hours" in training:
            compute = f"{60 * training['gpu_hours']:.1f} GPU-minutes ({training.get('hardware', 'GPU')})."
        elif counted_from == 0:
            compute = f"{training['cpu_hours']:.2f} CPU-hours ({training.get('hardware', 'CPU')})."
        elif counted_from is not None:  # the clock started late: say so instead of printing an undercount as a total
            compute = (f"{training['cpu_hours']:.2f} CPU-hours ({training.get('hardware', 'CPU')}) from step "
                       f"{counted_from:,} on; the first {counted_from:,} steps were not timed.")
        else:
            compute = "CPU time was not recorded for the whole run."
        went_on = (f" The run went on to step {training['last_step']:,}; these are the weights of step "
                   f"{training['step']:,}." if training.get("last_step", training["step"]) > training["step"] else "")
        restarts = "".join(f" At step {record['step']:,}: {record['restart']}."
                           for record in training.get("restarts", ()))
        lines += ["## Compute", "",
                  f"{training['step']:,} optimisation steps, {training['images_seen']:,} training images seen. "
                  + compute + restarts + went_on, ""]
    if attribute_control:
        lines += attribute_control_section(attribute_control)
    if evals or not attribute_control:
        lines += ["## Evaluation", ""]
    if evals or heldout:
        lines += ["| protocol | sampler | FID | KID (x1e3) | precision | recall |", "|---|---|---|---|---|---|"]
        for result in evals:
            reference = result["reference"]
            lines.append(f"| {result['label']} vs {reference['num_images']:,} real train images at "
                         f"{result['resolution']}x{result['resolution']} | {sampler_label(result)} | "
                         f"{result['fid']:.2f} | {1e3 * result['kid_mean']:.2f} ± {1e3 * result['kid_std']:.2f} | "
                         f"{result['precision']:.3f} | {result['recall']:.3f} |")
        heldout_rows, memorization = heldout_lines(heldout) if heldout else ([], None)
        lines += heldout_rows
        lines += ["", "Features: TF-Inception (2015-12-05) pool3, images resized to 299x299 with the TF1 bilinear "
                  "filter; reference images preprocessed exactly like the training images. Precision/recall: "
                  "Kynkäänniemi et al. 2019, k = 3.", ""]
        if memorization:
            lines += [memorization, ""]
    elif not attribute_control:
        lines += ["Not evaluated yet.", ""]
    if likelihood:
        lines += [likelihood_line(likelihood), ""]
    if targets:
        lines += ["## Targets", "", "The project's quality targets for this model and what it reaches:", "", *targets]
    lines += ["## Limitations and biases", "",
              "- Trained on a small CPU budget: far from the quality of published CelebA-64 models trained on GPUs.",
              "- CelebA shows celebrities: mostly young, light-skinned faces, studio lighting and make-up; its "
              "attribute labels are noisy. Generated faces reproduce these skews and must not be read as "
              "representative of people in general.",
              "- Generated faces can resemble training identities; see the memorization analysis in the project.", "",
              "## Intended use", "",
              "Research and teaching on diffusion models. CelebA is licensed for non-commercial research purposes "
              "only (CelebA release agreement); this model and its samples inherit that restriction. Not for "
              "identifying, impersonating or profiling people.", ""]
    return "\n".join(lines)


def folder_card(model: Path, name: str, evals: list[dict], training: dict | None, grid: str | None = None,
                in_progress: bool = False, likelihood: dict | None = None,
                attribute_control: dict | None = None, heldout: dict | None = None,
                targets: list[str] | None = None) -> str:
    """``render_card`` for the saved pipeline folder ``model`` (its UNet, saved scheduler and model_index.json)."""
    index = read_json(str(model / "model_index.json"))
    return render_card(name, read_json(str(model / "unet" / "config.json")),
                       read_json(str(model / "scheduler" / "scheduler_config.json")), evals, training, grid,
                       in_progress, index.get("pixel_unshuffle", 1), likelihood, index, attribute_control, heldout,
                       targets)


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved pipeline folder")
    parser.add_argument("--name", default=None, help="model name (default: the folder name)")
    parser.add_argument("--eval", nargs="*", default=[], help="pipeline.evaluate JSON files")
    parser.add_argument("--likelihood", default=None, help="pipeline.likelihood JSON (bits/dim)")
    parser.add_argument("--heldout", default=None, help="benchmarks/heldout_eval.py JSON (held-out FID, floor, "
                        "memorization)")
    parser.add_argument("--targets", default=None, help="results folder: add the targets table "
                        "(pipeline.evaluation.targets) read from it")
    parser.add_argument("--attribute_control", default=None,
                        help="benchmarks/attribute_control.py control JSON of an attribute model")
    parser.add_argument("--training_log", default=None, help="training_log.jsonl of the run")
    parser.add_argument("--training_step", type=int, default=None, help="checkpoint step of the shipped weights "
                        "(default: the log's last checkpoint)")
    parser.add_argument("--grid", default=None, help="sample grid picture: copied into the model folder as "
                        f"{GRID_NAME} (so the published repo shows it) and linked from both cards")
    parser.add_argument("--in_progress", action="store_true",
                        help="label the weights as an intermediate checkpoint of a run that continues")
    parser.add_argument("--out", default="model_card.md")
    args = parser.parse_args(argv)
    model = Path(args.model)
    evals = [read_json(p) for p in args.eval]
    training = read_training_log(args.training_log, args.training_step)
    likelihood = read_json(args.likelihood) if args.likelihood else None
    heldout = read_json(args.heldout) if args.heldout else None
    if args.targets and not os.path.isdir(args.targets):
        raise FileNotFoundError(f"--targets: results folder not found: {args.targets}")
    targets = targets_table(Path(args.targets), links=False) if args.targets else None
    attribute_control = read_json(args.attribute_control) if args.attribute_control else None
    if attribute_control and not is_attribute_model(read_json(str(model / "model_index.json"))):
        raise ValueError(f"--attribute_control describes an attribute model; {model} has no attribute_encoder")
    if args.grid:
        if not os.path.isfile(args.grid):
            raise FileNotFoundError(f"grid picture not found: {args.grid}")
        if not (model / GRID_NAME).exists() or not os.path.samefile(args.grid, model / GRID_NAME):
            shutil.copyfile(args.grid, model / GRID_NAME)
    paths = dict.fromkeys(path.resolve() for path in (Path(args.out), model / "README.md"))  # each file once
    for path in paths:  # the same card; only the picture's relative link differs
        grid = os.path.relpath(model / GRID_NAME, path.parent) if args.grid else None
        path.write_text(folder_card(model, args.name or model.name, evals, training, grid, args.in_progress,
                                    likelihood, attribute_control, heldout, targets))
    print("wrote " + " and ".join(str(path) for path in paths))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
