"""benchmarks/edit_fid.py: held-out faces edited by each method, scored against the held-out set beside the floor."""

import json

import numpy as np
import torch
from PIL import Image

from benchmarks.edit_fid import chroma_ratio, heldout_faces
from pipeline.data.preprocess import pipeline_preprocessing
from pipeline.edit import named_mask
from pipeline.pipeline_folder import load_pipeline

from conftest import celeba_with_heldout, run_command


def test_edited_heldout_faces_keep_what_is_known_are_scored_and_resume_exactly(smoke_pipeline_dir, tmp_path):
    data = celeba_with_heldout(tmp_path / "celeba")
    out, batches = tmp_path / "edit", tmp_path / "batches"
    command = ["benchmarks/edit_fid.py", "--model", str(smoke_pipeline_dir), "--train_data_dir", str(data),
               "--tasks", "center", "colorize", "--methods", "repaint", "--num_images", "4", "--steps", "2",
               "--jump_length", "1", "--jump_n_sample", "2", "--batch_size", "2", "--mixed_precision", "no",
               "--resume_dir", str(batches), "--out_dir", str(out)]
    env = {"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")}
    run_command(command, env=env, timeout=600)
    summary = json.loads((out / "edit_fid_summary.json").read_text())
    assert summary["num_images"] == 4 and summary["num_heldout"] == 6
    assert [(p["task"], p["method"]) for p in summary["points"]] == [("center", "repaint"), ("colorize", "repaint")]
    center = json.loads((out / "fid_center_repaint.json").read_text())
    assert (center["jump_length"], center["jump_n_sample"]) == (1, 2) and center["resumed_batches"] == 0
    assert center["nfe_per_batch"] > 2  # RePaint's jump back re-runs a step
    assert center["psnr_where"] == "filled region" and center["fid_above_floor"] == (
        center["scores"]["fid"] - center["floor"]["fid"])
    assert "chroma_ratio" not in center
    assert 0 < json.loads((out / "fid_colorize_repaint.json").read_text())["chroma_ratio"] < 10
    height, width = np.asarray(Image.open(out / "center_repaint.png")).shape[:2]
    assert height < width  # three rows (original, what the model saw, result) of four faces
    # what is known is kept: the pixels outside the hole, and the grey level of a colorized face
    originals = heldout_faces(str(data), pipeline_preprocessing(load_pipeline(str(smoke_pipeline_dir))), 4)
    originals = originals.permute(0, 2, 3, 1).numpy().astype(np.int16)
    known = named_mask("center", 32)[0, 0].bool().numpy()

    def edited(name: str) -> np.ndarray:
        images = np.concatenate([np.load(path)["images"] for path in sorted(batches.glob(f"{name}/batch_*.npz"))])
        assert images.shape == (4, 32, 32, 3)
        return images.astype(np.int16)

    assert np.array_equal(edited("center_repaint")[:, known], originals[:, known])
    colour = edited("colorize_repaint")
    inside = ((colour > 0) & (colour < 255)).all(-1)  # the clamp to [0, 255] moves the grey level of the others
    assert inside.sum() > 100 and np.abs(colour.mean(-1) - originals.mean(-1))[inside].max() <= 1
    again = run_command(command, env=env, timeout=600)
    assert "finished batch(es) found" in again.stderr
    resumed = json.loads((out / "fid_center_repaint.json").read_text())
    assert resumed["scores"] == center["scores"] and resumed["resumed_batches"] == 2


def test_chroma_ratio_measures_the_colour_left_around_the_grey_level():
    faces = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    grey = faces.mean(dim=1, keepdim=True)
    assert chroma_ratio(faces, faces) == 1
    assert chroma_ratio(grey.expand_as(faces), faces) < 1e-7  # a grey face keeps no colour
    assert abs(chroma_ratio(grey + 0.5 * (faces - grey), faces) - 0.5) < 1e-7  # half the chroma of each pixel
