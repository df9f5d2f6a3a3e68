"""Train a diffusers UNet2DModel on CelebA with DDPM noising, under `accelerate launch` (or torchrun on CPUs).

    accelerate launch --num_cpu_threads_per_process 2 train_unet.py --config configs/celeba64_cpu.yaml \
        --train_data_dir ../shared/celeba

The YAML gives defaults, command-line flags override them. Flag names follow diffusers'
examples/unconditional_image_generation/train_unconditional.py where the concept is the same.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import DDPMScheduler, EDMEulerScheduler, UNet2DModel
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm

from pipeline import CelebADiffusionPipeline
from pipeline.cli import ArgumentParser, run_cli
from pipeline.data.celeba import TrainingBatch, TrainStream, load_celeba
from pipeline.data.images import make_grid
from pipeline.data.preprocess import Preprocessing, random_hflip, to_model_range
from pipeline.evaluate import fid_against_reference
from pipeline.evaluation.reference_stats import load_or_compute_reference
from pipeline.generate import generate
from pipeline.mean_colour import MeanColourStatistics
from pipeline.model_card import read_training_log, render_card
from pipeline.models.architecture import AttributeConditionedUNet, build_unet, check_group_norm, drop_attributes
from pipeline.models.attribute_encoder import AttributeEncoder
from pipeline.models.noise_schedules import shifted_cosine_betas
from pipeline.pipeline_celeba import PixelUnshuffleDenoiser
from pipeline.pipeline_folder import save_pipeline_folder, weights_checksum
from pipeline.publish import prepare_repo, publish
from pipeline.training.checkpoints import (
    list_checkpoints,
    process_state_files,
    read_process_state,
    remove_stale_temporaries,
    resolve_checkpoint,
    restore_newest_readable,
    save_checkpoint_atomically,
)
from pipeline.training.lr_schedules import build_lr_scheduler, check_resumed_learning_rate
from pipeline.training.run_control import DataWatchdog, StopSignals
from pipeline.training_log import LossMeter, TrainingClock, append_record

logger = get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=str, default=None, help="YAML file of defaults for any flag below")
    # data
    p.add_argument("--dataset_name", type=str, default=None, help="Hub id or local path of a dataset in the "
                   "flwrlabs/celeba parquet layout, e.g. flwrlabs/celeba")
    p.add_argument("--dataset_config_name", type=str, default=None, help='e.g. "img_align+identity+attr"')
    p.add_argument("--train_data_dir", type=str, default=None, help="local CelebA folder in the official layout")
    p.add_argument("--split", type=str, default="train")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--crop_size", type=int, default=140, help="centered square crop (source pixels) before resizing")
    p.add_argument("--crop_offset_y", type=int, default=0)
    p.add_argument("--random_flip", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--shuffle_buffer_size", type=int, default=1000)
    p.add_argument("--data_timeout_minutes", type=float, default=10.0, help="end the run with an error when one "
                   "batch takes longer than this to arrive (a stuck data stream; 0 = wait forever)")
    p.add_argument("--skip_corrupt_images", action="store_true", help="count and report undecodable images "
                   "instead of stopping on the first one")
    # model
    p.add_argument("--block_out_channels", type=int, nargs="+", default=[64, 128, 128, 256])
    p.add_argument("--layers_per_block", type=int, default=2)
    p.add_argument("--down_block_types", type=str, nargs="+",
                   default=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"])
    p.add_argument("--up_block_types", type=str, nargs="+",
                   default=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"])
    p.add_argument("--attention_head_dim", type=int, default=None)
    p.add_argument("--norm_num_groups", type=int, default=32, help="GroupNorm groups at every level; each level needs "
                   ">= 2 channels per group (pipeline/models/architecture.py)")
    p.add_argument("--allow_instance_norm", action="store_true", help="build a UNet with 1 channel per GroupNorm "
                   "group anyway (an InstanceNorm: the denoiser cannot see its input's mean colour or noise scale)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--pixel_unshuffle", type=int, default=1, help="f > 1: the UNet works on f x f pixel-unshuffled "
                   "images (resolution/f square, 3 f^2 channels), at the cost of a resolution/f model")
    # attribute conditioning (a fine-tune of an unconditional model: --init_from)
    p.add_argument("--init_from", default=None, help="a saved pipeline folder whose UNet (and attribute encoder, if "
                   "any) weights start this run; its architecture must equal the flags'")
    p.add_argument("--attribute_conditioning", action="store_true", help="train an attribute model: CelebA's 40 "
                   "attributes, through a zero-initialised AttributeEncoder, offset the UNet's time embedding")
    p.add_argument("--attribute_unspecified_prob", type=float, default=0.5, help="each attribute of a training label "
                   "is left unspecified (0) with this probability, so that unnamed attributes mean 'any'")
    p.add_argument("--attribute_dropout", type=float, default=0.1, help="a whole label is dropped with this "
                   "probability: the unconditional model of classifier-free guidance")
    # diffusion
    p.add_argument("--ddpm_num_steps", type=int, default=1000)
    p.add_argument("--ddpm_beta_schedule", type=str, default="linear", help="a diffusers beta_schedule "
                   "(linear, squaredcos_cap_v2, ...) or shifted_cosine (pipeline/models/noise_schedules.py)")
    p.add_argument("--shifted_cosine_base_resolution", type=int, default=None, help="shifted_cosine: log-SNR "
                   "shifted by 2 log(base/resolution) (default: the resolution, i.e. no shift)")
    p.add_argument("--prediction_type", type=str, default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    p.add_argument("--rescale_betas_zero_snr", action=argparse.BooleanOptionalAction, default=False,
                   help="rescale the betas to zero terminal SNR (Lin et al. 2024; use with v_prediction)")
    p.add_argument("--preconditioning", default="ddpm", choices=["ddpm", "edm"], help="ddpm: discrete-time DDPM "
                   "noising of --prediction_type; edm: Karras et al. 2022 (c_skip/c_out/c_in/c_noise of diffusers' "
                   "EDMEulerScheduler, log-normal sigma, EDM loss weight), saved with that scheduler")
    p.add_argument("--edm_sigma_data", type=float, default=0.5)
    p.add_argument("--edm_p_mean", type=float, default=-1.2, help="edm: mean of log sigma in training")
    p.add_argument("--edm_p_std", type=float, default=1.2, help="edm: std of log sigma in training")
    p.add_argument("--snr_gamma", type=float, default=None, help="min-SNR-gamma loss weighting (Hang et al. 2023)")
    # optimisation
    p.add_argument("--train_batch_size", type=int, default=32, help="per process")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--max_train_steps", type=int, default=1000)
    p.add_argument("--max_train_minutes", type=float, default=None, help="also stop (checkpoint, save the pipeline) "
                   "once the run's wall-clock time, summed over resumes, reaches this budget")
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--lr_scheduler", type=str, default="cosine", help="a diffusers schedule (cosine, "
                   "constant_with_warmup, ...) or warmup_stable_decay (pipeline/training/lr_schedules.py)")
    p.add_argument("--lr_warmup_steps", type=int, default=500)
    p.add_argument("--lr_decay_steps", type=int, default=None, help="warmup_stable_decay: the final N steps before "
                   "--max_train_steps anneal the LR linearly to 0; a constant-LR run may be resumed with a cooldown")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_weight_decay", type=float, default=0.0)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)
    p.add_argument("--adam_fused", action=argparse.BooleanOptionalAction, default=False,
                   help="fused AdamW kernel (same update; one pass over all parameters instead of ~10 ops each)")
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--use_ema", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ema_inv_gamma", type=float, default=1.0)
    p.add_argument("--ema_power", type=float, default=3 / 4)
    p.add_argument("--ema_max_decay", type=float, default=0.9999)
    p.add_argument("--ema_foreach", action=argparse.BooleanOptionalAction, default=False,
                   help="update the EMA weights with torch._foreach ops (EMAModel(foreach=True))")
    p.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                   help="default: the launcher's (accelerate launch --mixed_precision, or accelerate config); bf16 on "
                        "CPUs, fp16 only on GPUs")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=False,
                   help="NHWC memory format (experiments/train_ablation.py measures whether it helps on your "
                        "machine)")
    p.add_argument("--seed", type=int, default=0)
    # outputs
    p.add_argument("--output_dir", type=str, default="runs/celeba")
    p.add_argument("--logger", type=str, default="tensorboard", choices=["tensorboard", "none"])
    p.add_argument("--logging_dir", type=str, default="logs", help="under output_dir")
    p.add_argument("--save_images_steps", type=int, default=0, help="sample grid every N steps (0 = off)")
    p.add_argument("--num_validation_images", type=int, default=16)
    p.add_argument("--validation_scheduler", type=str, default=None, help="sampler of the sample grids (default: "
                   "DPM-Solver++(2M), dpm++2m or edm-dpm++2m for the model's family)")
    p.add_argument("--validation_inference_steps", type=int, default=25)
    p.add_argument("--checkpointing_steps", type=int, default=500)
    p.add_argument("--checkpointing_minutes", type=float, default=0, help="also checkpoint every N minutes")
    p.add_argument("--checkpoints_total_limit", type=int, default=2)
    p.add_argument("--resume_from_checkpoint", type=str, default=None, help='a checkpoint folder or "latest"')
    p.add_argument("--eval_fid_every", type=int, default=0, help="FID of EMA samples every N steps (0 = off)")
    p.add_argument("--eval_fid_num_samples", type=int, default=1000)
    p.add_argument("--eval_fid_scheduler", type=str, default=None, help="sampler of the in-training FID (default: "
                   "as --validation_scheduler)")
    p.add_argument("--eval_fid_steps", type=int, default=20)
    p.add_argument("--eval_fid_reference_images", type=int, default=None, help="real images in the reference "
                   "statistics (default: all of the training split; computed once, then cached)")
    p.add_argument("--push_to_hub", action="store_true", help="publish the final pipeline with pipeline.publish")
    p.add_argument("--hub_model_id", type=str, default=None)
    p.add_argument("--hub_token", type=str, default=None)
    p.add_argument("--hub_private_repo", action="store_true")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Flags override the YAML config, which overrides the parser defaults."""
    parser = build_parser()
    args, _ = parser.parse_known_args(argv)
    if args.config:
        if not os.path.isfile(args.config):
            parser.error(f"config file not found: {args.config}")
        with open(args.config) as handle:
            config = yaml.safe_load(handle) or {}
        known = {action.dest for action in parser._actions}
        for key in sorted(set(config) - known):
            close = difflib.get_close_matches(key, known, n=1)
            parser.error(f"{args.config}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        parser.set_defaults(**config)
    args = parser.parse_args(argv)
    deterministic = "edm-dpm++2m" if args.preconditioning == "edm" else "dpm++2m"
    args.validation_scheduler = args.validation_scheduler or deterministic
    args.eval_fid_scheduler = args.eval_fid_scheduler or deterministic
    try:
        check_settings(args)
    except ValueError as error:
        parser.error(str(error))
    return args


POSITIVE = ("resolution", "crop_size", "layers_per_block", "ddpm_num_steps", "train_batch_size",
            "gradient_accumulation_steps", "max_train_steps", "num_validation_images", "validation_inference_steps",
            "eval_fid_num_samples", "eval_fid_steps", "checkpoints_total_limit", "pixel_unshuffle")
NON_NEGATIVE = ("data_timeout_minutes", "lr_warmup_steps", "save_images_steps", "checkpointing_steps",
                "checkpointing_minutes", "eval_fid_every", "learning_rate", "adam_weight_decay", "dropout",
                "crop_offset_y", "shuffle_buffer_size")


def check_settings(args) -> None:
    """ValueError naming the first setting that cannot work, before anything is built or written."""
    for name in POSITIVE:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    for name in NON_NEGATIVE:
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)}")
    levels = len(args.block_out_channels)
    if not len(args.down_block_types) == len(args.up_block_types) == levels:
        raise ValueError(f"--block_out_channels, --down_block_types and --up_block_types need one entry per level; "
                         f"got {levels}, {len(args.down_block_types)} and {len(args.up_block_types)}")
    if args.resolution % args.pixel_unshuffle:
        raise ValueError(f"--pixel_unshuffle {args.pixel_unshuffle} must divide --resolution {args.resolution}")
    multiple = args.pixel_unshuffle * 2 ** (levels - 1)
    if args.resolution % multiple:
        below, above = args.resolution // multiple * multiple, (args.resolution // multiple + 1) * multiple
        raise ValueError(f"--resolution {args.resolution} must be a multiple of {multiple} ({levels} UNet levels"
                         + (f", pixel_unshuffle {args.pixel_unshuffle}" if args.pixel_unshuffle > 1 else "")
                         + f"), e.g. {', '.join(str(v) for v in (below, above) if v > 0)}")
    if args.shifted_cosine_base_resolution is not None and args.ddpm_beta_schedule != "shifted_cosine":
        raise ValueError("--shifted_cosine_base_resolution needs --ddpm_beta_schedule shifted_cosine")
    if args.preconditioning == "edm" and (args.prediction_type != "epsilon" or args.snr_gamma is not None
                                          or args.rescale_betas_zero_snr or args.ddpm_beta_schedule != "linear"):
        raise ValueError("--preconditioning edm has its own target, weighting and noise levels: leave "
                         "--prediction_type, --snr_gamma, --rescale_betas_zero_snr and --ddpm_beta_schedule at their "
                         "defaults")
    check_group_norm(args.block_out_channels, args.norm_num_groups, args.allow_instance_norm)
    if (args.dataset_name is None) == (args.train_data_dir is None):
        raise ValueError("give exactly one of --dataset_name and --train_data_dir")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id")
    for name in ("attribute_unspecified_prob", "attribute_dropout"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"--{name} is a probability, got {getattr(args, name)}")
    if args.init_from is not None and not os.path.isfile(os.path.join(args.init_from, "model_index.json")):
        raise ValueError(f"--init_from {args.init_from} is not a saved pipeline folder (no model_index.json)")


