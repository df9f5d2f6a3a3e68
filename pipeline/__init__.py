"""CelebA diffusion: data, training helpers, the diffusers pipeline, samplers and evaluation."""

from .pipeline_celeba import CelebADiffusionPipeline
from .pipeline_folder import load_pipeline, save_pipeline_folder

__all__ = ["CelebADiffusionPipeline", "load_pipeline", "save_pipeline_folder"]
