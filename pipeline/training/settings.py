"""Typed settings of a training run, one dataclass per concern, built from a YAML config and flags in one place.

Every field is one ``train_unet.py`` flag (``--field_name``) and one key of a YAML config under ``configs/``; flags
override the YAML, which overrides the defaults below. ``parse_settings`` is the command line (usage errors are one
line); ``load_settings`` gives the same settings to code that only builds a run's UNet (no data source needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field

import yaml

from ..cli import ArgumentParser
from ..data.preprocess import Preprocessing
from .checks import check_settings


def setting(default, help: str = "", **argparse_options):
    """A dataclass field that is also a flag: its default, its ``--help`` text and extra argparse options."""
    metadata = {"help": help, **argparse_options}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataSettings:
    """Where the training images come from and how raw CelebA images become them."""

    dataset_name: str | None = setting(None, "Hub id or local path of a dataset in the flwrlabs/celeba parquet "
                                             "layout, e.g. flwrlabs/celeba")
    dataset_config_name: str | None = setting(None, 'e.g. "img_align+identity+attr"')
    train_data_dir: str | None = setting(None, "local CelebA folder in the official layout")
    split: str = setting("train")
    resolution: int = setting(64)
    crop_size: int = setting(140, "centered square crop (source pixels) before resizing")
    crop_offset_y: int = setting(0)
    random_flip: bool = setting(True)
    shuffle_buffer_size: int = setting(1000)
    data_timeout_minutes: float = setting(10.0, "end the run with an error when one batch takes longer than this "
                                                "to arrive (a stuck data stream; 0 = wait forever)")
    skip_corrupt_images: bool = setting(False, "count and report undecodable images instead of stopping on the "
                                               "first one")

    @property
    def preprocessing(self) -> Preprocessing:
        """How raw CelebA images become this run's training images (saved with every pipeline it writes)."""
        return Preprocessing(resolution=self.resolution, crop_size=self.crop_size, crop_offset_y=self.crop_offset_y)


@dataclass
class ModelSettings:
    """The UNet2DModel's architecture, and the weights it starts from."""

    block_out_channels: list[int] = setting([64, 128, 128, 256])
    layers_per_block: int = setting(2)
    down_block_types: list[str] = setting(["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"])
    up_block_types: list[str] = setting(["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"])
    attention_head_dim: int | None = setting(None)
    norm_num_groups: int = setting(32, "GroupNorm groups at every level; each level needs >= 2 channels per group "
                                       "(pipeline/models/architecture.py)")
    allow_instance_norm: bool = setting(False, "build a UNet with 1 channel per GroupNorm group anyway (an "
                                               "InstanceNorm: the denoiser cannot see its input's mean colour or "
                                               "noise scale)")
    dropout: float = setting(0.0)
    pixel_unshuffle: int = setting(1, "f > 1: the UNet works on f x f pixel-unshuffled images (resolution/f square, "
                                      "3 f^2 channels), at the cost of a resolution/f model")
    attribute_conditioning: bool = setting(False, "train an attribute model: CelebA's 40 attributes, through a "
                                                  "zero-initialised AttributeEncoder, offset the UNet's time "
                                                  "embedding (a fine-tune: --init_from)")
    init_from: str | None = setting(None, "a saved pipeline folder whose UNet (and attribute encoder, if any) "
                                          "weights start this run; its architecture must equal the flags'")


