"""CelebA data: official-layout parsing (partial copy, bad input), the training stream and the Hub-schema export."""

import shutil

import datasets
import numpy as np
import pytest
import torch

from pipeline.data.celeba import (
    ATTRIBUTES,
    FEATURES,
    HUB_CONFIG,
    TrainStream,
    load_celeba,
    load_eval_images,
    official_layout_dataset,
    read_official_layout,
)
from pipeline.data.preprocess import CorruptImageError, Preprocessing
from pipeline.export_hub_layout import export

from conftest import FIXTURE


def test_partial_layout_uses_present_images_and_counts_per_split():
    layout = read_official_layout(FIXTURE)
    assert {split: len(rows) for split, rows in layout.records.items()} == {"train": 48, "valid": 0, "test": 0}
    assert layout.listed == {"train": 64, "valid": 3, "test": 3}
    assert "train: 48 of 64 images present" in layout.summary()
    name, celeb_id, attributes = layout.records["train"][0]
    # 000001.jpg: identity 2880; official attributes -1 1 1 -1 ... (Arched_Eyebrows, Attractive set)
    assert (name, celeb_id) == ("000001.jpg", 2880) and attributes[:3] == (False, True, True)
    assert len(attributes) == 40


def test_stream_has_the_hub_schema_and_metadata():
    stream = official_layout_dataset(FIXTURE, "train")
    assert stream.features == FEATURES
    assert next(iter(stream))["image"].size == (178, 218)  # decoded like the Hub's Image feature
    example = next(iter(load_celeba(train_data_dir=str(FIXTURE))))
    assert example["image"]["path"] == "000001.jpg" and example["celeb_id"] == 2880
    assert example["Attractive"] is True and example["5_o_Clock_Shadow"] is False


@pytest.mark.parametrize("missing", ["", "img_align_celeba", "list_eval_partition.txt", "list_attr_celeba.txt",
                                     "identity_CelebA.txt"])
def test_missing_folder_or_metadata_is_named(tmp_path, missing):
    root = tmp_path / "celeba"
    shutil.copytree(FIXTURE, root)
    target = root / missing if missing else root
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError, match=str(target).replace("+", r"\+")):
        read_official_layout(root)


def test_empty_split_is_an_error_naming_the_split():
    with pytest.raises(ValueError, match="split 'valid'"):
        official_layout_dataset(FIXTURE, "valid")


def corrupt_copy(tmp_path):
    root = tmp_path / "celeba"
    shutil.copytree(FIXTURE, root)
    bad = root / "img_align_celeba" / "000007.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated JPEG
    return root


def test_corrupt_image_raises_an_error_naming_the_file(tmp_path):
    stream = TrainStream(load_celeba(train_data_dir=str(corrupt_copy(tmp_path))), Preprocessing(32), 48, seed=0)
    with pytest.raises(CorruptImageError, match="000007.jpg"):
        next(iter(stream))


def test_skip_corrupt_images_counts_and_reports(tmp_path):
    stream = TrainStream(load_celeba(train_data_dir=str(corrupt_copy(tmp_path))), Preprocessing(32), 47, seed=0,
                         skip_corrupt=True)
    pixels, keys, _ = next(iter(stream))
    assert stream.skipped_corrupt == ["000007.jpg"]
    assert len(set(keys)) == 47 and "000007.jpg" not in keys


def test_stream_epochs_cover_every_image_once_and_depend_only_on_seed():
    def first_epochs(seed):
        stream = TrainStream(load_celeba(train_data_dir=str(FIXTURE)), Preprocessing(32), 8, seed=seed,
                             shuffle_buffer_size=16)
        batches = iter(stream)
        return [key for _ in range(12) for key in next(batches)[1]]

    keys = first_epochs(0)
    assert sorted(keys[:48]) == sorted(keys[48:]) == [f"{i:06d}.jpg" for i in range(1, 49)]
    assert keys[:48] != keys[48:]  # a new shuffle every epoch
    assert keys == first_epochs(0) and keys != first_epochs(1)


def test_stream_resumes_exactly_from_its_state():
    def make():
        return TrainStream(load_celeba(train_data_dir=str(FIXTURE)), Preprocessing(32), 5, seed=3,
                           shuffle_buffer_size=16)

    reference = make()
    batches = iter(reference)
    expected = [next(batches) for _ in range(15)]  # crosses an epoch boundary (48 images)
    interrupted = make()
    batches = iter(interrupted)
    for _ in range(7):
        next(batches)
    resumed = make()
    resumed.load_state_dict(interrupted.state_dict())
    batches = iter(resumed)
    for pixels, keys, attributes in expected[7:]:
        got_pixels, got_keys, got_attributes = next(batches)
        assert got_keys == keys and torch.equal(got_pixels, pixels) and torch.equal(got_attributes, attributes)


def test_processes_read_disjoint_halves():
    def keys(rank):
        stream = TrainStream(load_celeba(train_data_dir=str(FIXTURE)), Preprocessing(32), 4, seed=0, rank=rank,
                             world_size=2)
        batches = iter(stream)
        return [key for _ in range(6) for key in next(batches)[1]]

    rank0, rank1 = keys(0), keys(1)
    assert not set(rank0) & set(rank1) and len(set(rank0) | set(rank1)) == 48


def test_hub_export_round_trip(tmp_path):
    """Exported parquet loads with datasets like the Hub mirror: same schema, pixels, ids and attributes."""
    out = tmp_path / "celeba-hub"
    written = export(str(FIXTURE), str(out))
    assert list(written) == ["train"] and written["train"][0] == 48
    assert sorted(p.name for p in (out / HUB_CONFIG).iterdir()) == ["train-00000-of-00001.parquet"]
    assert "config_name: img_align+identity+attr" in (out / "README.md").read_text()
    hub = datasets.load_dataset(str(out), HUB_CONFIG, split="train", streaming=True)
    assert hub.features == FEATURES
    local = official_layout_dataset(FIXTURE, "train")
    count = 0
    for exported, original in zip(hub, local):
        assert np.array_equal(np.asarray(exported["image"]), np.asarray(original["image"]))
        assert exported["celeb_id"] == original["celeb_id"]
        assert [exported[a] for a in ATTRIBUTES] == [original[a] for a in ATTRIBUTES]
        count += 1
    assert count == 48
    # and it feeds the same downstream code as the local folder
    from_hub = load_eval_images(None, "train", 32, 4, dataset_name=str(out), dataset_config_name=HUB_CONFIG)
    from_folder = load_eval_images(str(FIXTURE), "train", 32, 4)
    assert torch.equal(from_hub, from_folder)


def test_batches_carry_each_image_s_official_attributes():
    layout = read_official_layout(FIXTURE)
    official = {name: attributes for name, _, attributes in layout.records["train"]}
    stream = TrainStream(load_celeba(train_data_dir=str(FIXTURE)), Preprocessing(32), 6, seed=1)
    batch = next(iter(stream))
    assert batch.attributes.dtype == torch.int8 and batch.attributes.shape == (6, len(ATTRIBUTES))
    for key, row in zip(batch.keys, batch.attributes.tolist()):
        assert row == [1 if present else -1 for present in official[key]]
    assert len({tuple(row) for row in batch.attributes.tolist()}) > 1  # real, varied labels