def resolve_mixed_precision(flag: str | None, on_gpu: bool) -> tuple[str, str]:
    """(precision, where it came from): the flag (or YAML key), else the launcher's choice (``accelerate launch
    --mixed_precision`` or ``accelerate config``, passed as ACCELERATE_MIXED_PRECISION), else "no". fp16 needs a GPU:
    CPU autocast runs it as float32 (slower than bf16, no gain), so it is refused."""
    if flag is not None:
        precision, source = flag, "--mixed_precision"
    elif os.environ.get("ACCELERATE_MIXED_PRECISION"):
        precision, source = os.environ["ACCELERATE_MIXED_PRECISION"], "the launcher (accelerate launch / config)"
    else:
        precision, source = "no", "the default"
    if precision == "fp16" and not on_gpu:
        raise ValueError(f"mixed precision fp16 (from {source}) needs a GPU; on a CPU use bf16 "
                         "(--mixed_precision bf16), which CPUs with AVX512_BF16 or AMX run about twice as fast")
    if precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed precision {precision!r} (from {source}) must be no, fp16 or bf16")
    return precision, source


def build_model_and_scheduler(args):
    """The UNet2DModel (with --attribute_conditioning: an ``AttributeConditionedUNet``), started from --init_from's
    weights when given, and the training scheduler described by the flags (DDPMScheduler, or EDMEulerScheduler)."""
    factor = args.pixel_unshuffle
    model = build_unet(args.resolution // factor, 3 * factor**2, args.block_out_channels, args.layers_per_block,
                       args.down_block_types, args.up_block_types, args.norm_num_groups, args.attention_head_dim,
                       args.dropout, args.allow_instance_norm,
                       class_embed_type="identity" if args.attribute_conditioning else None)
    if args.attribute_conditioning:
        model = AttributeConditionedUNet(model, AttributeEncoder(embedding_dim=4 * args.block_out_channels[0]))
    if args.init_from is not None:
        load_initial_weights(model, args.init_from)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.preconditioning == "edm":
        return model, EDMEulerScheduler(sigma_data=args.edm_sigma_data, num_train_timesteps=args.ddpm_num_steps)
    if args.ddpm_beta_schedule == "shifted_cosine":
        base = args.resolution if args.shifted_cosine_base_resolution is None else args.shifted_cosine_base_resolution
        betas = shifted_cosine_betas(args.ddpm_num_steps, base, args.resolution)
        noise_scheduler = DDPMScheduler(num_train_timesteps=args.ddpm_num_steps, trained_betas=betas,
                                        prediction_type=args.prediction_type,
                                        rescale_betas_zero_snr=args.rescale_betas_zero_snr)
    else:
        noise_scheduler = DDPMScheduler(num_train_timesteps=args.ddpm_num_steps,
                                        beta_schedule=args.ddpm_beta_schedule, prediction_type=args.prediction_type,
                                        rescale_betas_zero_snr=args.rescale_betas_zero_snr)
    return model, noise_scheduler


