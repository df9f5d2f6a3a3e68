"""Train a diffusers UNet2DModel on CelebA with DDPM noising, under `accelerate launch` (or torchrun on CPUs).

    accelerate launch --num_cpu_threads_per_process 2 train_unet.py --config configs/celeba64_cpu.yaml \
        --train_data_dir ../shared/celeba

The YAML gives defaults, command-line flags override them. Flag names follow diffusers'
examples/unconditional_image_generation/train_unconditional.py where the concept is the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from pipeline import CelebADiffusionPipeline
from pipeline.cli import run_cli
from pipeline.data.celeba import TrainingBatch, TrainStream, load_celeba
from pipeline.data.images import make_grid
from pipeline.data.preprocess import random_hflip, to_model_range
from pipeline.denoisers import PixelUnshuffleDenoiser
from pipeline.evaluation.reference_stats import load_or_compute_reference
from pipeline.evaluation.scores import fid_against_reference
from pipeline.generate import generate
from pipeline.model_card import folder_card
from pipeline.models.architecture import AttributeConditionedUNet, drop_attributes
from pipeline.pipeline_folder import save_pipeline_folder, weights_checksum
from pipeline.publish import prepare_repo, publish
from pipeline.training.build import build_model_and_scheduler, build_optimizer_and_ema
from pipeline.training.checkpoints import (
    list_checkpoints,
    process_state_files,
    read_process_state,
    remove_stale_temporaries,
    resolve_checkpoint,
    restore_newest_readable,
    save_checkpoint_atomically,
)
from pipeline.training.losses import diffusion_loss
from pipeline.training.lr_schedules import build_lr_scheduler, check_resumed_learning_rate
from pipeline.training.run_control import DataWatchdog, StopSignals
from pipeline.training.settings import TrainingSettings, parse_settings
from pipeline.training_log import LossMeter, TrainingClock, append_record, read_training_log

logger = get_logger(__name__)


def parse_args(argv=None) -> TrainingSettings:
    """The run's settings: flags override the YAML config (``--config``), which overrides the defaults."""
    return parse_settings(argv, description=__doc__)


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


def training_step(accelerator, model, optimizer, lr_scheduler, noise_scheduler, pixels, settings: TrainingSettings,
                  attributes: torch.Tensor | None = None) -> torch.Tensor:
    """One (micro-)batch: flip, noise, loss, backward; optimizer and lr steps when gradients are synchronised.
    ``attributes`` (the batch's labels) condition an attribute model, partly dropped for classifier-free guidance."""
    diffusion, factor = settings.diffusion, settings.model.pixel_unshuffle
    clean = to_model_range(pixels).to(accelerator.device)
    conditioning = None
    if settings.model.attribute_conditioning:
        labels = drop_attributes(attributes, diffusion.attribute_unspecified_prob, diffusion.attribute_dropout)
        conditioning = {"class_labels": labels.to(accelerator.device)}
    if settings.optimizer.channels_last:
        clean = clean.contiguous(memory_format=torch.channels_last)
    if settings.data.random_flip:
        clean = random_hflip(clean)
    denoiser = model if factor == 1 else PixelUnshuffleDenoiser(model, factor)
    with accelerator.accumulate(model):
        loss = diffusion_loss(denoiser, noise_scheduler, clean, diffusion, conditioning)
        if torch.isfinite(loss):  # a non-finite loss is reported by the caller, before any update
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), settings.optimizer.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@contextlib.contextmanager
def ema_pipeline(accelerator, model, ema, noise_scheduler, settings: TrainingSettings):
    """The pipeline with the EMA weights swapped in for the duration of the block (training weights restored)."""
    unet = accelerator.unwrap_model(model)
    if ema is not None:
        ema.store(unet.parameters())
        ema.copy_to(unet.parameters())
    unet.eval()
    try:
        parts = ({"unet": unet.unet, "attribute_encoder": unet.encoder} if isinstance(unet, AttributeConditionedUNet)
                 else {"unet": unet})
        pipe = CelebADiffusionPipeline(**parts, scheduler=noise_scheduler,
                                       pixel_unshuffle=settings.model.pixel_unshuffle,
                                       preprocessing=settings.data.preprocessing.to_dict())
        pipe.set_progress_bar_config(disable=True)
        yield pipe
    finally:
        if ema is not None:
            ema.restore(unet.parameters())
        unet.train()


