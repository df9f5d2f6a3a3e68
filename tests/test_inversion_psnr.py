"""benchmarks/inversion_psnr.py: invert-then-decode PSNR of held-out faces per DDIM step count."""

import json

import pytest

from benchmarks.inversion_psnr import main

from conftest import celeba_with_heldout


@pytest.mark.usefixtures("one_torch_thread")
def test_each_step_count_reports_every_face_and_two_evaluations_per_step(smoke_pipeline_dir, tmp_path):
    data, out = celeba_with_heldout(tmp_path / "celeba"), tmp_path / "inversion.json"
    assert main(["--model", str(smoke_pipeline_dir), "--train_data_dir", str(data), "--steps", "4", "2",
                 "--num_images", "3", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["steps"] for row in result["points"]] == [2, 4]
    for row in result["points"]:
        assert row["nfe"] == 2 * row["steps"] and len(row["psnr"]) == 3  # invert, then decode: one call each way
        assert row["psnr_mean"] == pytest.approx(sum(row["psnr"]) / 3)
    with pytest.raises(ValueError, match="holds 6 valid and test faces; --num_images 7 asked"):
        main(["--model", str(smoke_pipeline_dir), "--train_data_dir", str(data), "--num_images", "7",
              "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
