"""Building the denoiser's UNet2DModel, refusing normalisation layouts that blind it to its input's mean and scale.

A GroupNorm with one channel per group is an InstanceNorm: it removes every feature channel's spatial mean and
standard deviation. At the UNet's full-resolution level (whose last GroupNorm, ``conv_norm_out``, sits right before
``conv_out``) this leaves the noise prediction unable to follow a constant shift or a rescaling of its input, errors
that the ODE samplers then amplify by sigma/alpha. ``build_unet`` therefore requires at least
``MIN_CHANNELS_PER_GROUP`` channels per group at every level unless ``allow_instance_norm=True``.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

from ..models.attribute_encoder import AttributeEncoder

MIN_CHANNELS_PER_GROUP = 2


def check_group_norm(block_out_channels, norm_num_groups: int, allow_instance_norm: bool = False) -> None:
    """Raise ValueError naming the first level whose GroupNorm cannot be built or has too few channels per group.

    Args:
        block_out_channels: channels of each UNet level, from full resolution down.
        norm_num_groups: GroupNorm groups, shared by every level (as in UNet2DModel).
        allow_instance_norm: accept 1 channel per group (an InstanceNorm) deliberately.
    """
    if norm_num_groups < 1:
        raise ValueError(f"norm_num_groups must be >= 1, got {norm_num_groups}")
    for level, channels in enumerate(block_out_channels):
        if channels % norm_num_groups:
            raise ValueError(f"level {level}: {channels} channels do not split into norm_num_groups = "
                             f"{norm_num_groups} groups")
        per_group = channels // norm_num_groups
        if per_group < MIN_CHANNELS_PER_GROUP and not allow_instance_norm:
            raise ValueError(
                f"level {level}: {channels} channels in norm_num_groups = {norm_num_groups} groups is {per_group} "
                f"channel per group, an InstanceNorm that removes each channel's spatial mean and scale (the "
                f"denoiser could not follow its input's mean colour or noise level); use norm_num_groups <= "
                f"{channels // MIN_CHANNELS_PER_GROUP}, or pass allow_instance_norm (--allow_instance_norm) to build "
                f"it anyway")


def build_unet(resolution: int, in_channels: int, block_out_channels, layers_per_block: int, down_block_types,
               up_block_types, norm_num_groups: int, attention_head_dim: int | None = None, dropout: float = 0.0,
               allow_instance_norm: bool = False, **unet_kwargs) -> UNet2DModel:
    """A square UNet2DModel with as many output as input channels, after ``check_group_norm``.

    Returns the freshly initialised model; ``unet_kwargs`` go to UNet2DModel unchanged (e.g. ``class_embed_type``).
    """
    check_group_norm(block_out_channels, norm_num_groups, allow_instance_norm)
    return UNet2DModel(
        sample_size=resolution, in_channels=in_channels, out_channels=in_channels, layers_per_block=layers_per_block,
        block_out_channels=tuple(block_out_channels), down_block_types=tuple(down_block_types),
        up_block_types=tuple(up_block_types), attention_head_dim=attention_head_dim,
        norm_num_groups=norm_num_groups, dropout=dropout, **unet_kwargs)


class AttributeConditionedUNet(torch.nn.Module):
    """The module an attribute model trains: a UNet2DModel with ``class_embed_type="identity"`` and the
    ``AttributeEncoder`` that makes its class labels, optimised (and averaged by the EMA) together.

    ``forward(sample, timestep, class_labels)`` takes attribute vectors (B, num_attributes; all zeros when
    ``class_labels`` is None) as its class labels, so every wrapper that passes ``class_labels`` through (the
    pixel-unshuffle transform) works unchanged. ``config`` is the UNet's.
    """

    def __init__(self, unet: UNet2DModel, encoder: AttributeEncoder):
        super().__init__()
        if unet.config.class_embed_type != "identity":
            raise ValueError("an attribute model needs a UNet2DModel with class_embed_type='identity'")
        self.unet, self.encoder = unet, encoder

    @property
    def config(self):
        return self.unet.config

    def forward(self, sample, timestep, class_labels=None, return_dict: bool = True):
        if class_labels is None:
            class_labels = torch.zeros(sample.shape[0], len(self.encoder.config.attribute_names), device=sample.device)
        return self.unet(sample, timestep, class_labels=self.encoder(class_labels), return_dict=return_dict)


def drop_attributes(attributes: torch.Tensor, unspecified_prob: float, dropout: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Training labels for classifier-free guidance: each attribute set to 0 (unspecified) with probability
    ``unspecified_prob``, and each whole vector with probability ``dropout`` (the unconditional model)."""
    attributes = attributes.float()
    keep = torch.rand(attributes.shape, generator=generator) >= unspecified_prob
    keep &= torch.rand(attributes.shape[0], 1, generator=generator) >= dropout
    return attributes * keep.to(attributes.device)