def load_initial_weights(model, folder: str) -> None:
    """Copy a saved pipeline's UNet (and attribute encoder, when both have one) into ``model``; ValueError naming the
    difference when the architectures differ."""
    unet = model.unet if isinstance(model, AttributeConditionedUNet) else model
    saved = UNet2DModel.from_pretrained(folder, subfolder="unet")
    keys = ("sample_size", "in_channels", "block_out_channels", "layers_per_block", "down_block_types",
            "up_block_types", "norm_num_groups", "attention_head_dim")
    def comparable(value):  # a config read from JSON holds lists where a built model holds tuples
        return list(value) if isinstance(value, (list, tuple)) else value

    differing = {key: (saved.config[key], unet.config[key]) for key in keys
                 if comparable(saved.config[key]) != comparable(unet.config[key])}
    if differing:
        raise ValueError(f"--init_from {folder}: its UNet differs from the flags' in {differing} (saved, flags)")
    unet.load_state_dict(saved.state_dict())
    encoder_folder = Path(folder, "attribute_encoder")
    if isinstance(model, AttributeConditionedUNet) and encoder_folder.is_dir():
        model.encoder.load_state_dict(AttributeEncoder.from_pretrained(folder, subfolder="attribute_encoder")
                                      .state_dict())


def build_optimizer_and_ema(model, args, **optimizer_overrides):
    """AdamW over the model, and the EMA of its weights (None without --use_ema)."""
    ema = None
    if args.use_ema:
        ema = EMAModel(model.parameters(), decay=args.ema_max_decay, use_ema_warmup=True,
                       inv_gamma=args.ema_inv_gamma, power=args.ema_power, foreach=args.ema_foreach,
                       model_cls=UNet2DModel, model_config=model.config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon, fused=args.adam_fused,
                                  **optimizer_overrides)
    return optimizer, ema


