"""Training img/s on this CPU: diffusers' own training example (A, at fp32 and at bf16) vs. our train_unet.py step
(B), same UNet, batch and threads.

    python benchmarks/train_throughput.py --config configs/celeba64_edm.yaml --train_data_dir ../shared/celeba

Both recipes train the UNet2DModel of ``--config`` at its batch size on the same JPEGs:

A  diffusers' examples/unconditional_image_generation/train_unconditional.py with its defaults: fp32, AdamW
   (lr 1e-4, betas 0.95/0.999, weight decay 1e-6, eps 1e-8; PyTorch's default per-tensor AdamW on CPU), cosine LR
   schedule with 500 warm-up steps, EMAModel(decay 0.9999, EMA warm-up, inv_gamma 1, power 3/4; per-tensor update)
   stepped after every optimizer step, DDPMScheduler.add_noise, gradient clipping at 1.0 through accelerate, and a
   torch DataLoader (shuffle, num_workers=0) over the image files whose transforms re-implement its torchvision
   pipeline with PIL + torch: Resize(resolution) of the shorter side (bilinear, PIL), CenterCrop(resolution)
   (``--center_crop``, as in its README command; RandomCrop otherwise), RandomHorizontalFlip, ToTensor,
   Normalize([0.5], [0.5]). The model is wrapped by accelerate twice: with mixed_precision="no" (A_example_fp32,
   the example's default) and "bf16" (A_example_bf16: what its --mixed_precision bf16 does on a CPU, accelerate's
   bf16 autocast), so that B is compared like for like.
B  train_unet.py's step with the config's settings plus ``--ours_flags`` (default ``--mixed_precision bf16``, the
   precision the launch command gives): TrainStream (decode + crop + resize in
   the training process), accelerate mixed precision, memory format, optimizer and EMA options; the loop body mirrors
   train_unet.main (flip, diffusion_loss, finite check, backward, clip, optimizer, LR schedule, EMA, loss.item()).
   ``--also_ours_flags FLAGS`` adds a third variant "B_also" (the config plus FLAGS), e.g. the settings before the
   ablation: ``--also_ours_flags "--channels_last --no-adam_fused --no-ema_foreach"``.

Every variant runs in its own process (multiprocessing "spawn"), built and warmed up once; then the processes take
turns, ``--repeats`` rounds of ``--steps`` training steps each (one process runs at a time, in a rotating order), so
all variants see the same machine load. Peak RSS = VmHWM of each variant's process (/proc/self/status: the high-water
mark of resident memory of that process only, read after its last step). Each timed round also records how much CPU
the rest of the machine used meanwhile (from /proc/stat minus the variant's own CPU time), to show contention.

Also measured: the data path alone (img/s of A's DataLoader and of B's TrainStream, no training), model FLOPs per
training image (torch.utils.flop_counter.FlopCounterMode over forward + backward of one batch: convolutions and
matmuls, 2 FLOPs per multiply-add) and the achieved GFLOP/s against this CPU's peak (see ``cpu_peak``).
Writes results/bench/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shlex
import statistics
import time

from benchmarks.cpu_ceiling import cpu_peak, share_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


# ------------------------------------------------------------------------------------------------ small helpers
def summary(values):
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def read_proc_stat():
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is included in user)
    return total - idle, total


def vm_hwm_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def load_average():
    return [round(v, 2) for v in os.getloadavg()]


# --------------------------------------------------------------------- A: diffusers' train_unconditional recipe
class DiffusersStyleImages:
    """Map-style dataset over image files with train_unconditional.py's transforms, re-implemented without
    torchvision: Resize(shorter side, bilinear) -> Center/RandomCrop -> RandomHorizontalFlip -> ToTensor ->
    Normalize([0.5], [0.5]). Returns {"input": float32 CHW in [-1, 1]} like its ``transforms`` function."""

    def __init__(self, files, resolution: int, center_crop: bool = True, random_flip: bool = True):
        self.files, self.resolution = files, resolution
        self.center_crop, self.random_flip = center_crop, random_flip

    def __len__(self):
        return len(self.files)

    def transform(self, image):
        import numpy as np
        import torch
        from PIL import Image

        size = self.resolution
        width, height = image.size
        # Resize(size): the shorter side becomes `size`, the longer one int(size * long / short), as torchvision does
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.BILINEAR)
        if self.center_crop:  # torchvision rounds the offsets: int(round((h - size) / 2))
            top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        else:  # RandomCrop draws the corner from torch's global RNG
            top = int(torch.randint(0, new_h - size + 1, size=(1,)).item())
            left = int(torch.randint(0, new_w - size + 1, size=(1,)).item())
        image = image.crop((left, top, left + size, top + size))
        if self.random_flip and torch.rand(1) < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        tensor = torch.from_numpy(np.array(image, np.uint8, copy=True)).view(size, size, 3)  # ToTensor
        tensor = tensor.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return (tensor - 0.5) / 0.5  # Normalize([0.5], [0.5])

    def __getitem__(self, index):
        from PIL import Image

        image = Image.open(self.files[index])  # what datasets' Image feature does for a local file
        image.load()
        return {"input": self.transform(image.convert("RGB"))}


def build_diffusers_recipe(settings, spec):
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(spec.get("seed", 0))
    accelerator = Accelerator(cpu=True, mixed_precision=spec.get("mixed_precision", "no"))
    unet = settings.model
    model = UNet2DModel(
        sample_size=settings.data.resolution, in_channels=3, out_channels=3, layers_per_block=unet.layers_per_block,
        block_out_channels=tuple(unet.block_out_channels), down_block_types=tuple(unet.down_block_types),
        up_block_types=tuple(unet.up_block_types), attention_head_dim=unet.attention_head_dim,
        norm_num_groups=unet.norm_num_groups, dropout=unet.dropout,
    )
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    image_dir = os.path.join(spec["train_data_dir"], "img_align_celeba")
    files = sorted(os.path.join(image_dir, f) for f in os.listdir(image_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    dataset = DiffusersStyleImages(files, settings.data.resolution, center_crop=spec.get("center_crop", True),
                                   random_flip=spec.get("random_flip", True))
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec["batch_size"], shuffle=True, num_workers=0)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500,
                                 num_training_steps=len(loader) * 100)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4,
                   model_cls=UNet2DModel, model_config=model.config)
    state = {"batches": iter(loader)}

    def next_batch():
        try:
            return next(state["batches"])
        except StopIteration:
            state["batches"] = iter(loader)
            return next(state["batches"])

    def train_step():
        model.train()
        clean = next_batch()["input"]
        noise = torch.randn(clean.shape, dtype=clean.dtype, device=clean.device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (clean.shape[0],),
                                  device=clean.device).long()
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        with accelerator.accumulate(model):
            prediction = model(noisy, timesteps).sample
            loss = F.mse_loss(prediction.float(), noise.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            ema.step(model.parameters())
        return loss.detach().item()

    def data_batch():
        return next_batch()["input"]

    def flop_batch():
        clean = next_batch()["input"]
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, 1000, (clean.shape[0],))
        loss = F.mse_loss(model(noise_scheduler.add_noise(clean, noise, timesteps), timesteps).sample.float(), noise)
        loss.backward()
        optimizer.zero_grad()

    return {"train": train_step, "data": data_batch, "flops": flop_batch}


# ------------------------------------------------------------------------------------ B: train_unet.py's step
def build_ours_recipe(settings, spec):
    """train_unet.py's own ``Run`` for the flags in ``settings`` (config + overrides), stepped as its main loop steps
    it; ``spec`` may change the AdamW implementation ("adam_foreach"), the attention processor ("attention":
    "classic") or compile the model ("compile": a torch.compile mode or "default") for the ablations."""
    import torch

    from pipeline.data.preprocess import to_model_range
    from pipeline.training.losses import diffusion_loss
    from train_unet import Run, make_accelerator

    overrides = {"foreach": spec["adam_foreach"]} if spec.get("adam_foreach") is not None else {}
    run = Run(settings, make_accelerator(settings), **overrides)
    if spec.get("attention") == "classic":
        from diffusers.models.attention_processor import Attention, AttnProcessor

        for module in run.model.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor())
    if spec.get("compile"):
        run.model = torch.compile(run.model, mode=None if spec["compile"] == "default" else spec["compile"])
    run.begin()
    batches = iter(run.stream)

    def train_step():
        return run.train_step(next(batches))

    def data_batch():
        return to_model_range(next(batches).pixels)

    def flop_batch():
        loss = diffusion_loss(run.model, run.noise_scheduler, data_batch(), settings.diffusion)
        loss.backward()
        run.optimizer.zero_grad(set_to_none=True)

    return {"train": train_step, "data": data_batch, "flops": flop_batch,
            "eval": lambda: fixed_batch_loss(run, settings)}


def fixed_batch_loss(run, settings, num_images: int = 64) -> float:
    """fp32 training loss of the raw (unwrapped, no autocast) model on a fixed batch with fixed noise and noise
    levels, drawn from a separate stream and generator so that the run's RNG and data order are untouched."""
    import torch

    from pipeline.data.celeba import TrainStream, load_celeba
    from pipeline.data.preprocess import to_model_range
    from pipeline.training.losses import diffusion_loss

    if not hasattr(run, "fixed_batch"):
        data, seed = settings.data, settings.optimizer.seed
        stream = TrainStream(load_celeba(data.dataset_name, data.dataset_config_name, data.train_data_dir,
                                         data.split), data.preprocessing, batch_size=num_images, seed=seed + 12345,
                             shuffle_buffer_size=100)
        run.fixed_batch = (to_model_range(next(iter(stream)).pixels), seed + 1)
    clean, noise_seed = run.fixed_batch
    raw = run.accelerator.unwrap_model(run.model, keep_torch_compile=False)
    autocast_forward, original = raw.forward, raw.__dict__.get("_original_forward")
    raw.eval()
    state = torch.random.get_rng_state()
    try:
        if original is not None:  # accelerate's mixed precision wraps forward in autocast: evaluate without it
            raw.forward = original
        torch.manual_seed(noise_seed)  # the same noise and noise levels at every call
        with torch.no_grad():
            loss = diffusion_loss(raw, run.noise_scheduler, clean, settings.diffusion).item()
    finally:
        raw.forward = autocast_forward
        torch.random.set_rng_state(state)
        raw.train()
    return loss


