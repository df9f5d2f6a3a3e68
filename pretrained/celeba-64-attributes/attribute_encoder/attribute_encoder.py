"""Attribute conditioning for the face UNet: CelebA's 40 binary attributes as an offset of its time embedding.

This file imports only torch and diffusers: an attribute-conditional pipeline folder carries a copy as
``attribute_encoder/attribute_encoder.py``, which diffusers loads as a custom component.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()


class AttributeEncoder(ModelMixin, ConfigMixin):
    """A linear map from an attribute vector to an offset of the UNet's time embedding (its ``class_labels`` with
    ``class_embed_type="identity"``).

    An attribute vector holds +1 (present), -1 (absent) or 0 (unspecified) per attribute; all zeros is the
    unconditional model of classifier-free guidance. The map starts at zero, so an unconditional UNet fine-tuned with
    it starts exactly where it was.

    Args:
        attribute_names: the attributes, in the order of the vector's entries.
        embedding_dim: the UNet's time-embedding width (4 x its first block's channels).
    """

    @register_to_config
    def __init__(self, attribute_names: list[str] | tuple[str, ...] = tuple(CELEBA_ATTRIBUTES),
                 embedding_dim: int = 128):
        super().__init__()
        self.projection = torch.nn.Linear(len(attribute_names), embedding_dim)
        torch.nn.init.zeros_(self.projection.weight)
        torch.nn.init.zeros_(self.projection.bias)

    def forward(self, attributes: torch.Tensor) -> torch.Tensor:
        """(B, num_attributes) values in {-1, 0, +1} -> (B, embedding_dim) time-embedding offsets."""
        return self.projection(attributes.to(self.projection.weight.dtype))

    def vector(self, values: dict[str, float]) -> torch.Tensor:
        """The attribute vector of ``{"Smiling": 1, "Eyeglasses": -1}``: named entries set, the others 0.

        Raises:
            ValueError: for a name that is not an attribute (listing the valid ones) or a value other than -1, 0, 1.
        """
        names = list(self.config.attribute_names)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; the attributes are {', '.join(names)}")
        wrong = {name: value for name, value in values.items() if value not in (-1, 0, 1)}
        if wrong:
            raise ValueError(f"attribute values must be 1 (present), -1 (absent) or 0 (unspecified), got {wrong}")
        vector = torch.zeros(len(names))
        for name, value in values.items():
            vector[names.index(name)] = float(value)
        return vector