def edm_loss(model, noise_scheduler: EDMEulerScheduler, clean, args, conditioning: dict | None = None):
    """EDM training loss: sigma log-normal, x = y + sigma n, the preconditioned denoiser D(x; sigma) against y with
    weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, which gives the network's own output a unit-variance
    target at every sigma."""
    log_sigma = torch.randn(clean.shape[0], device=clean.device) * args.edm_p_std + args.edm_p_mean
    sigma = log_sigma.exp().view(-1, 1, 1, 1)
    noisy = clean + sigma * torch.randn_like(clean)
    output = model(noise_scheduler.precondition_inputs(noisy, sigma),
                   noise_scheduler.precondition_noise(sigma.flatten()), **(conditioning or {})).sample.float()
    denoised = noise_scheduler.precondition_outputs(noisy, output, sigma)
    sigma_data = noise_scheduler.config.sigma_data
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return (weight * (denoised - clean) ** 2).mean()


def diffusion_loss(model, noise_scheduler, clean, args, conditioning: dict | None = None):
    """DDPM training loss: noise a batch at random timesteps and regress the chosen target (EDM: ``edm_loss``).
    ``conditioning`` goes to the model as keyword arguments (an attribute model's ``class_labels``)."""
    if isinstance(noise_scheduler, EDMEulerScheduler):
        return edm_loss(model, noise_scheduler, clean, args, conditioning)
    noise = torch.randn_like(clean)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],), device=clean.device)
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    prediction = model(noisy, timesteps, **(conditioning or {})).sample.float()
    if args.prediction_type == "epsilon":
        target = noise
    elif args.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(clean, noise, timesteps)
    else:
        target = clean
    if args.snr_gamma is None:
        return F.mse_loss(prediction, target)
    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=args.snr_gamma)
    # min-SNR weights expressed for each target: eps-loss * snr = x0-loss, v-loss * (snr+1) = x0-loss
    weight = {"epsilon": clipped / snr, "v_prediction": clipped / (snr + 1), "sample": clipped}[args.prediction_type]
    per_example = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
    return (per_example * weight).mean()


