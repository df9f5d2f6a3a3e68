"""Negative log-likelihood in bits/dim through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and App. D.2).

Data scale. 8-bit images k in {0..255}^D are dequantized with uniform noise, y = k + u, u ~ U(0, 1)^D, a density on
[0, 256)^D, and enter the model as x = y / 128 - 1 in [-1, 1). The reported number is the NLL of y in bits per
dimension,

    bpd = -log2 p_y(y) / D = -log p_x(x) / (D ln 2) + log2(128),

the change of variables dx/dy = 1/128 per dimension being the "+ 7" that score_sde adds as ``7 - inverse_scaler(-1)``.
By Jensen, E_u[bpd] bounds the NLL of the discrete images under the model's bin probabilities from above, which is
what the literature reports for CIFAR-10/ImageNet/CelebA. (Training maps k -> k / 127.5 - 1; the dequantized scale
k / 128 - 1 is 0.4% narrower, the convention of score_sde and other likelihood papers.)

Density. log p_x(x) is the density at t = eps of the ODE flow of the N(0, I) prior at t = 1
(``pipeline.sampling.sde``'s VP SDE). The ODE is solved in y' = x / alpha and l = log sigma_bar as in
``pipeline.sampling.sde.pf_ode_rk45`` (dy'/dl = sigma_bar eps_hat), with the log-density change along the trajectory:

    log p_x(x) = log N(x_1; 0, I) + D (log alpha_1 - log alpha_eps) + int_{l_eps}^{l_1} div_{y'}(sigma_bar eps_hat) dl,
    div_{y'}(sigma_bar eps_hat) = sigma_bar alpha tr(d eps_hat / dx)  ~  sigma_bar alpha xi^T (d eps_hat / dx) xi,

the trace by the Hutchinson-Skilling estimator with one Rademacher (or Gaussian) xi per image, fixed for the whole
solve (so the integrand stays smooth for RK45) and unbiased. eps = 1e-5 is score_sde's; with our time map that is
sigma = 1e-3 (0.13 of a 256-level bin), below the first trained step t = 1/T where the network label is clamped to 0
(see ``pipeline.sampling.sde``). ``--eps 1e-3`` (T = 1000) stops at the first trained step instead: no extrapolation, a
smoother density (sigma ~ 0.01 = 1.3 bins for the linear schedule), typically a slightly higher bpd. Both are valid
upper bounds in the sense above.

CLI: python -m pipeline.likelihood --model PATH --num_images N [--train_data_dir DIR --split test] --out FILE.json
(``--resume_dir DIR`` keeps every finished batch, so that a long run continues after an interruption).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .cli import DEFAULT_DEVICE, ArgumentParser, device_argument
from .sampling.sample_store import BatchStore
from .sampling.sde import VPSDE, NoisePredictor, rk45_in_log_sigma_bar

LEVELS = 256                              # 8-bit data
BPD_OFFSET = math.log2(LEVELS / 2)        # = 7: bits/dim of the map x = y / 128 - 1 from the 256-level scale


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (or integer-valued) images k -> x = (k + U(0, 1)) / 128 - 1 in [-1, 1), float64, on the CPU."""
    k = images.detach().to("cpu", torch.float64)
    u = torch.rand(k.shape, generator=generator, dtype=torch.float64)
    return (k + u) * (2.0 / LEVELS) - 1.0


def _hutchinson_noise(shape, kind: str, generator) -> torch.Tensor:
    if kind == "rademacher":
        return torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=torch.float64)
    raise ValueError(f"unknown Hutchinson noise {kind!r}; choose 'rademacher' or 'gaussian'")


@dataclass
class LogLikelihood:
    log_likelihood: torch.Tensor   # (N,) float64, log p_x(x) in nats, x on the [-1, 1] scale
    nfe: int                       # ODE right-hand-side evaluations (each: one forward + one backward pass)


