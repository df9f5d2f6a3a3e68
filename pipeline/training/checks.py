"""The checks a training run's settings pass before anything is built or written: one clear error per bad setting."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..models.architecture import check_group_norm

if TYPE_CHECKING:
    from .settings import TrainingSettings

POSITIVE = ("resolution", "crop_size", "layers_per_block", "ddpm_num_steps", "train_batch_size",
            "gradient_accumulation_steps", "max_train_steps", "num_validation_images", "validation_inference_steps",
            "eval_fid_num_samples", "eval_fid_steps", "checkpoints_total_limit", "pixel_unshuffle")
NON_NEGATIVE = ("data_timeout_minutes", "lr_warmup_steps", "save_images_steps", "checkpointing_steps",
                "checkpointing_minutes", "eval_fid_every", "learning_rate", "adam_weight_decay", "dropout",
                "crop_offset_y", "shuffle_buffer_size", "attribute_encoder_learning_rate")
PROBABILITIES = ("attribute_unspecified_prob", "attribute_dropout")


def check_settings(settings: TrainingSettings, require_data: bool = True) -> None:
    """ValueError naming the first setting that cannot work, before anything is built or written. ``require_data``:
    exactly one data source must be named (a run that trains; building its UNet needs none)."""
    values = settings.flat()
    for name in POSITIVE:
        if values[name] <= 0:
            raise ValueError(f"--{name} must be positive, got {values[name]}")
    for name in NON_NEGATIVE:
        if values[name] is not None and values[name] < 0:
            raise ValueError(f"--{name} must be >= 0, got {values[name]}")
    for name in PROBABILITIES:
        if not 0 <= values[name] <= 1:
            raise ValueError(f"--{name} is a probability, got {values[name]}")
    data, model, diffusion, output = settings.data, settings.model, settings.diffusion, settings.output
    levels = len(model.block_out_channels)
    if not len(model.down_block_types) == len(model.up_block_types) == levels:
        raise ValueError(f"--block_out_channels, --down_block_types and --up_block_types need one entry per level; "
                         f"got {levels}, {len(model.down_block_types)} and {len(model.up_block_types)}")
    factor = model.pixel_unshuffle
    if data.resolution % factor:
        raise ValueError(f"--pixel_unshuffle {factor} must divide --resolution {data.resolution}")
    multiple = factor * 2 ** (levels - 1)
    if data.resolution % multiple:
        below, above = data.resolution // multiple * multiple, (data.resolution // multiple + 1) * multiple
        raise ValueError(f"--resolution {data.resolution} must be a multiple of {multiple} ({levels} UNet levels"
                         + (f", pixel_unshuffle {factor}" if factor > 1 else "")
                         + f"), e.g. {', '.join(str(v) for v in (below, above) if v > 0)}")
    if diffusion.shifted_cosine_base_resolution is not None and diffusion.ddpm_beta_schedule != "shifted_cosine":
        raise ValueError("--shifted_cosine_base_resolution needs --ddpm_beta_schedule shifted_cosine")
    if diffusion.preconditioning == "edm" and (
            diffusion.prediction_type != "epsilon" or diffusion.snr_gamma is not None
            or diffusion.rescale_betas_zero_snr or diffusion.ddpm_beta_schedule != "linear"):
        raise ValueError("--preconditioning edm has its own target, weighting and noise levels: leave "
                         "--prediction_type, --snr_gamma, --rescale_betas_zero_snr and --ddpm_beta_schedule at their "
                         "defaults")
    check_group_norm(model.block_out_channels, model.norm_num_groups, model.allow_instance_norm)
    if settings.optimizer.attribute_encoder_learning_rate is not None and not model.attribute_conditioning:
        raise ValueError("--attribute_encoder_learning_rate applies only with --attribute_conditioning")
    if require_data and (data.dataset_name is None) == (data.train_data_dir is None):
        raise ValueError("give exactly one of --dataset_name and --train_data_dir")
    if output.push_to_hub and not output.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id")
    if model.init_from is not None and not os.path.isfile(os.path.join(model.init_from, "model_index.json")):
        raise ValueError(f"--init_from {model.init_from} is not a saved pipeline folder (no model_index.json)")