def training_step(accelerator, model, optimizer, lr_scheduler, noise_scheduler, pixels, args,
                  attributes: torch.Tensor | None = None) -> torch.Tensor:
    """One (micro-)batch: flip, noise, loss, backward; optimizer and lr steps when gradients are synchronised.
    ``attributes`` (the batch's labels) condition an attribute model, partly dropped for classifier-free guidance."""
    clean = to_model_range(pixels).to(accelerator.device)
    conditioning = None
    if args.attribute_conditioning:
        labels = drop_attributes(attributes, args.attribute_unspecified_prob, args.attribute_dropout)
        conditioning = {"class_labels": labels.to(accelerator.device)}
    if args.channels_last:
        clean = clean.contiguous(memory_format=torch.channels_last)
    if args.random_flip:
        clean = random_hflip(clean)
    denoiser = model if args.pixel_unshuffle == 1 else PixelUnshuffleDenoiser(model, args.pixel_unshuffle)
    with accelerator.accumulate(model):
        loss = diffusion_loss(denoiser, noise_scheduler, clean, args, conditioning)
        if torch.isfinite(loss):  # a non-finite loss is reported by the caller, before any update
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def training_preprocessing(args) -> Preprocessing:
    """How raw CelebA images become this run's training images (saved with every pipeline it writes)."""
    return Preprocessing(resolution=args.resolution, crop_size=args.crop_size, crop_offset_y=args.crop_offset_y)


@contextlib.contextmanager
def ema_pipeline(accelerator, model, ema, noise_scheduler, args, mean_colour_prior: dict | None = None):
    """The pipeline with the EMA weights swapped in for the duration of the block (training weights restored)."""
    unet = accelerator.unwrap_model(model)
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    unet.eval()
    try:
        parts = ({"unet": unet.unet, "attribute_encoder": unet.encoder} if isinstance(unet, AttributeConditionedUNet)
                 else {"unet": unet})
        pipe = CelebADiffusionPipeline(**parts, scheduler=noise_scheduler, pixel_unshuffle=args.pixel_unshuffle,
                                       mean_colour_prior=mean_colour_prior,
                                       preprocessing=training_preprocessing(args).to_dict())
        pipe.set_progress_bar_config(disable=True)
        yield pipe
    finally:
        if ema is not None:
            ema.restore(unet.parameters())
        unet.train()


def fitted_mean_colour_prior(accelerator, statistics: MeanColourStatistics) -> dict | None:
    """The mean-colour prior of every image trained on so far, all processes together (a collective call).

    The saved pipeline carries it, so its samplers use the mean-colour correction by default
    (pipeline/mean_colour.py); the in-training FID and sample grids do not, so their protocol stays the same."""
    packed = statistics.to_tensor()
    if accelerator.num_processes > 1:
        packed = accelerator.reduce(packed.to(accelerator.device), reduction="sum").cpu()
    total = MeanColourStatistics()
    total.load_tensor(packed)
    if total.count < 2:
        logger.warning("trained on %d image(s): too few for a mean-colour prior, the pipeline is saved without one",
                       total.count)
        return None
    return dataclasses.asdict(total.prior())


def save_ema_pipeline(accelerator, model, ema, noise_scheduler, args, folder, mean_colour_prior: dict | None) -> None:
    """The shippable pipeline (EMA weights, training scheduler, mean-colour prior): at the end of a run and inside
    every checkpoint, so the latest weights can be published or committed while the run goes on."""
    if args.preconditioning == "edm":  # the correction is written for the DDPM schedule
        mean_colour_prior = None
    with ema_pipeline(accelerator, model, ema, noise_scheduler, args, mean_colour_prior) as pipe:
        save_pipeline_folder(pipe, folder)


