"""python -m pipeline.edit (its main, in this process): inpaint, colorize and interpolate real faces, with their
outputs and one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline import edit
from pipeline.edit import NAMED_MASKS, named_mask

from conftest import FIXTURE, run_in_process

FACE = FIXTURE / "img_align_celeba" / "000001.jpg"


def test_named_masks_leave_something_known_and_something_to_fill():
    for name in NAMED_MASKS:
        mask = named_mask(name, 32)
        assert mask.shape == (1, 1, 32, 32) and 0 < mask.mean() < 1, name
    assert named_mask("left", 32)[..., :16].sum() == 0 and named_mask("left", 32)[..., 16:].min() == 1


def test_inpaint_colorize_interpolate_write_pngs_grid_and_json(smoke_pipeline_dir, tmp_path):
    base = ["--model", str(smoke_pipeline_dir), "--steps", "4"]
    run_in_process(edit.main, ["inpaint", *base, "--celeba", str(FIXTURE), "--split", "train",
                               "--num_images", "2", "--mask", "center", "--method", "repaint", "--jump_length", "2",
                               "--jump_n_sample", "2", "--out", str(tmp_path / "inpaint")])
    record = json.loads((tmp_path / "inpaint" / "edit.json").read_text())
    assert len(record["inputs"]) == 2 and len(record["psnr"]) == 2 and record["nfe"] > 4
    assert record["psnr_where"] == "filled region" and record["method"] == "repaint"
    result = np.asarray(Image.open(tmp_path / "inpaint" / "inpaint_000.png"))
    grid = Image.open(tmp_path / "inpaint" / "grid.png")
    assert result.shape == (32, 32, 3) and grid.size[1] > grid.size[0]          # 2 columns x 3 rows, upscaled x2
    run_in_process(edit.main, ["colorize", *base, "--image", str(FACE), "--method", "pc",
                               "--out", str(tmp_path / "colour")])
    assert json.loads((tmp_path / "colour" / "edit.json").read_text())["nfe"] == 8   # predictor + corrector
    second = FIXTURE / "img_align_celeba" / "000002.jpg"
    out = run_in_process(edit.main, ["interpolate", *base, "--image", str(FACE), str(second),
                                     "--frames", "3", "--out", str(tmp_path / "morph")])
    assert "reconstruction PSNR" in out.stdout and (tmp_path / "morph" / "frame_002.png").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--mask", "nose"], "neither a file nor one of"),
    (["--image", "tests/fixtures/celeba/README.md"], "cannot decode image"),
    (["--steps", "0"], "--steps must be positive"),
])
def test_bad_edit_input_is_one_line_and_writes_nothing(smoke_pipeline_dir, tmp_path, extra, message):
    args = ["inpaint", "--model", str(smoke_pipeline_dir), "--out", str(tmp_path / "out")]
    if "--image" not in extra:
        args += ["--image", str(FACE)]
    result = run_in_process(edit.main, [*args, *extra], check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_face_of_the_wrong_size_is_named(smoke_pipeline_dir, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (50, 40)).save(small)
    result = run_in_process(edit.main, ["colorize", "--model", str(smoke_pipeline_dir), "--image",
                                        str(small), "--out", str(tmp_path / "out")], check=False)
    assert result.returncode == 2 and "small.png is 50x40; give a 32x32 face or an aligned CelebA image" in \
        result.stderr