@dataclass
class DiffusionSettings:
    """The noising process and the training objective."""

    ddpm_num_steps: int = setting(1000)
    ddpm_beta_schedule: str = setting("linear", "a diffusers beta_schedule (linear, squaredcos_cap_v2, ...) or "
                                                "shifted_cosine (pipeline/models/noise_schedules.py)")
    shifted_cosine_base_resolution: int | None = setting(None, "shifted_cosine: log-SNR shifted by "
                                                               "2 log(base/resolution) (default: no shift)")
    prediction_type: str = setting("epsilon", choices=["epsilon", "v_prediction", "sample"])
    rescale_betas_zero_snr: bool = setting(False, "rescale the betas to zero terminal SNR (Lin et al. 2024; use "
                                                  "with v_prediction)")
    preconditioning: str = setting("ddpm", "ddpm: discrete-time DDPM noising of --prediction_type; edm: Karras et "
                                           "al. 2022 (c_skip/c_out/c_in/c_noise of diffusers' EDMEulerScheduler, "
                                           "log-normal sigma, EDM loss weight), saved with that scheduler",
                                   choices=["ddpm", "edm"])
    edm_sigma_data: float = setting(0.5)
    edm_p_mean: float = setting(-1.2, "edm: mean of log sigma in training")
    edm_p_std: float = setting(1.2, "edm: std of log sigma in training")
    snr_gamma: float | None = setting(None, "min-SNR-gamma loss weighting (Hang et al. 2023)")
    attribute_unspecified_prob: float = setting(0.5, "each attribute of a training label is left unspecified (0) "
                                                     "with this probability, so that unnamed attributes mean 'any'")
    attribute_dropout: float = setting(0.1, "a whole label is dropped with this probability: the unconditional "
                                            "model of classifier-free guidance")


@dataclass
class OptimizerSettings:
    """Batch, steps, AdamW, the learning-rate schedule, the EMA and the arithmetic they run in."""

    train_batch_size: int = setting(32, "per process")
    gradient_accumulation_steps: int = setting(1)
    max_train_steps: int = setting(1000)
    max_train_minutes: float | None = setting(None, "also stop (checkpoint, save the pipeline) once the run's "
                                                    "wall-clock time, summed over resumes, reaches this budget")
    learning_rate: float = setting(2e-4)
    attribute_encoder_learning_rate: float | None = setting(
        None, "an attribute model's AttributeEncoder: its own peak learning rate, under the same schedule (default: "
              "--learning_rate); a zero-initialised encoder fine-tuned at the UNet's rate barely moves")
    lr_scheduler: str = setting("cosine", "a diffusers schedule (cosine, constant_with_warmup, ...) or "
                                          "warmup_stable_decay (pipeline/training/lr_schedules.py)")
    lr_warmup_steps: int = setting(500)
    lr_decay_steps: int | None = setting(None, "warmup_stable_decay: the final N steps before --max_train_steps "
                                               "anneal the LR linearly to 0; a constant-LR run may be resumed with "
                                               "a cooldown")
    adam_beta1: float = setting(0.9)
    adam_beta2: float = setting(0.999)
    adam_weight_decay: float = setting(0.0)
    adam_epsilon: float = setting(1e-8)
    adam_fused: bool = setting(False, "fused AdamW kernel (same update; one pass over all parameters instead of "
                                      "~10 ops each)")
    max_grad_norm: float = setting(1.0)
    use_ema: bool = setting(True)
    ema_inv_gamma: float = setting(1.0)
    ema_power: float = setting(3 / 4)
    ema_max_decay: float = setting(0.9999)
    ema_foreach: bool = setting(False, "update the EMA weights with torch._foreach ops (EMAModel(foreach=True))")
    mixed_precision: str | None = setting(None, "default: the launcher's (accelerate launch --mixed_precision, or "
                                                "accelerate config); bf16 on CPUs, fp16 only on GPUs",
                                          choices=["no", "fp16", "bf16"])
    channels_last: bool = setting(False, "NHWC memory format (experiments/train_ablation.py measures whether it "
                                         "helps on your machine)")
    seed: int = setting(0)


@dataclass
class SamplingSettings:
    """The sample grids and the FID measured while training (EMA weights, fixed seed)."""

    save_images_steps: int = setting(0, "sample grid every N steps (0 = off)")
    num_validation_images: int = setting(16)
    validation_scheduler: str | None = setting(None, "sampler of the sample grids (default: DPM-Solver++(2M), "
                                                     "dpm++2m or edm-dpm++2m for the model's family)")
    validation_inference_steps: int = setting(25)
    eval_fid_every: int = setting(0, "FID of EMA samples every N steps (0 = off)")
    eval_fid_num_samples: int = setting(1000)
    eval_fid_scheduler: str | None = setting(None, "sampler of the in-training FID (default: as "
                                                   "--validation_scheduler)")
    eval_fid_steps: int = setting(20)
    eval_fid_reference_images: int | None = setting(None, "real images in the reference statistics (default: all "
                                                          "of the training split; computed once, then cached)")