def save_sample_grid(accelerator, model, ema, noise_scheduler, args, step):
    """A grid of EMA samples for TensorBoard and output_dir/samples/."""
    with ema_pipeline(accelerator, model, ema, noise_scheduler, args) as pipe:
        images, _ = generate(pipe, args.num_validation_images, args.validation_scheduler,
                             args.validation_inference_steps, seed=args.seed, progress=False)
    grid = make_grid(images)
    os.makedirs(os.path.join(args.output_dir, "samples"), exist_ok=True)
    grid.save(os.path.join(args.output_dir, "samples", f"step_{step:07d}.png"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("samples", images, step, dataformats="NHWC")  # uint8 is read as 0..255


def evaluate_fid(accelerator, model, ema, noise_scheduler, args, reference) -> float:
    """FID of EMA samples (fixed seed) against the cached real reference statistics."""
    with ema_pipeline(accelerator, model, ema, noise_scheduler, args) as pipe:
        images, _ = generate(pipe, args.eval_fid_num_samples, args.eval_fid_scheduler, args.eval_fid_steps,
                             seed=args.seed, progress=False)
    return fid_against_reference(images, reference)


def end_training_together(accelerator) -> None:
    """Destroy the process group on all ranks at once: a rank that destroys it while another is still saving can
    leave gloo hanging."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def exit_process(status: int) -> None:
    """End the process with ``status``. A process of a multi-process run skips Python's interpreter finalization
    once its outputs are flushed: with gloo, finalization can hang forever on the GIL (pytorch/pytorch#190489)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(status)
    sys.exit(status)


def cpu_thread_advice(threads: int, cores: int, local_processes: int) -> str | None:
    """Why a CPU run is slow when it need not be: `accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise."""
    per_process = max(cores // local_processes, 1)
    if threads >= per_process:
        return None
    return (f"PyTorch uses {threads} CPU thread(s) per process but {per_process} core(s) per process are free "
            f"({cores} cores, {local_processes} local process(es)); `accelerate launch` sets OMP_NUM_THREADS=1 by "
            f"default: pass `accelerate launch --num_cpu_threads_per_process {per_process}` (or set OMP_NUM_THREADS)")


def make_accelerator(args) -> Accelerator:
    """The Accelerator of this process (CPU/gloo without a GPU), with logging set up and CPU-thread advice given."""
    on_gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    mixed_precision, precision_source = resolve_mixed_precision(args.mixed_precision, on_gpu)
    accelerator = Accelerator(
        cpu=not on_gpu,  # without an accelerator, cpu=True lets torchrun start a gloo (MULTI_CPU) process group
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, args.logging_dir)),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    logger.info("mixed precision: %s (from %s)", accelerator.mixed_precision, precision_source)
    if accelerator.device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        advice = cpu_thread_advice(torch.get_num_threads(), cores,
                                   int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
        if advice:
            logger.warning(advice)
    return accelerator


class Run:
    """One training process: the prepared model, optimizer, LR schedule and EMA, its share of the data stream, and
    the state its checkpoints save with them (step, clock, loss meter, mean-colour sums)."""

    def __init__(self, args, accelerator: Accelerator):
        self.args, self.accelerator = args, accelerator
        processes = accelerator.num_processes
        set_seed(args.seed)  # identical initial weights on every process
        model, self.noise_scheduler = build_model_and_scheduler(args)
        set_seed(args.seed, device_specific=True)  # then per-process noise; a resume restores the saved RNG states
        optimizer, self.ema = build_optimizer_and_ema(model, args)
        # accelerate steps a prepared scheduler once per process per optimizer step, hence the scaling
        lr_scheduler = build_lr_scheduler(
            args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * processes,
            num_training_steps=args.max_train_steps * processes,
            num_decay_steps=None if args.lr_decay_steps is None else args.lr_decay_steps * processes)
        self.stream = TrainStream(
            load_celeba(args.dataset_name, args.dataset_config_name, args.train_data_dir, args.split),
            training_preprocessing(args), batch_size=args.train_batch_size, seed=args.seed,
            shuffle_buffer_size=args.shuffle_buffer_size, rank=accelerator.process_index, world_size=processes,
            skip_corrupt=args.skip_corrupt_images)
        # The stream is already split per process (datasets.distributed), so it is not wrapped by accelerator.prepare.
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        self.step, self.clock, self.losses, self.mean_colours = 0, TrainingClock(), LossMeter(), MeanColourStatistics()
        self.training_log = os.path.join(args.output_dir, "training_log.jsonl")
        self.images_per_step = args.train_batch_size * processes * args.gradient_accumulation_steps
        self.started, self.start_step = time.perf_counter(), 0  # the throughput clock (``begin``)

    def resume(self, value: str) -> None:
        """Continue from checkpoint ``value`` ("latest": the newest one that reads back); none yet: a new run."""
        output_dir = self.args.output_dir
        if self.accelerator.is_main_process:
            remove_stale_temporaries(output_dir)
        candidates = list_checkpoints(output_dir) if value == "latest" else [resolve_checkpoint(output_dir, value)]
        if not candidates:
            logger.info("no checkpoint in %s yet: starting a new run", output_dir)
            return
        checkpoint = restore_newest_readable(candidates, self.restore)
        check_resumed_learning_rate(self.lr_scheduler.scheduler, self.step)
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    def restore(self, checkpoint: Path) -> None:
        """Load a checkpoint's accelerate state (model, optimizer, LR schedule, EMA, RNGs) and this process's stream
        position, clock and mean-colour sums."""
        step = int(checkpoint.name.split("-")[1])
        self.accelerator.load_state(str(checkpoint))
        rank = self.accelerator.process_index
        self.stream.load_state_dict(read_process_state(checkpoint, "stream", rank, required=True))
        clock = read_process_state(checkpoint, "clock", rank)
        if clock is not None:
            self.clock.load_state_dict(clock)
        else:
            self.clock.counted_from_step = step
        colours = read_process_state(checkpoint, "mean_colours", rank)
        if colours is not None:
            self.mean_colours.load_state_dict(colours)
        else:  # a checkpoint from before the prior was fitted in training: it counts from here
            logger.warning("%s has no mean-colour sums: the prior is fitted on the images from step %d on",
                           checkpoint, step)
        self.step = step

    def agreed(self, *flags: bool) -> list[bool]:
        """Each flag, true when it is true on any process: every process must take the same checkpoint and stop
        decisions, or collective saves would deadlock."""
        tensor = torch.tensor([float(flag) for flag in flags], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            tensor = self.accelerator.reduce(tensor, reduction="sum")
        return [bool(value > 0) for value in tensor]

    def out_of_time(self) -> bool:
        minutes = self.args.max_train_minutes
        return minutes is not None and self.clock.wall_seconds >= 60 * minutes

    def train_step(self, batch: TrainingBatch) -> float | None:
        """One forward/backward on a batch: the loss once an optimizer step completes, None while accumulating."""
        self.mean_colours.update(to_model_range(batch.pixels))
        loss = training_step(self.accelerator, self.model, self.optimizer, self.lr_scheduler, self.noise_scheduler,
                             batch.pixels, self.args, batch.attributes)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {self.step + 1}")
        if not self.accelerator.sync_gradients:
            return None
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        self.step += 1
        logs = {"loss": loss.detach().item(), "lr": self.lr_scheduler.get_last_lr()[0],
                "img_per_s": self.images_per_second()}
        if self.ema is not None:
            logs["ema_decay"] = self.ema.cur_decay_value
        self.losses.add(logs["loss"])
        self.accelerator.log(logs, step=self.step)
        return logs["loss"]

    def begin(self) -> None:
        """Put the model in training mode and start the throughput clock (after any resume)."""
        self.model.train()
        self.started, self.start_step = time.perf_counter(), self.step

    def images_per_second(self) -> float:
        return (self.step - self.start_step) * self.images_per_step / (time.perf_counter() - self.started)

    def save_checkpoint(self) -> None:
        """A resumable checkpoint (with the EMA pipeline inside) and its record in the training log (collective)."""
        accelerator, args = self.accelerator, self.args
        prior = fitted_mean_colour_prior(accelerator, self.mean_colours)
        save_checkpoint_atomically(
            accelerator, args.output_dir, self.step, args.checkpoints_total_limit,
            per_process_files=process_state_files(accelerator.process_index, {
                "stream": self.stream.state_dict(), "clock": self.clock.state_dict(),
                "mean_colours": self.mean_colours.state_dict()}),
            main_process_writer=lambda folder: save_ema_pipeline(
                accelerator, self.model, self.ema, self.noise_scheduler, args, folder / "pipeline", prior),
        )
        cpu_seconds = torch.tensor([self.clock.cpu_seconds], dtype=torch.float64)
        if accelerator.num_processes > 1:
            cpu_seconds = accelerator.reduce(cpu_seconds.to(accelerator.device), reduction="sum").cpu()
        if accelerator.is_main_process:
            append_record(self.training_log, {
                "step": self.step, "images_seen": self.step * self.images_per_step,
                "cpu_hours": cpu_seconds.item() / 3600, "wall_hours": self.clock.wall_seconds / 3600,
                "clock_counted_from_step": self.clock.counted_from_step, "loss": self.losses.pop_mean(),
                "lr": self.lr_scheduler.get_last_lr()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def record_fid(self, reference: dict) -> None:
        """FID of EMA samples now, logged to the trackers and the training log (main process)."""
        args = self.args
        fid = evaluate_fid(self.accelerator, self.model, self.ema, self.noise_scheduler, args, reference)
        self.accelerator.log({f"fid_{args.eval_fid_num_samples}": fid}, step=self.step)
        append_record(self.training_log, {
            "step": self.step, "images_seen": self.step * self.images_per_step,
            f"fid_{args.eval_fid_num_samples}": fid,
            "fid_protocol": f"{args.eval_fid_scheduler}-{args.eval_fid_steps}, seed {args.seed}, reference "
                            f"{reference['num']} train images"})

    def finish(self, first_keys: list[str]) -> None:
        """The end of a run: this process's summary, then (main process) the EMA pipeline with its model card in
        output_dir, published when asked."""
        accelerator, args, stream = self.accelerator, self.args, self.stream
        accelerator.wait_for_everyone()
        unet = accelerator.unwrap_model(self.model)
        summary = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
                   "global_step": self.step, "images_seen_by_rank": self.step * args.train_batch_size
                   * args.gradient_accumulation_steps, "first_keys": first_keys[:256],
                   "skipped_corrupt_images": stream.skipped_corrupt, "unet_sha256": weights_checksum(unet)}
        Path(args.output_dir, f"run_summary_rank{accelerator.process_index}.json").write_text(
            json.dumps(summary, indent=1))
        if stream.skipped_corrupt:
            logger.warning("skipped %d corrupt images: %s", len(stream.skipped_corrupt), stream.skipped_corrupt[:20],
                           main_process_only=False)
        prior = fitted_mean_colour_prior(accelerator, self.mean_colours)
        if not accelerator.is_main_process:
            return
        save_ema_pipeline(accelerator, self.model, self.ema, self.noise_scheduler, args, args.output_dir, prior)
        logger.info("saved the %s pipeline to %s", "EMA" if self.ema is not None else "final", args.output_dir)
        try:
            training = read_training_log(self.training_log) if os.path.isfile(self.training_log) else None
        except ValueError:  # a log without checkpoint records (e.g. only FID records): no compute line
            training = None
        name = (args.hub_model_id or Path(args.output_dir).resolve().name).split("/")[-1]
        card = render_card(name, unet.config, self.noise_scheduler.config, [], training, None,
                           pixel_unshuffle=args.pixel_unshuffle)
        Path(args.output_dir, "README.md").write_text(card)  # every output folder is a publishable Hub folder
        if args.push_to_hub:
            url = publish(args.output_dir, args.hub_model_id, args.hub_private_repo, args.hub_token)
            logger.info("published to %s", url)


def main(argv=None):
    args = parse_args(argv)
    if args.push_to_hub and int(os.environ.get("RANK", "0")) == 0:
        prepare_repo(args.hub_model_id, args.hub_private_repo, args.hub_token)  # before hours of training, not after
    accelerator = make_accelerator(args)
    run = Run(args, accelerator)
    reference = None
    if args.eval_fid_every and accelerator.is_main_process:
        reference = load_or_compute_reference(args.train_data_dir, args.dataset_name, args.dataset_config_name,
                                              args.split, training_preprocessing(args),
                                              num_images=args.eval_fid_reference_images)
    if args.resume_from_checkpoint:
        run.resume(args.resume_from_checkpoint)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        accelerator.init_trackers("train_unet", config={k: str(v) for k, v in vars(args).items()})

    stop = StopSignals().install()
    progress = tqdm(total=args.max_train_steps, initial=run.step, disable=not accelerator.is_local_main_process,
                    desc="train", unit="step")
    first_keys, last_checkpoint_time = [], time.monotonic()
    run.begin()
    batches = iter(run.stream)
    watchdog = DataWatchdog(args.data_timeout_minutes).start()
    [time_is_up] = run.agreed(run.out_of_time())  # a resumed run whose budget is already spent trains no step
    while run.step < args.max_train_steps and not time_is_up:
        with watchdog.waiting():
            batch = next(batches)
        first_keys.extend(batch.keys[:256 - len(first_keys)])
        loss = run.train_step(batch)
        if loss is None:  # accumulating gradients
            continue
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{run.images_per_second():.1f}")
        due = (args.checkpointing_steps and run.step % args.checkpointing_steps == 0) or (
            args.checkpointing_minutes and time.monotonic() - last_checkpoint_time > 60 * args.checkpointing_minutes
        ) or run.step == args.max_train_steps  # the last step too: the log's final record, a resumable end
        checkpoint_due, stop_requested, time_is_up = run.agreed(due, stop.requested, run.out_of_time())
        if args.eval_fid_every and run.step % args.eval_fid_every == 0 and accelerator.is_main_process:
            run.record_fid(reference)
        if checkpoint_due or stop_requested or time_is_up:
            run.save_checkpoint()
            last_checkpoint_time = time.monotonic()
        if stop_requested:
            logger.info("stopped by signal at step %d; resume with --resume_from_checkpoint latest", run.step)
            watchdog.stop()
            end_training_together(accelerator)
            return 0
        if time_is_up:
            logger.info("time budget of %s minutes reached at step %d", args.max_train_minutes, run.step)
        if args.save_images_steps and run.step % args.save_images_steps == 0 and accelerator.is_main_process:
            save_sample_grid(accelerator, run.model, run.ema, run.noise_scheduler, args, run.step)
    progress.close()
    watchdog.stop()
    run.finish(first_keys)
    end_training_together(accelerator)
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
