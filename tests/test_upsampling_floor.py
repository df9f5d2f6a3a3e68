"""experiments/upsampling_floor.py: the FID floor of a low-resolution model, measured with real images."""

import json

import pytest

from experiments.upsampling_floor import upsampling_floor
from pipeline.data.preprocess import Preprocessing

from conftest import FIXTURE, run_command

PREP = Preprocessing(resolution=32)

pytestmark = pytest.mark.slow  # a finished experiment's tool (experiments/): ./run.sh test-slow


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ref_stats"))


def test_no_resolution_loss_gives_back_the_reference_features(cache_dir):
    """At the reference's own resolution the chosen images are re-read and re-encoded: the same features as the
    cached reference rows, so both scores agree (a check that the subset and its preprocessing are the reference's)."""
    result, _ = upsampling_floor(str(FIXTURE), 32, 16, PREP, cache_dir=cache_dir, progress=False)
    full, same = result["scores"]["32px"], result["scores"]["32px_upsampled"]
    for key in ("fid", "kid_mean", "precision", "recall"):
        assert same[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
    assert abs(result["fid_floor_cost"]) < 1e-3 * full["fid"]


def test_lost_resolution_costs_fid_and_is_pictured(cache_dir, tmp_path):
    out = tmp_path / "floor.json"
    run_command(["experiments/upsampling_floor.py", "--train_data_dir", str(FIXTURE), "--resolution", "32",
                 "--low_resolution", "4", "--num_images", "16", "--cache_dir", cache_dir, "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["num_images"] == 16 and result["reference"]["num_images"] == 48
    assert result["scores"]["4px_upsampled"]["fid"] > result["scores"]["32px"]["fid"] and result["fid_floor_cost"] > 0
    from PIL import Image
    width, height = Image.open(result["picture"]).size
    assert width > 8 * 32 and 2 * 32 < height < 3 * 32  # two rows of eight 32x32 images with padding


def test_bad_sizes_are_named(cache_dir):
    with pytest.raises(ValueError, match="--num_images"):
        upsampling_floor(str(FIXTURE), 16, 49, PREP, cache_dir=cache_dir, progress=False)
    with pytest.raises(ValueError, match="--low_resolution"):
        upsampling_floor(str(FIXTURE), 64, 16, PREP, cache_dir=cache_dir, progress=False)