@torch.inference_mode(False)   # needs autograd even when called from inference-mode code
def log_likelihood(unet, scheduler_config, x: torch.Tensor, *, generator: torch.Generator | None = None,
                   hutchinson: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                   progress: Callable[[float, int], None] | None = None) -> LogLikelihood:
    """Unbiased estimate of log p(x) (nats per image) of continuous images x (NCHW, [-1, 1] scale) at time ``eps``.
    ``progress(fraction, nfe)`` is called at every network evaluation with the fraction of the ODE's span (in
    log sigma_bar) reached so far, for a progress bar of a solve whose step count is not known in advance."""
    sde = VPSDE(scheduler_config)
    model = NoisePredictor(unet, sde)
    n, shape, dim = x.shape[0], tuple(x.shape), math.prod(x.shape[1:])
    device, dtype = model.device, model.state_dtype
    xi = _hutchinson_noise(shape, hutchinson, generator).to(device, dtype)
    alpha_eps, alpha_1 = float(sde.alpha_sigma(eps)[0]), float(sde.alpha_sigma(1.0)[0])
    span = (math.log(sde.sigma_bar(eps)), math.log(sde.sigma_bar(1.0)))

    def derivative(sigma_bar, t, state):
        alpha = 1.0 / math.sqrt(1.0 + sigma_bar**2)
        y = torch.from_numpy(state[:-n]).to(device, dtype).reshape(shape)
        with torch.enable_grad():
            x_t = (alpha * y).requires_grad_(True)
            eps_hat = model(x_t, t)
            (xi_jacobian,) = torch.autograd.grad((eps_hat * xi).sum(), x_t)
        dy = sigma_bar * eps_hat.detach()
        ddelta = sigma_bar * alpha * (xi_jacobian * xi).flatten(1).sum(1)
        if progress is not None:
            progress((math.log(sigma_bar) - span[0]) / (span[1] - span[0]), model.nfe)
        return np.concatenate([dy.flatten().double().cpu().numpy(), ddelta.double().cpu().numpy()])

    state0 = np.concatenate([(x.detach().double().cpu() / alpha_eps).flatten().numpy(), np.zeros(n)])
    end = torch.from_numpy(rk45_in_log_sigma_bar(sde, derivative, state0, eps, 1.0, rtol, atol))
    x_1, delta = alpha_1 * end[:-n].reshape(shape), end[-n:]
    prior = -0.5 * x_1.flatten(1).square().sum(1) - 0.5 * dim * math.log(2 * math.pi)
    logp = prior + dim * (math.log(alpha_1) - math.log(alpha_eps)) + delta
    return LogLikelihood(log_likelihood=logp, nfe=model.nfe)


@dataclass
class BitsPerDim:
    bpd: torch.Tensor   # (N,) per-image bits/dim on the dequantized 256-level scale
    mean: float
    stderr: float       # std(bpd) / sqrt(N): spread over images, dequantization and Hutchinson draws together
    nfe: list[int]      # per batch


def bits_per_dim(unet, scheduler_config, images: torch.Tensor, *, batch_size: int = 64,
                 generator: torch.Generator | None = None, log=None, store: BatchStore | None = None,
                 progress: bool = False, **ode_options) -> BitsPerDim:
    """bits/dim of uint8 images (NCHW): all images are dequantized first (one draw from ``generator``), then each
    batch gets one ODE solve with its own Hutchinson noise. ``ode_options``: hutchinson, rtol, atol, eps.
    ``progress`` shows a bar per solve (the share of its noise span covered, and its NFE so far).
    ``store`` (a ``BatchStore`` keyed by everything above) keeps each finished batch's bits/dim and NFE; a batch
    found there is not solved again, but its Hutchinson noise is still drawn, so a resumed run equals an uninterrupted
    one."""
    x = dequantize(images, generator)
    dim = math.prod(x.shape[1:])
    bpd, nfe = [], []
    batches = math.ceil(len(x) / batch_size)
    for index, start in enumerate(range(0, len(x), batch_size)):
        batch = x[start:start + batch_size]
        finished = store.load(index, len(batch)) if store is not None else None
        if finished is None:
            with tqdm(total=100, desc=f"ODE of batch {index + 1}/{batches}", unit="%", leave=False,
                      disable=not progress, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}") as bar:
                def advance(fraction: float, evaluations: int) -> None:
                    bar.update(max(0, round(100 * min(fraction, 1.0)) - bar.n))
                    bar.set_postfix_str(f"{evaluations} NFE", refresh=False)

                result = log_likelihood(unet, scheduler_config, batch, generator=generator, progress=advance,
                                        **ode_options)
            finished = ((-result.log_likelihood / (dim * math.log(2)) + BPD_OFFSET).numpy(), result.nfe)
            if store is not None:
                store.save(index, *finished)
        else:  # the draw this batch's solve made, so that the next batches get the same noise
            _hutchinson_noise(tuple(batch.shape), ode_options.get("hutchinson", "rademacher"), generator)
        bpd.append(torch.from_numpy(finished[0]))
        nfe.append(finished[1])
        if log is not None:
            log(f"images {start + len(bpd[-1])}/{len(x)}: batch bpd {bpd[-1].mean():.4f}, nfe {nfe[-1]}")
    bpd = torch.cat(bpd)
    stderr = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    return BitsPerDim(bpd=bpd, mean=float(bpd.mean()), stderr=stderr, nfe=nfe)


