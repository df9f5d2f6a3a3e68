"""Generated batches kept on disk, so that a generation longer than a working session resumes where it stopped.

Batch ``i`` of ``pipeline.generate.generate`` depends only on the generation settings and on the seed ``seed + i``,
so a finished batch can be stored and reused: a rerun with the same settings loads the batches that exist, generates
the missing ones, and returns exactly what an uninterrupted run returns (an FID-10k at 25 NFE takes ~1.75 h on two
cores; a 1000-step point days). The settings (UNet weights checksum, training scheduler, sampler and its options,
steps, seed, batch size, eta, precision, device, attributes and guidance) are written next to the batches; a folder
holding batches of other settings is one error naming the settings that differ. Batches of another folder made
with the same settings (the first samples of a sweep point, for an FID-10k of that point) are linked in instead of
being generated again.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

SETTINGS_FILE = "settings.json"


class BatchStore:
    """A folder of finished batches (``batch_<index>_n<size>.npz``: the batch's array, uint8 NHWC images for
    ``generate`` or per-image bits/dim for ``pipeline.likelihood``, and its NFE), each written to a temporary file and
    renamed, so an interruption never leaves a half-written batch.

    Args:
        folder: where the batches live; its ``settings.json`` must equal ``settings`` (ValueError naming what differs).
        settings: everything that decides a batch's array.
        reuse: other batch folders to take finished batches from (hard-linked into ``folder``, copied across file
            systems), used only where their settings equal ``settings``; one that does not is named and skipped.
        ignored: keys of ``settings`` recorded but not compared, because they do not decide the images.
    """

    def __init__(self, folder: str | os.PathLike, settings: dict, reuse: tuple = (), ignored: tuple = ()):
        self.folder = Path(folder)
        self.loaded = self.reused = 0
        settings = json.loads(json.dumps(settings, sort_keys=True))  # as it reads back from disk
        self.ignored = frozenset(ignored)
        path = self.folder / SETTINGS_FILE
        if path.is_file():
            differing = self._differing(json.loads(path.read_text()), settings)
            if differing:
                raise ValueError(f"{self.folder} holds batches generated with other settings ({differing}); "
                                 f"use another folder or delete it")
            found = len(list(self.folder.glob("batch_*.npz")))
            print(f"{self.folder}: {found} finished batch(es) found, continuing", file=sys.stderr)
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(SETTINGS_FILE + ".partial")
            partial.write_text(json.dumps(settings, indent=1, sort_keys=True))
            os.replace(partial, path)
        self.sources = []
        for other in map(Path, reuse):
            other_path = other / SETTINGS_FILE
            differing = (self._differing(json.loads(other_path.read_text()), settings) if other_path.is_file()
                         else f"no {SETTINGS_FILE}")
            if differing:
                print(f"{other}: not reused ({differing})", file=sys.stderr)
            else:
                self.sources.append(other)

    def _differing(self, stored: dict, settings: dict) -> str:
        """The compared settings where ``stored`` and ``settings`` differ, as one phrase ("" if none)."""
        keys = sorted(key for key in (stored.keys() | settings.keys()) - self.ignored
                      if stored.get(key) != settings.get(key))
        return "; ".join(f"{key}: {stored.get(key)!r} there, {settings.get(key)!r} now" for key in keys)

    def _path(self, index: int, size: int) -> Path:
        return self.folder / f"batch_{index:06d}_n{size}.npz"

    def load(self, index: int, size: int) -> tuple[np.ndarray, int] | None:
        """(images, NFE) of batch ``index`` with ``size`` images (from this folder, else linked in from a reused
        one), or None if it was not finished."""
        path = self._path(index, size)
        if not path.is_file():
            source = next((other / path.name for other in self.sources if (other / path.name).is_file()), None)
            if source is None:
                return None
            partial = path.with_name(path.name + ".partial")
            try:
                os.link(source, partial)
            except OSError:
                shutil.copyfile(source, partial)
            os.replace(partial, path)
            self.reused += 1
        with np.load(path) as data:
            self.loaded += 1
            return data["images"], int(data["nfe"])

    def save(self, index: int, images: np.ndarray, nfe: int) -> None:
        path = self._path(index, len(images))
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as handle:
            np.savez(handle, images=images, nfe=np.int64(nfe))
        os.replace(partial, path)


class StoredSamples(NamedTuple):
    """The samples of a batch folder: images (N, H, W, 3) uint8 in batch order, the settings they were generated
    with, and the mean network evaluations per batch (as ``generate`` reports them)."""
    images: np.ndarray
    settings: dict
    nfe: float


def read_batches(folder: str | os.PathLike) -> StoredSamples:
    """All samples of a batch folder, for scoring them again; a folder without settings or with a gap between its
    batches is one error naming it."""
    folder = Path(folder)
    settings_path = folder / SETTINGS_FILE
    if not settings_path.is_file():
        raise FileNotFoundError(f"{folder} is not a folder of stored batches: {SETTINGS_FILE} is missing")
    paths = sorted(folder.glob("batch_*.npz"))
    indices = [int(path.name.split("_")[1]) for path in paths]
    if not paths or indices != list(range(len(paths))):
        raise ValueError(f"{folder}: batches {indices} found; expected 0 .. n-1 without gaps (an unfinished run?)")
    batches, nfes = [], []
    for path in paths:
        with np.load(path) as data:
            batches.append(data["images"])
            nfes.append(int(data["nfe"]))
    return StoredSamples(np.concatenate(batches), json.loads(settings_path.read_text()), float(np.mean(nfes)))