@dataclass
class OutputSettings:
    """Where the run writes: logs, checkpoints, the final pipeline, and the Hub."""

    output_dir: str = setting("runs/celeba")
    logger: str = setting("tensorboard", choices=["tensorboard", "none"])
    logging_dir: str = setting("logs", "under output_dir")
    checkpointing_steps: int = setting(500)
    checkpointing_minutes: float = setting(0.0, "also checkpoint every N minutes")
    checkpoints_total_limit: int = setting(2)
    resume_from_checkpoint: str | None = setting(None, 'a checkpoint folder or "latest"')
    push_to_hub: bool = setting(False, "publish the final pipeline with pipeline.publish")
    hub_model_id: str | None = setting(None)
    hub_token: str | None = setting(None)
    hub_private_repo: bool = setting(False)


GROUPS = {"data": DataSettings, "model": ModelSettings, "diffusion": DiffusionSettings,
          "optimizer": OptimizerSettings, "sampling": SamplingSettings, "output": OutputSettings}


@dataclass
class TrainingSettings:
    """All settings of one run, by concern; ``config`` is the YAML file they were read from, if any."""

    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    config: str | None = None

    def flat(self) -> dict:
        """Every setting by its flag name (for trackers and logs)."""
        values = {"config": self.config}
        for group in GROUPS:
            values.update(dataclasses.asdict(getattr(self, group)))
        return values


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field, in one argument group per concern (the order of ``--help``)."""
    for cls in GROUPS.values():
        group = parser.add_argument_group(cls.__doc__.split(":")[0].rstrip("."))
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            options = dict(item.metadata)
            kind = hints[item.name]
            if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
                kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
            if kind is bool:
                options["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(kind) is list:
                options.update(type=typing.get_args(kind)[0], nargs="+")
            else:
                options["type"] = kind
            default = item.default if item.default_factory is dataclasses.MISSING else item.default_factory()
            group.add_argument(f"--{item.name}", default=default, **options)


def build_parser(description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of a training run: ``--config`` plus one flag per setting."""
    parser = ArgumentParser(description=description, prog=prog)
    parser.add_argument("--config", type=str, default=None, help="YAML file of defaults for any flag below")
    add_setting_flags(parser)
    return parser


def from_namespace(values: argparse.Namespace) -> TrainingSettings:
    """The parsed flags, sorted into their groups; a sampler left unset becomes the model family's DPM-Solver++(2M)."""
    flat = vars(values)
    groups = {name: cls(**{item.name: flat[item.name] for item in dataclasses.fields(cls)})
              for name, cls in GROUPS.items()}
    settings = TrainingSettings(**groups, config=flat.get("config"))
    deterministic = "edm-dpm++2m" if settings.diffusion.preconditioning == "edm" else "dpm++2m"
    sampling = settings.sampling
    sampling.validation_scheduler = sampling.validation_scheduler or deterministic
    sampling.eval_fid_scheduler = sampling.eval_fid_scheduler or deterministic
    return settings


def parse_settings(argv=None, description: str | None = None, prog: str | None = None,
                   require_data: bool = True) -> TrainingSettings:
    """Flags override the YAML config, which overrides the defaults; a bad setting exits with one line (status 2)."""
    parser = build_parser(description, prog)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        if not os.path.isfile(known.config):
            parser.error(f"config file not found: {known.config}")
        with open(known.config) as handle:
            config = yaml.safe_load(handle) or {}
        names = {action.dest for action in parser._actions}
        for key in sorted(set(config) - names):
            close = difflib.get_close_matches(key, names, n=1)
            parser.error(f"{known.config}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        parser.set_defaults(**config)
    settings = from_namespace(parser.parse_args(argv))
    try:
        check_settings(settings, require_data)
    except ValueError as error:
        parser.error(str(error))
    return settings


def load_settings(config: str, *flags: str) -> TrainingSettings:
    """The settings of ``config`` (a YAML file) with ``flags`` on top, without a data source: for building a run's
    UNet, scheduler and optimizer outside a training run."""
    return parse_settings(["--config", config, *flags], require_data=False)