def main(argv=None) -> dict:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="saved CelebADiffusionPipeline directory")
    parser.add_argument("--num_images", type=int, required=True)
    parser.add_argument("--train_data_dir", default=None)
    parser.add_argument("--split", default="test", choices=["test", "valid", "train"])
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--eps", type=float, default=1e-5,
                        help="ODE start time t of the data (score_sde: 1e-5; 1/T: the first trained step)")
    parser.add_argument("--hutchinson", default="rademacher", choices=["rademacher", "gaussian"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", type=device_argument, default=DEFAULT_DEVICE)
    parser.add_argument("--resume_dir", default=None, help="keep each finished batch's bits/dim here; the same "
                        "command rerun after an interruption continues from the first missing batch, with identical "
                        "results")
    parser.add_argument("--out", default="results/likelihood.json")
    args = parser.parse_args(argv)

    from pipeline.data.celeba import load_eval_images

    from .pipeline_folder import load_pipeline, weights_checksum

    pipe = load_pipeline(args.model)
    pipe.unet.to(args.device).eval().requires_grad_(False)
    unet = pipe.vp_denoiser()  # the image-space VP denoiser (pixel-unshuffled and EDM-trained UNets too)
    size = unet.config.sample_size
    images = load_eval_images(args.train_data_dir, args.split, size if isinstance(size, int) else size[0],
                              args.num_images)
    options = {k: getattr(args, k) for k in ("rtol", "atol", "eps", "hutchinson", "seed", "batch_size")}
    store = BatchStore(args.resume_dir, {
        "unet_sha256": weights_checksum(pipe.unet), "vp_schedule": pipe.vp_schedule, "device": args.device,
        "data": {"train_data_dir": args.train_data_dir, "split": args.split, "num_images": len(images)},
        **options}) if args.resume_dir else None
    start = time.time()
    result = bits_per_dim(unet, pipe.vp_schedule, images, batch_size=args.batch_size,
                          generator=torch.Generator().manual_seed(args.seed),
                          log=lambda line: print(line, file=sys.stderr, flush=True), store=store, progress=True,
                          hutchinson=args.hutchinson, rtol=args.rtol, atol=args.atol, eps=args.eps)
    report = {
        "model": args.model, "unet_sha256": weights_checksum(pipe.unet), "split": args.split,
        "num_images": len(result.bpd),
        "bpd_mean": result.mean, "bpd_stderr": result.stderr, "bpd": result.bpd.tolist(), "nfe_per_batch": result.nfe,
        "options": options, "resumed_batches": store.loaded if store is not None else 0,
        "convention": "uniform dequantization y = k + U(0,1) on the 256-level scale, x = y/128 - 1; "
                      "bits/dim of p_y (= bits/dim of p_x + 7)",
        "seconds": round(time.time() - start, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"bpd = {result.mean:.4f} +- {result.stderr:.4f} over {len(result.bpd)} images -> {out}")
    return report


if __name__ == "__main__":
    main()
