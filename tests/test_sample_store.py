"""pipeline.sampling.sample_store: a generation interrupted between batches resumes with exactly the images it would
have made."""

import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, EDMDPMSolverMultistepScheduler

from pipeline.generate import generate, load_pipeline, open_batch_store
from pipeline.pipeline_celeba import CelebADiffusionPipeline
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


def test_batches_of_the_same_settings_are_linked_in_from_another_folder(smoke_pipeline_dir, tmp_path, capsys):
    """An FID run starts from a sweep point's batches of the same settings; folders of other settings are named and
    skipped, and the run's folder ends up holding every batch itself."""
    pipe = load_pipeline(str(smoke_pipeline_dir))
    sweep, other = tmp_path / "sweep", tmp_path / "other"
    first, _ = generate(pipe, 3, progress=False, store=open_batch_store(sweep, pipe, **SETTINGS), **SETTINGS)
    seed_6 = {**SETTINGS, "seed": 6}
    generate(pipe, 2, progress=False, store=open_batch_store(other, pipe, **seed_6), **seed_6)
    capsys.readouterr()
    store = open_batch_store(tmp_path / "fid", pipe, **SETTINGS, reuse=(other, tmp_path / "missing", sweep))
    images, _ = generate(pipe, 5, progress=False, store=store, **SETTINGS)
    messages = capsys.readouterr().err
    assert f"{other}: not reused (seed: 6 there, 5 now)" in messages
    assert f"{tmp_path / 'missing'}: not reused (no settings.json)" in messages
    # sweep's batch 0 (2 images) is batch 0 of this run; its batch 1 holds 1 image, not this run's 2
    assert store.reused == 1 and np.array_equal(images[:2], first[:2])
    assert np.array_equal(images, generate(pipe, 5, progress=False, **SETTINGS)[0])
    shutil.rmtree(sweep)
    assert np.array_equal(read_batches(tmp_path / "fid").images, images)


def test_an_edm_samplers_batches_outlive_a_change_of_the_saved_scheduler(smoke_pipeline_dir, tmp_path):
    """An EDM sampler runs on the model's EDM schedule, whatever scheduler the folder saves as its default: shipping
    another default leaves its images as they were, so its stored batches stay valid, while a VP sampler's (which
    runs on the saved scheduler's schedule) do not."""
    unet = load_pipeline(str(smoke_pipeline_dir)).unet
    edm = CelebADiffusionPipeline(unet=unet, scheduler=EDMDPMSolverMultistepScheduler(sigma_data=0.5))
    ddpm_default = CelebADiffusionPipeline(unet=unet, scheduler=DDPMScheduler(timestep_spacing="trailing"),
                                           edm_schedule=edm.config.edm_schedule)
    settings = {**SETTINGS, "scheduler": "edm-dpm++2m"}
    before, _ = generate(ddpm_default, 4, progress=False, **settings,
                         store=open_batch_store(tmp_path / "sweep", ddpm_default, **settings))
    assert np.array_equal(generate(edm, 4, progress=False, **settings)[0], before)
    store = open_batch_store(tmp_path / "fid", edm, **settings, reuse=(tmp_path / "sweep",))
    assert np.array_equal(generate(edm, 4, progress=False, store=store, **settings)[0], before)
    assert store.reused == 2
    generate(ddpm_default, 2, progress=False, store=open_batch_store(tmp_path / "vp", ddpm_default, **SETTINGS),
             **SETTINGS)
    with pytest.raises(ValueError, match=r"other settings \(train_scheduler: "):
        open_batch_store(tmp_path / "vp", edm, **SETTINGS)
