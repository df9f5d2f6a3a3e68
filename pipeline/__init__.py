"""CelebA diffusion: the diffusers pipeline, its samplers, training helpers and evaluation.

Layout, one concept per subpackage:

- ``pipeline_celeba`` (the Hub custom pipeline, self-contained) and ``pipeline_folder`` (save/load its folder);
- ``models``: the UNet builder and its GroupNorm guard, the attribute encoder, the noise schedules;
- ``sampling``: the sampler registry, the score-SDE samplers, editing (imputation, colorization), sample batches;
- ``data``: CelebA reading (official layout or Hub stream), the model's preprocessing, image files and grids;
- ``training``: typed run settings, building the model, scheduler and optimizer, the losses, checkpoints,
  learning-rate schedules, run control;
- ``evaluation``: Inception features, the cached real-image reference, FID/KID/precision-recall, plots;
- the command-line layer, one module per ``python -m pipeline.<command>``: ``generate``, ``evaluate``, ``edit``,
  ``demo``, ``likelihood``, ``trajectory``, ``training_log``, ``model_card``, ``ship``, ``publish``,
  ``export_hub_layout``, with their shared arguments in ``cli``.
"""

from .pipeline_celeba import CelebADiffusionPipeline
from .pipeline_folder import load_pipeline, save_pipeline_folder

__all__ = ["CelebADiffusionPipeline", "load_pipeline", "save_pipeline_folder"]
