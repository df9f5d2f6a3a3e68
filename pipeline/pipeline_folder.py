"""The saved pipeline folder: written in the Hub layout, read back with one clear error for what is not one.

A folder holds ``model_index.json``, ``unet/``, ``scheduler/`` and copies of ``pipeline_celeba.py`` and the
``denoisers.py`` it imports, and its
``model_index.json`` names the class as ``["pipeline_celeba", "CelebADiffusionPipeline"]``; an attribute model adds
``attribute_encoder/`` with a copy of ``attribute_encoder.py`` (a diffusers custom component). So
``DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`` loads it with no other argument, from
any directory, and the folder is already what the Hub repo should hold.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .models import attribute_encoder
from .pipeline_celeba import CelebADiffusionPipeline
from .sampling.schedulers import check_steps, get_sampler, scheduler_for

logger = logging.getLogger(__name__)

PIPELINE_FILE = Path(__file__).with_name("pipeline_celeba.py")
PIPELINE_CODE = (PIPELINE_FILE, PIPELINE_FILE.with_name("denoisers.py"))  # the custom pipeline and what it imports
HUB_CLASS_NAME = [PIPELINE_FILE.stem, "CelebADiffusionPipeline"]
COMPONENTS = ("unet", "scheduler")
OPTIONAL_COMPONENTS = {"attribute_encoder": attribute_encoder}  # component -> the module whose file its folder carries


def weights_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names and values): the identity of weights, the same in memory and after a
    save/load round trip, recorded next to every number measured on them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def pipeline_settings(config) -> dict:
    """The pipeline's own settings in a model_index.json or pipeline config (pixel_unshuffle, preprocessing, ...):
    the entries ``CelebADiffusionPipeline`` takes. Any other setting (one a folder was saved with by an older
    version, e.g. ``mean_colour_prior``) is left out, with a warning when it has a value."""
    accepted = set(inspect.signature(CelebADiffusionPipeline.__init__).parameters)
    accepted -= {"self", *COMPONENTS, *OPTIONAL_COMPONENTS}
    settings = {key: value for key, value in dict(config).items() if not key.startswith("_")}
    for key in sorted(set(settings) - accepted - set(COMPONENTS) - set(OPTIONAL_COMPONENTS)):
        if settings[key] is not None:
            logger.warning("ignoring the pipeline setting %r, which this version does not have", key)
    return {key: value for key, value in settings.items() if key in accepted}


def with_default_sampler(pipe: CelebADiffusionPipeline, sampler: str, steps: int) -> CelebADiffusionPipeline:
    """The same model whose plain ``pipe()`` samples with registry sampler ``sampler`` at ``steps`` steps: that
    scheduler, configured as the registry configures it, becomes the pipeline's scheduler (saved with it), and
    ``steps`` its ``default_num_inference_steps``. Every other sampler is still built from the saved scheduler's noise
    schedule. ValueError for a score-SDE sampler (not a diffusers scheduler) or a step count it cannot take."""
    entry = get_sampler(sampler)
    if not entry.is_scheduler:
        raise ValueError(f"the default sampler must be a diffusers scheduler; {sampler!r} is a score-SDE sampler")
    check_steps(sampler, steps, pipe.scheduler.config.num_train_timesteps)
    return CelebADiffusionPipeline(unet=pipe.unet, scheduler=scheduler_for(pipe, sampler),
                                   attribute_encoder=getattr(pipe, "attribute_encoder", None),
                                   **{**pipeline_settings(pipe.config), "default_num_inference_steps": steps})


def save_pipeline_folder(pipe: CelebADiffusionPipeline, folder: str | os.PathLike) -> None:
    """``save_pretrained`` (safetensors), then the Hub layout: the custom class named in model_index.json, its code
    beside it. The components' configs drop ``_name_or_path``, the local folder they were loaded from, which means
    nothing on another machine."""
    folder = Path(folder)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    for config_path in folder.glob("*/*config.json"):
        config = json.loads(config_path.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = HUB_CLASS_NAME
    for name, module in OPTIONAL_COMPONENTS.items():
        code = Path(module.__file__)
        if index.get(name, [None])[0] is None:  # absent: not named at all
            index.pop(name, None)
        else:  # a custom component: diffusers loads <name>/<module>.py
            index[name] = [code.stem, index[name][1]]
            shutil.copy2(code, folder / name / code.name)
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    copy_pipeline_code(folder)


def copy_pipeline_code(folder: Path) -> None:
    """Put this package's custom-pipeline code (``PIPELINE_CODE``) into a pipeline folder."""
    for code in PIPELINE_CODE:
        shutil.copy2(code, folder / code.name)


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not os.path.exists(name)


def resolve_folder(model: str) -> Path:
    """The local folder of ``model``: itself, or a Hub repo's snapshot; ValueError/FileNotFoundError saying what
    ``model`` is instead (a training checkpoint, an unreachable Hub id, a folder without a pipeline)."""
    folder = Path(model)
    if not folder.exists() and looks_like_repo_id(model):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        try:
            folder = Path(snapshot_download(model))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as error:
            raise ConnectionError(f"no folder {model!r} here, and fetching it as a Hub repo id failed "
                                  f"({type(error).__name__}: offline, or no such repo); download it where there is a "
                                  f"network (hf download {model} --local-dir DIR) and pass DIR") from None
    if (folder / "pipeline" / "model_index.json").is_file() and not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} is a training checkpoint; its pipeline (EMA weights) is "
                                f"{folder / 'pipeline'}")
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"no pipeline at {folder} (model_index.json missing)")
    return folder


def load_pipeline(model: str, device: str = "cpu", channels_last: bool | None = None) -> CelebADiffusionPipeline:
    """A saved pipeline folder (or Hub repo id) as this package's ``CelebADiffusionPipeline`` on ``device``.

    Components are built from what model_index.json names, so the folder's own copy of the pipeline code is not
    executed; unreadable weights are one error naming the file. ``channels_last`` stores the UNet's weights in
    channels-last order, which oneDNN's CPU convolutions run faster for sampling (results/bench/sampling.json);
    None: on a CPU. Pass False to train or save the loaded weights.
    """
    folder = resolve_folder(model)
    index = json.loads((folder / "model_index.json").read_text())
    components = {}
    for name in COMPONENTS:
        if name not in index:
            raise ValueError(f"{folder / 'model_index.json'} names no {name}")
    for name in (*COMPONENTS, *(name for name in OPTIONAL_COMPONENTS if index.get(name, [None])[0] is not None)):
        library, class_name = index[name]
        if name in OPTIONAL_COMPONENTS:  # this package's own copy of the component's code
            library = OPTIONAL_COMPONENTS[name].__name__
        component_class = getattr(importlib.import_module(library), class_name)
        try:
            components[name] = component_class.from_pretrained(str(folder), subfolder=name)
        except (OSError, ValueError, RuntimeError) as error:
            files = sorted(str(path) for path in (folder / name).glob("*") if path.is_file()) or [str(folder / name)]
            raise ValueError(f"cannot load the {name} from {', '.join(files)}: {str(error).splitlines()[0]} "
                             f"(truncated or corrupt? save or download it again)") from None
    pipe = CelebADiffusionPipeline(**components, **pipeline_settings(index)).to(device)
    if channels_last is None:
        channels_last = pipe.device.type == "cpu"
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    return pipe
