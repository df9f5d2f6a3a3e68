"""pipeline.sampling.sample_store: a generation interrupted between batches resumes with exactly the images it would
have made."""

import numpy as np
import pytest
import torch

from pipeline.generate import generate, load_pipeline, open_batch_store
from pipeline.sampling.sample_store import read_batches

SETTINGS = {"scheduler": "ddim", "steps": 4, "seed": 5, "batch_size": 2, "mixed_precision": "no"}


def test_resumed_generation_equals_an_uninterrupted_one(smoke_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(smoke_pipeline_dir))
    straight, straight_nfe = generate(pipe, 5, progress=False, **SETTINGS)
    folder = tmp_path / "batches"
    # an earlier run of 3 images: batch 0 (2 images) is reusable, its batch 1 (1 image) is not a batch of this run
    generate(pipe, 3, progress=False, store=open_batch_store(folder, pipe, **SETTINGS), **SETTINGS)
    store = open_batch_store(folder, pipe, **SETTINGS)
    resumed, resumed_nfe = generate(pipe, 5, progress=False, store=store, **SETTINGS)
    assert store.loaded == 1 and np.array_equal(resumed, straight) and resumed_nfe == straight_nfe == 4
    store = open_batch_store(folder, pipe, **SETTINGS)
    again, again_nfe = generate(pipe, 5, progress=False, store=store, **SETTINGS)
    assert store.loaded == 3 and np.array_equal(again, straight) and again_nfe == 4
    assert not list(folder.glob("*.partial"))
    with pytest.raises(ValueError, match=r"holds batches generated with other settings \(steps: 4 there, 5 now\)"):
        open_batch_store(folder, pipe, **{**SETTINGS, "steps": 5})
    with torch.no_grad():
        next(pipe.unet.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match=r"other settings \(unet_sha256: "):
        open_batch_store(folder, pipe, **SETTINGS)


def test_read_batches_returns_the_stored_images_in_order(smoke_pipeline_dir, tmp_path):
    pipe = load_pipeline(str(smoke_pipeline_dir))
    folder = tmp_path / "batches"
    images, nfe = generate(pipe, 5, progress=False, store=open_batch_store(folder, pipe, **SETTINGS), **SETTINGS)
    stored = read_batches(folder)
    assert np.array_equal(stored.images, images) and stored.settings["seed"] == 5
    assert stored.settings["batch_size"] == 2 and stored.nfe == nfe
    (folder / "batch_000001_n2.npz").unlink()
    with pytest.raises(ValueError, match=r"batches \[0, 2\] found; expected 0 .. n-1 without gaps"):
        read_batches(folder)
    with pytest.raises(FileNotFoundError, match="settings.json is missing"):
        read_batches(tmp_path)
