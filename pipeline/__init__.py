"""CelebA diffusion: data, training helpers, the diffusers pipeline, samplers and evaluation."""

from .pipeline_celeba import CelebADiffusionPipeline

__all__ = ["CelebADiffusionPipeline"]
