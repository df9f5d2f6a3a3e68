"""benchmarks/attribute_control.py end to end on the fixture: classifier accuracy on held-out images, guided rates."""

import json
import shutil

import pytest
from PIL import Image

from benchmarks.attribute_control import labelled_images, load_classifier, predict
from pipeline.data.preprocess import Preprocessing

from conftest import FIXTURE, run_command, train_args

pytestmark = pytest.mark.slow  # trains a classifier and an attribute model, samples at four guidance weights


def with_heldout_images(tmp_path, count: int = 8):
    """The fixture with its last ``count`` train images moved to the test split."""
    root = tmp_path / "celeba"
    shutil.copytree(FIXTURE, root)
    lines = (root / "list_eval_partition.txt").read_text().splitlines()
    train = [i for i, line in enumerate(lines)
             if line.endswith(" 0") and (root / "img_align_celeba" / line.split()[0]).is_file()]
    for i in train[-count:]:
        lines[i] = lines[i][:-1] + "2"
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def test_classifier_then_control_on_an_attribute_model(smoke_pipeline_dir, tmp_path):
    data = with_heldout_images(tmp_path)
    weights, cache = tmp_path / "classifier.pt", {"CELEBA_DIFFUSION_CACHE": str(tmp_path / "cache")}
    run_command(["benchmarks/attribute_control.py", "classifier", "--train_data_dir", str(data), "--resolution", "32",
                 "--epochs", "2", "--batch_size", "8", "--weights", str(weights), "--out",
                 str(tmp_path / "classifier.json")], env=cache)
    report = json.loads((tmp_path / "classifier.json").read_text())
    assert (report["num_train"], report["num_heldout"]) == (40, 8)
    images, labels = labelled_images(str(data), ("test",), Preprocessing(resolution=32))
    classifier, prep = load_classifier(str(weights))
    accuracy = (predict(classifier, images) == labels).float().mean(dim=0)  # the saved weights give the report
    assert prep.resolution == 32 and report["attributes"]["Smiling"]["accuracy"] == pytest.approx(float(accuracy[31]))
    _, train_labels = labelled_images(str(data), ("train",), Preprocessing(resolution=32))
    majority = (labels == (train_labels.mean(dim=0) > 0.5).float()).float().mean(dim=0)
    assert report["attributes"]["Male"]["majority_accuracy"] == pytest.approx(float(majority[20]))

    model = tmp_path / "attribute-model"
    run_command(train_args(model, "--init_from", smoke_pipeline_dir, "--attribute_conditioning", "--max_train_steps",
                           4), env=cache)
    control_command = ["benchmarks/attribute_control.py", "control", "--model", str(model), "--train_data_dir",
                       str(data), "--attributes", "Smiling", "Male", "--guidance", "0", "3", "--num_samples", "8",
                       "--steps", "4", "--mixed_precision", "no", "--weights", str(weights), "--out",
                       str(tmp_path / "control.json"), "--grid", str(tmp_path / "grid.png"), "--grid_faces", "3",
                       "--resume_dir", str(tmp_path / "batches")]
    run_command(control_command, env=cache)
    control = json.loads((tmp_path / "control.json").read_text())
    with Image.open(tmp_path / "grid.png") as grid:  # 2 attribute rows; 2 weights x 3 faces of 32 px, upscaled 2x
        assert grid.size == ((6 * 34 + 2) * 2, (2 * 34 + 2) * 2)
    again = run_command(control_command, env=cache)  # every batch is reused: the same numbers
    assert again.stderr.count("finished batch(es) found, continuing") == 4
    assert json.loads((tmp_path / "control.json").read_text()) == control
    assert control["samples_per_attribute"] == 4 and set(control["guidance"]) == {"0.0", "3.0"}
    assert control["guidance"]["0.0"]["rate_minus_base"] == {"Smiling": 0.0, "Male": 0.0}
    assert all(0 <= rate <= 1 for row in control["guidance"].values() for rate in row["positive_rate"].values())
    for row in control["guidance"].values():  # every controlled attribute's rate on the faces asked for each one
        assert set(row["found"]) == {"Smiling", "Male"} and set(row["found"]["Male"]) == {"Smiling", "Male"}
        assert all(row["found"][name][name] == row["positive_rate"][name] for name in ("Smiling", "Male"))
    assert control["guidance"]["3.0"]["fid"] > 0
    run_command(["benchmarks/attribute_control.py", "label-gain", "--model", str(model), "--train_data_dir", str(data),
                 "--labels", "999", "500", "--out", str(tmp_path / "gain.json")])
    gain = json.loads((tmp_path / "gain.json").read_text())
    assert gain["num_images"] == 8 and [row["t"] for row in gain["labels"]] == [999, 500]
    assert gain["linear_ceiling"]["num_train"] == 40 and gain["linear_ceiling"]["gain_all_stderr"] >= 0
    for row in gain["labels"]:  # the gains are the mean paired differences of the reported errors
        for name in ("training", "all"):
            assert row[f"gain_{name}"] == pytest.approx(1 - row[f"mse_{name}"] / row["mse_none"])
            assert row[f"gain_{name}_stderr"] >= 0
    unconditional = run_command(["benchmarks/attribute_control.py", "control", "--model", str(smoke_pipeline_dir),
                                 "--train_data_dir", str(data), "--weights", str(weights), "--out",
                                 str(tmp_path / "x.json")], check=False, env=cache)
    assert unconditional.returncode == 2 and "is not an attribute model" in unconditional.stderr
