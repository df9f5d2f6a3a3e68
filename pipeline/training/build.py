"""What a run trains, built from its settings: the UNet (optionally attribute-conditioned and warm-started from a
saved pipeline), its noise scheduler, AdamW and the EMA of the weights."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler, EDMEulerScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from ..models.architecture import AttributeConditionedUNet, build_unet
from ..models.attribute_encoder import AttributeEncoder
from ..models.noise_schedules import shifted_cosine_betas
from .settings import DiffusionSettings, OptimizerSettings, TrainingSettings


def build_model_and_scheduler(settings: TrainingSettings):
    """The UNet2DModel (with ``attribute_conditioning``: an ``AttributeConditionedUNet``), started from
    ``init_from``'s weights when given, and the training scheduler (DDPMScheduler, or EDMEulerScheduler for EDM)."""
    unet, resolution = settings.model, settings.data.resolution
    factor = unet.pixel_unshuffle
    model = build_unet(resolution // factor, 3 * factor**2, unet.block_out_channels, unet.layers_per_block,
                       unet.down_block_types, unet.up_block_types, unet.norm_num_groups, unet.attention_head_dim,
                       unet.dropout, unet.allow_instance_norm,
                       class_embed_type="identity" if unet.attribute_conditioning else None)
    if unet.attribute_conditioning:
        model = AttributeConditionedUNet(model, AttributeEncoder(embedding_dim=4 * unet.block_out_channels[0]))
    if unet.init_from is not None:
        load_initial_weights(model, unet.init_from)
    if settings.optimizer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_noise_scheduler(settings.diffusion, resolution)


def build_noise_scheduler(diffusion: DiffusionSettings, resolution: int):
    """The training scheduler the settings describe, saved with the pipeline: EDMEulerScheduler for EDM
    preconditioning, else a DDPMScheduler with the chosen betas and prediction type."""
    if diffusion.preconditioning == "edm":
        return EDMEulerScheduler(sigma_data=diffusion.edm_sigma_data, num_train_timesteps=diffusion.ddpm_num_steps)
    if diffusion.ddpm_beta_schedule == "shifted_cosine":
        base = diffusion.shifted_cosine_base_resolution or resolution
        betas = {"trained_betas": shifted_cosine_betas(diffusion.ddpm_num_steps, base, resolution)}
    else:
        betas = {"beta_schedule": diffusion.ddpm_beta_schedule}
    return DDPMScheduler(num_train_timesteps=diffusion.ddpm_num_steps, prediction_type=diffusion.prediction_type,
                         rescale_betas_zero_snr=diffusion.rescale_betas_zero_snr, **betas)


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


def parameter_groups(model, optimizer: OptimizerSettings) -> list[dict]:
    """AdamW's parameter groups: the whole model at ``learning_rate``, except an attribute model's encoder when
    ``attribute_encoder_learning_rate`` is set (a group of its own at that rate; the LR schedule scales both)."""
    rate = optimizer.attribute_encoder_learning_rate
    if rate is None or not isinstance(model, AttributeConditionedUNet):
        return [{"params": list(model.parameters())}]
    return [{"params": list(model.unet.parameters())}, {"params": list(model.encoder.parameters()), "lr": rate}]


def build_optimizer_and_ema(model, optimizer: OptimizerSettings, **optimizer_overrides):
    """AdamW over the model (``parameter_groups``), and the EMA of its weights (None without ``use_ema``)."""
    ema = None
    if optimizer.use_ema:
        ema = EMAModel(model.parameters(), decay=optimizer.ema_max_decay, use_ema_warmup=True,
                       inv_gamma=optimizer.ema_inv_gamma, power=optimizer.ema_power, foreach=optimizer.ema_foreach,
                       model_cls=UNet2DModel, model_config=model.config)
    adamw = torch.optim.AdamW(parameter_groups(model, optimizer), lr=optimizer.learning_rate,
                              betas=(optimizer.adam_beta1, optimizer.adam_beta2),
                              weight_decay=optimizer.adam_weight_decay, eps=optimizer.adam_epsilon,
                              fused=optimizer.adam_fused, **optimizer_overrides)
    return adamw, ema