def save_ema_pipeline(accelerator, model, ema, noise_scheduler, settings: TrainingSettings, folder) -> None:
    """The shippable pipeline (EMA weights, training scheduler): at the end of a run and inside every checkpoint, so
    the latest weights can be published or committed while the run goes on."""
    with ema_pipeline(accelerator, model, ema, noise_scheduler, settings) as pipe:
        save_pipeline_folder(pipe, folder)


def sampling_precision(accelerator) -> str:
    """The precision of the sample grids and the in-training FID: bf16 autocast when the run trains in bf16."""
    return "bf16" if accelerator.mixed_precision == "bf16" else "no"


def save_sample_grid(accelerator, model, ema, noise_scheduler, settings: TrainingSettings, step):
    """A grid of EMA samples for TensorBoard and output_dir/samples/."""
    sampling = settings.sampling
    with ema_pipeline(accelerator, model, ema, noise_scheduler, settings) as pipe:
        images, _ = generate(pipe, sampling.num_validation_images, sampling.validation_scheduler,
                             sampling.validation_inference_steps, seed=settings.optimizer.seed, progress=False,
                             mixed_precision=sampling_precision(accelerator))
    folder = Path(settings.output.output_dir, "samples")
    folder.mkdir(parents=True, exist_ok=True)
    make_grid(images).save(folder / f"step_{step:07d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("samples", images, step, dataformats="NHWC")  # uint8 is read as 0..255


def evaluate_fid(accelerator, model, ema, noise_scheduler, settings: TrainingSettings, reference) -> float:
    """FID of EMA samples (fixed seed) against the cached real reference statistics."""
    sampling = settings.sampling
    with ema_pipeline(accelerator, model, ema, noise_scheduler, settings) as pipe:
        images, _ = generate(pipe, sampling.eval_fid_num_samples, sampling.eval_fid_scheduler,
                             sampling.eval_fid_steps, seed=settings.optimizer.seed, progress=False,
                             mixed_precision=sampling_precision(accelerator))
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


def make_accelerator(settings: TrainingSettings) -> Accelerator:
    """The Accelerator of this process (CPU/gloo without a GPU), with logging set up and CPU-thread advice given."""
    on_gpu = torch.cuda.is_available() or torch.backends.mps.is_available()
    mixed_precision, precision_source = resolve_mixed_precision(settings.optimizer.mixed_precision, on_gpu)
    output = settings.output
    accelerator = Accelerator(
        cpu=not on_gpu,  # without an accelerator, cpu=True lets torchrun start a gloo (MULTI_CPU) process group
        gradient_accumulation_steps=settings.optimizer.gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=None if output.logger == "none" else output.logger,
        project_config=ProjectConfiguration(project_dir=output.output_dir,
                                            logging_dir=os.path.join(output.output_dir, output.logging_dir)),
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
    the state its checkpoints save with them (step, clock, loss meter)."""

    def __init__(self, settings: TrainingSettings, accelerator: Accelerator, **optimizer_overrides):
        """``optimizer_overrides`` go to ``torch.optim.AdamW`` (benchmarks compare its implementations)."""
        self.settings, self.accelerator = settings, accelerator
        data, opt, processes = settings.data, settings.optimizer, accelerator.num_processes
        set_seed(opt.seed)  # identical initial weights on every process
        model, self.noise_scheduler = build_model_and_scheduler(settings)
        set_seed(opt.seed, device_specific=True)  # then per-process noise; a resume restores the saved RNG states
        optimizer, self.ema = build_optimizer_and_ema(model, opt, **optimizer_overrides)
        # accelerate steps a prepared scheduler once per process per optimizer step, hence the scaling
        lr_scheduler = build_lr_scheduler(
            opt.lr_scheduler, optimizer, num_warmup_steps=opt.lr_warmup_steps * processes,
            num_training_steps=opt.max_train_steps * processes,
            num_decay_steps=None if opt.lr_decay_steps is None else opt.lr_decay_steps * processes)
        self.stream = TrainStream(
            load_celeba(data.dataset_name, data.dataset_config_name, data.train_data_dir, data.split),
            data.preprocessing, batch_size=opt.train_batch_size, seed=opt.seed,
            shuffle_buffer_size=data.shuffle_buffer_size, rank=accelerator.process_index, world_size=processes,
            skip_corrupt=data.skip_corrupt_images)
        # The stream is already split per process (datasets.distributed), so it is not wrapped by accelerator.prepare.
        self.model, self.optimizer, self.lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        self.step, self.clock, self.losses = 0, TrainingClock(), LossMeter()
        self.training_log = os.path.join(settings.output.output_dir, "training_log.jsonl")
        self.images_per_step = opt.train_batch_size * processes * opt.gradient_accumulation_steps
        self.started, self.start_step = time.perf_counter(), 0  # the throughput clock (``begin``)

    def resume(self, value: str) -> None:
        """Continue from checkpoint ``value`` ("latest": the newest one that reads back); none yet: a new run."""
        output_dir = self.settings.output.output_dir
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
        position and clock."""
        step = int(checkpoint.name.split("-")[1])
        self.accelerator.load_state(str(checkpoint))
        rank = self.accelerator.process_index
        self.stream.load_state_dict(read_process_state(checkpoint, "stream", rank, required=True))
        clock = read_process_state(checkpoint, "clock", rank)
        if clock is not None:
            self.clock.load_state_dict(clock)
        else:
            self.clock.counted_from_step = step
        self.step = step

    def agreed(self, *flags: bool) -> list[bool]:
        """Each flag, true when it is true on any process: every process must take the same checkpoint and stop
        decisions, or collective saves would deadlock."""
        tensor = torch.tensor([float(flag) for flag in flags], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            tensor = self.accelerator.reduce(tensor, reduction="sum")
        return [bool(value > 0) for value in tensor]

    def out_of_time(self) -> bool:
        minutes = self.settings.optimizer.max_train_minutes
        return minutes is not None and self.clock.wall_seconds >= 60 * minutes

    def train_step(self, batch: TrainingBatch) -> float | None:
        """One forward/backward on a batch: the loss once an optimizer step completes, None while accumulating."""
        loss = training_step(self.accelerator, self.model, self.optimizer, self.lr_scheduler, self.noise_scheduler,
                             batch.pixels, self.settings, batch.attributes)
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
        accelerator, settings, output = self.accelerator, self.settings, self.settings.output
        save_checkpoint_atomically(
            accelerator, output.output_dir, self.step, output.checkpoints_total_limit,
            per_process_files=process_state_files(accelerator.process_index, {
                "stream": self.stream.state_dict(), "clock": self.clock.state_dict()}),
            main_process_writer=lambda folder: save_ema_pipeline(
                accelerator, self.model, self.ema, self.noise_scheduler, settings, folder / "pipeline"),
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
        sampling = self.settings.sampling
        fid = evaluate_fid(self.accelerator, self.model, self.ema, self.noise_scheduler, self.settings, reference)
        key = f"fid_{sampling.eval_fid_num_samples}"
        self.accelerator.log({key: fid}, step=self.step)
        append_record(self.training_log, {
            "step": self.step, "images_seen": self.step * self.images_per_step, key: fid,
            "fid_protocol": f"{sampling.eval_fid_scheduler}-{sampling.eval_fid_steps}, "
                            f"{'bf16' if sampling_precision(self.accelerator) == 'bf16' else 'fp32'}, "
                            f"seed {self.settings.optimizer.seed}, "
                            f"reference {reference['num']} train images"})

    def finish(self, first_keys: list[str]) -> None:
        """The end of a run: this process's summary, then (main process) the EMA pipeline with its model card in
        output_dir, published when asked."""
        accelerator, settings, stream = self.accelerator, self.settings, self.stream
        output = settings.output
        accelerator.wait_for_everyone()
        unet = accelerator.unwrap_model(self.model)
        summary = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
                   "global_step": self.step,
                   "images_seen_by_rank": self.step * self.images_per_step // accelerator.num_processes,
                   "first_keys": first_keys[:256], "skipped_corrupt_images": stream.skipped_corrupt,
                   "unet_sha256": weights_checksum(unet)}
        Path(output.output_dir, f"run_summary_rank{accelerator.process_index}.json").write_text(
            json.dumps(summary, indent=1))
        if stream.skipped_corrupt:
            logger.warning("skipped %d corrupt images: %s", len(stream.skipped_corrupt), stream.skipped_corrupt[:20],
                           main_process_only=False)
        if not accelerator.is_main_process:
            return
        save_ema_pipeline(accelerator, self.model, self.ema, self.noise_scheduler, settings, output.output_dir)
        logger.info("saved the %s pipeline to %s", "EMA" if self.ema is not None else "final", output.output_dir)
        try:
            training = read_training_log(self.training_log) if os.path.isfile(self.training_log) else None
        except ValueError:  # a log without checkpoint records (e.g. only FID records): no compute line
            training = None
        name = (output.hub_model_id or Path(output.output_dir).resolve().name).split("/")[-1]
        card = folder_card(Path(output.output_dir), name, [], training)
        Path(output.output_dir, "README.md").write_text(card)  # every output folder is a publishable Hub folder
        if output.push_to_hub:
            url = publish(output.output_dir, output.hub_model_id, output.hub_private_repo, output.hub_token)
            logger.info("published to %s", url)


def main(argv=None):
    settings = parse_args(argv)
    data, sampling, output = settings.data, settings.sampling, settings.output
    max_steps = settings.optimizer.max_train_steps
    if output.push_to_hub and int(os.environ.get("RANK", "0")) == 0:  # before hours of training, not after
        prepare_repo(output.hub_model_id, output.hub_private_repo, output.hub_token)
    accelerator = make_accelerator(settings)
    run = Run(settings, accelerator)
    reference = None
    if sampling.eval_fid_every and accelerator.is_main_process:
        reference = load_or_compute_reference(data.train_data_dir, data.dataset_name, data.dataset_config_name,
                                              data.split, data.preprocessing,
                                              num_images=sampling.eval_fid_reference_images)
    if output.resume_from_checkpoint:
        run.resume(output.resume_from_checkpoint)
    if accelerator.is_main_process:
        os.makedirs(output.output_dir, exist_ok=True)
        accelerator.init_trackers("train_unet", config={k: str(v) for k, v in settings.flat().items()})

    stop = StopSignals().install()
    progress = tqdm(total=max_steps, initial=run.step, disable=not accelerator.is_local_main_process,
                    desc="train", unit="step")
    first_keys, last_checkpoint_time = [], time.monotonic()
    run.begin()
    batches = iter(run.stream)
    watchdog = DataWatchdog(data.data_timeout_minutes).start()
    [time_is_up] = run.agreed(run.out_of_time())  # a resumed run whose budget is already spent trains no step
    while run.step < max_steps and not time_is_up:
        with watchdog.waiting():
            batch = next(batches)
        first_keys.extend(batch.keys[:256 - len(first_keys)])
        loss = run.train_step(batch)
        if loss is None:  # accumulating gradients
            continue
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}", img_s=f"{run.images_per_second():.1f}")
        minutes_since_checkpoint = (time.monotonic() - last_checkpoint_time) / 60
        due = (output.checkpointing_steps and run.step % output.checkpointing_steps == 0) or (
            output.checkpointing_minutes and minutes_since_checkpoint > output.checkpointing_minutes
        ) or run.step == max_steps  # the last step too: the log's final record, a resumable end
        checkpoint_due, stop_requested, time_is_up = run.agreed(due, stop.requested, run.out_of_time())
        if sampling.eval_fid_every and run.step % sampling.eval_fid_every == 0 and accelerator.is_main_process:
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
            logger.info("time budget of %s minutes reached at step %d", settings.optimizer.max_train_minutes, run.step)
        if sampling.save_images_steps and run.step % sampling.save_images_steps == 0 and accelerator.is_main_process:
            save_sample_grid(accelerator, run.model, run.ema, run.noise_scheduler, settings, run.step)
    progress.close()
    watchdog.stop()
    run.finish(first_keys)
    end_training_together(accelerator)
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