# -------------------------------------------------------------------------------------------- worker processes
def ours_settings(spec):
    from pipeline.training.settings import load_settings

    flags = ["--train_data_dir", spec["train_data_dir"], "--logger", "none", *shlex.split(spec.get("flags", ""))]
    if spec.get("batch_size"):
        flags += ["--train_batch_size", str(spec["batch_size"])]
    return load_settings(spec["config"], *flags)


def worker(conn, spec):
    """Build one variant, warm it up, then serve ("train", n) / ("data", n) / ("flops",) / ("eval",) / ("stop",)
    commands. ``spec["env"]`` is applied before torch is imported (OpenMP reads it once, at start-up)."""
    os.environ.update(spec.get("env", {}))
    import torch

    threads, interop = spec.get("threads"), spec.get("interop_threads")
    if interop:
        torch.set_num_interop_threads(interop)
    if threads:
        torch.set_num_threads(threads)
    if spec.get("inductor_cache_dir"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = spec["inductor_cache_dir"]
    try:
        settings = ours_settings(spec)
        opt = settings.optimizer
        spec["batch_size"] = opt.train_batch_size
        started = time.perf_counter()
        build = build_diffusers_recipe if spec["recipe"] == "diffusers" else build_ours_recipe
        recipe = build(settings, spec)
        train_step = recipe["train"]
        setup_s = time.perf_counter() - started
        warmup = []
        for _ in range(spec.get("warmup", 3)):
            started = time.perf_counter()
            train_step()
            warmup.append(time.perf_counter() - started)
        precision = (spec.get("mixed_precision", "no") if spec["recipe"] == "diffusers"
                     else opt.mixed_precision or "no")
        conn.send({"ready": True, "setup_s": setup_s, "warmup_step_s": warmup, "batch_size": opt.train_batch_size,
                   "mixed_precision": precision, "channels_last": spec["recipe"] == "ours" and opt.channels_last,
                   "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()})
        while True:
            command = conn.recv()
            if command[0] == "train":
                cpu, wall = time.process_time(), time.perf_counter()
                losses = [train_step() for _ in range(command[1])]
                conn.send({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                           "images": command[1] * opt.train_batch_size, "losses": losses})
            elif command[0] == "data":
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(command[1]):
                    recipe["data"]()
                conn.send({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                           "images": command[1] * opt.train_batch_size})
            elif command[0] == "flops":
                from torch.utils.flop_counter import FlopCounterMode

                with FlopCounterMode(display=False) as counter:
                    recipe["flops"]()
                conn.send({"flops_per_image": counter.get_total_flops() / opt.train_batch_size})
            elif command[0] == "eval":
                conn.send({"loss": recipe["eval"]()})
            elif command[0] == "stop":
                conn.send({"vm_hwm_kib": vm_hwm_kib()})
                return
    except Exception as error:  # report, so that the parent can say which variant failed
        import traceback

        conn.send({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})


class Variant:
    """A worker process running one recipe; ``run`` sends a command and times the machine around it."""

    def __init__(self, name, spec):
        self.name, self.spec = name, spec
        context = mp.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker, args=(child, spec), daemon=True)
        self.process.start()
        self.info = None

    def wait_ready(self):
        self.info = self.conn.recv()
        if "error" in self.info:
            raise RuntimeError(f"variant {self.name} failed: {self.info['error']}\n{self.info['traceback']}")
        return self.info

    def run(self, *command):
        busy0, total0 = read_proc_stat()
        self.conn.send(command)
        reply = self.conn.recv()
        if "error" in reply:
            raise RuntimeError(f"variant {self.name} failed: {reply['error']}\n{reply['traceback']}")
        busy1, total1 = read_proc_stat()
        if "wall_s" in reply:
            ticks = os.sysconf("SC_CLK_TCK")
            cores = os.cpu_count() or 1
            others = max(0.0, (busy1 - busy0) / ticks - reply["cpu_s"])
            reply["others_cpu_share"] = others / (cores * reply["wall_s"])
            reply["img_per_s"] = reply["images"] / reply["wall_s"]
        return reply

    def stop(self):
        try:
            reply = self.run("stop")
        finally:
            self.process.join(timeout=30)
            if self.process.is_alive():
                self.process.kill()
        return reply


def start_variants(specs: dict, log=print):
    """Start and warm up the workers one after another (a warming worker has the CPU to itself)."""
    variants = {}
    for name, spec in specs.items():
        variants[name] = Variant(name, spec)
        info = variants[name].wait_ready()
        log(f"  ready {name}: setup {info['setup_s']:.1f} s, warm-up steps "
            + ", ".join(f"{s:.1f}" for s in info["warmup_step_s"]) + " s")
    return variants


def interleave(variants: dict, command: str, count: int, repeats: int, log=print):
    """``repeats`` rounds; each round runs ``command`` for ``count`` steps on every variant, in a rotating order."""
    names = list(variants)
    runs = {name: [] for name in names}
    for round_index in range(repeats):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            runs[name].append(variants[name].run(command, count))
        log(f"  round {round_index + 1}/{repeats}: " + ", ".join(
            f"{n} {runs[n][-1]['img_per_s']:.1f} img/s" for n in names) + f"  load {load_average()}")
    return runs


def describe_runs(runs: list) -> dict:
    return {"img_per_s": summary(r["img_per_s"] for r in runs),
            "others_cpu_share": summary(round(r["others_cpu_share"], 3) for r in runs),
            "per_run_img_per_s": [round(r["img_per_s"], 3) for r in runs],
            "per_run_others_cpu_share": [round(r["others_cpu_share"], 3) for r in runs]}


def paired_ratio(runs_b: list, runs_a: list) -> dict:
    """Median and range of per-round ratios (round i of B over round i of A)."""
    return summary(b["img_per_s"] / a["img_per_s"] for a, b in zip(runs_a, runs_b))


# -------------------------------------------------------------------------------------------------------- main
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/celeba64_edm.yaml")
    parser.add_argument("--train_data_dir", default="../shared/celeba")
    parser.add_argument("--ours_flags", default="--mixed_precision bf16", help="train_unet.py flags on top of the "
                        "config for B")
    parser.add_argument("--also_ours_flags", default=None, help="measure a third variant B_also: config + these")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3, help="training steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data_batches", type=int, default=10, help="batches per round of the data-only runs")
    parser.add_argument("--out", default="results/bench/train_throughput.json")
    cli = parser.parse_args()
    os.chdir(ROOT)
    started, load_start = time.time(), load_average()
    print(f"load average at start {load_start}", flush=True)
    base = {"config": cli.config, "train_data_dir": cli.train_data_dir, "warmup": cli.warmup}
    specs = {"A_example_fp32": {**base, "recipe": "diffusers", "mixed_precision": "no"},
             "A_example_bf16": {**base, "recipe": "diffusers", "mixed_precision": "bf16"},
             "B_train_unet": {**base, "recipe": "ours", "flags": cli.ours_flags}}
    if cli.also_ours_flags is not None:
        specs["B_also"] = {**base, "recipe": "ours", "flags": cli.also_ours_flags}
    variants = start_variants(specs)
    try:
        print("training steps, interleaved:", flush=True)
        train_runs = interleave(variants, "train", cli.steps, cli.repeats)
        print("data path alone, interleaved:", flush=True)
        data_names = {"A_example_fp32": "A_dataloader_pil_transforms", "B_train_unet": "B_trainstream"}
        data_runs = interleave({data_names[n]: variants[n] for n in data_names}, "data", cli.data_batches,
                               cli.repeats)
        flops = {name: variants[name].run("flops")["flops_per_image"] for name in data_names}
        stops = {name: variant.stop() for name, variant in variants.items()}
    finally:
        for variant in variants.values():
            if variant.process.is_alive():
                variant.process.kill()
    load_end = load_average()
    peak = cpu_peak()
    result = {
        "config": cli.config, "ours_flags": cli.ours_flags, "train_data_dir": cli.train_data_dir,
        "batch_size": variants["B_train_unet"].info["batch_size"], "repeats": cli.repeats,
        "steps_per_round": cli.steps, "warmup_steps": cli.warmup, "python": platform.python_version(),
        "load_average_start": load_start, "load_average_end": load_end,
        "peak_rss_method": "VmHWM of each variant's own worker process (/proc/self/status), after its last step",
        "variants": {}, "data_path": {}, "flops": {}, "cpu_peak": peak,
    }
    import torch

    result["torch"] = torch.__version__
    for name, variant in variants.items():
        result["variants"][name] = {
            **describe_runs(train_runs[name]), "peak_rss_mib": stops[name]["vm_hwm_kib"] / 1024,
            "setup_s": variant.info["setup_s"], "warmup_step_s": variant.info["warmup_step_s"],
            "threads": variant.info["threads"], "mixed_precision": variant.info["mixed_precision"],
            "channels_last": variant.info["channels_last"], "final_losses": train_runs[name][-1]["losses"],
        }
    ours = result["variants"]["B_train_unet"]["img_per_s"]["median"]
    for precision in ("fp32", "bf16"):
        example = f"A_example_{precision}"
        result[f"ratio_vs_example_{precision}"] = ours / result["variants"][example]["img_per_s"]["median"]
        result[f"ratio_vs_example_{precision}_per_round"] = paired_ratio(train_runs["B_train_unet"],
                                                                        train_runs[example])
    if cli.also_ours_flags is not None:
        result["also_ours_flags"] = cli.also_ours_flags
        result["ratio_B_also_vs_example_bf16"] = (result["variants"]["B_also"]["img_per_s"]["median"]
                                                  / result["variants"]["A_example_bf16"]["img_per_s"]["median"])
    for name, runs in data_runs.items():
        result["data_path"][name] = describe_runs(runs)
    for name, flop in flops.items():
        variant = "A_example_fp32" if name.startswith("A") else "B_train_unet"
        img_s = result["variants"][variant]["img_per_s"]["median"]
        achieved = flop * img_s / 1e9
        bf16 = variants[variant].info["mixed_precision"] == "bf16"
        peak_key = "bf16_peak_gflops" if bf16 else "fp32_peak_gflops"
        result["flops"][variant] = {
            "gflop_per_training_image": flop / 1e9, "achieved_gflops": achieved, "peak_used": peak_key,
            "fraction_of_peak": share_of(achieved, peak[peak_key]),
            "fraction_of_gemm_ceiling": share_of(achieved, peak["gemm_bf16_gflops" if bf16
                                                                else "gemm_fp32_gflops"])}
    result["wall_s"] = time.time() - started
    os.makedirs(os.path.dirname(cli.out), exist_ok=True)
    with open(cli.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: result[k] for k in ("ratio_vs_example_fp32", "ratio_vs_example_bf16", "flops")}, indent=1))
    for name, entry in result["variants"].items():
        s = entry["img_per_s"]
        print(f"{name:24s} {s['median']:7.2f} img/s (min {s['min']:.2f}, max {s['max']:.2f}), "
              f"peak RSS {entry['peak_rss_mib']:.0f} MiB, others' CPU share {entry['others_cpu_share']['median']:.2f}")
    for name, entry in result["data_path"].items():
        s = entry["img_per_s"]
        print(f"{name:28s} {s['median']:8.1f} img/s (min {s['min']:.1f}, max {s['max']:.1f})")
    for precision in ("fp32", "bf16"):
        r = result[f"ratio_vs_example_{precision}_per_round"]
        print(f"ours / example at {precision} = {result[f'ratio_vs_example_{precision}']:.2f} (per-round median "
              f"{r['median']:.2f}, {r['min']:.2f}-{r['max']:.2f})")
    print(f"load {load_start} -> {load_end}")
    print(f"wrote {cli.out}")


if __name__ == "__main__":
    main()
