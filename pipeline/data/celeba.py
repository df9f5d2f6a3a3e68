"""CelebA as a `datasets` stream: from the Hub mirror or from a (possibly partial) local copy in the official layout.

Both sources yield examples with the schema of the Hub mirror ``flwrlabs/celeba`` (config
``img_align+identity+attr``): ``image`` (bytes + file name), ``celeb_id`` (int64) and the 40 attributes (bool), so
everything downstream (shuffle, per-process split, preprocessing, batching) is one code path.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node

from ..data.preprocess import CorruptImageError, Preprocessing, decode_image, preprocess_image
from ..models.attribute_encoder import CELEBA_ATTRIBUTES

logger = logging.getLogger(__name__)

HUB_DATASET = "flwrlabs/celeba"
HUB_CONFIG = "img_align+identity+attr"
IMAGE_DIR = "img_align_celeba"
PARTITION_FILE = "list_eval_partition.txt"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
ATTRIBUTES = CELEBA_ATTRIBUTES
FEATURES = datasets.Features(
    {"image": datasets.Image(), "celeb_id": datasets.Value("int64"),
     **{name: datasets.Value("bool") for name in ATTRIBUTES}}
)
LOCAL_SHARDS = 64  # shards of a local stream, so that processes and shuffling work on whole shards


# ----------------------------------------------------------------------------------------------- official layout
@dataclass
class OfficialLayout:
    """The parsed metadata of an official-layout CelebA folder, restricted to the images that are present."""

    root: Path
    records: dict[str, list[tuple[str, int, tuple[bool, ...]]]]  # split -> [(file name, celeb_id, attributes)]
    listed: dict[str, int] = field(default_factory=dict)  # split -> images named by the partition file

    def summary(self) -> str:
        return ", ".join(f"{s}: {len(self.records[s])} of {self.listed[s]} images present" for s in SPLIT_CODES)


def _read_table(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"CelebA metadata file not found: {path}")
    with open(path, encoding="utf-8", newline=None) as handle:  # universal newlines: the originals are CRLF
        return [line.split() for line in handle if line.strip()]


def read_official_layout(root: str | os.PathLike) -> OfficialLayout:
    """Parse partition, identity and attribute files; keep rows whose image file exists (a copy may be partial)."""
    root = Path(root)
    image_dir = root / IMAGE_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"CelebA folder not found: {root}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"CelebA image folder not found: {image_dir}")
    partition = {name: int(code) for name, code in _read_table(root / PARTITION_FILE)}
    identity = {name: int(celeb) for name, celeb in _read_table(root / IDENTITY_FILE)}
    attribute_rows = _read_table(root / ATTRIBUTE_FILE)
    if tuple(attribute_rows[1]) != tuple(ATTRIBUTES):
        raise ValueError(f"{root / ATTRIBUTE_FILE}: header does not list the 40 official CelebA attributes")
    attributes = {row[0]: tuple(value == "1" for value in row[1:]) for row in attribute_rows[2:]}
    present = set(os.listdir(image_dir))
    records = {split: [] for split in SPLIT_CODES}
    listed = dict.fromkeys(SPLIT_CODES, 0)
    code_to_split = {code: split for split, code in SPLIT_CODES.items()}
    for name in sorted(partition):
        split = code_to_split[partition[name]]
        listed[split] += 1
        if name not in present:
            continue
        if name not in identity or name not in attributes:
            raise ValueError(f"{name} is in {PARTITION_FILE} but missing from {IDENTITY_FILE} or {ATTRIBUTE_FILE}")
        records[split].append((name, identity[name], attributes[name]))
    return OfficialLayout(root=root, records=records, listed=listed)


def _generate_official_examples(image_dir: str, shards: list[list]):
    for shard in shards:
        for name, celeb_id, attributes in shard:
            with open(os.path.join(image_dir, name), "rb") as handle:
                image = {"bytes": handle.read(), "path": name}
            yield {"image": image, "celeb_id": celeb_id, **dict(zip(ATTRIBUTES, attributes))}


def official_layout_dataset(root: str | os.PathLike, split: str = "train") -> datasets.IterableDataset:
    """A streaming dataset over the present images of one official split, with the Hub mirror's schema."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
    layout = read_official_layout(root)
    logger.info("CelebA at %s: %s", layout.root, layout.summary())
    records = layout.records[split]
    if not records:
        raise ValueError(f"no image of split {split!r} is present in {layout.root / IMAGE_DIR} ({layout.summary()})")
    shards = [records[i::LOCAL_SHARDS] for i in range(min(LOCAL_SHARDS, len(records)))]
    return datasets.IterableDataset.from_generator(
        _generate_official_examples, features=FEATURES,
        gen_kwargs={"image_dir": str(layout.root / IMAGE_DIR), "shards": shards},
    )


def load_celeba(dataset_name: str | None = None, dataset_config_name: str | None = None,
                train_data_dir: str | None = None, split: str = "train") -> datasets.IterableDataset:
    """The raw stream of one split, from a local official-layout folder or a Hub (or local parquet) dataset."""
    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError("give exactly one of --dataset_name and --train_data_dir")
    if train_data_dir is not None:
        stream = official_layout_dataset(train_data_dir, split)
    else:
        stream = datasets.load_dataset(dataset_name, dataset_config_name, split=split, streaming=True)
    return stream.cast_column("image", datasets.Image(decode=False))


# ---------------------------------------------------------------------------------------------- preprocessing
def example_key(image: dict) -> str:
    """A stable name for an example: its file name, or a hash of its bytes when the source has none."""
    return image.get("path") or hashlib.sha1(image["bytes"]).hexdigest()


class ExamplePreprocessor:
    """Decode + crop + resize one raw example; corrupt files raise, or are counted when ``skip_corrupt``."""

    def __init__(self, prep: Preprocessing, skip_corrupt: bool = False):
        self.prep = prep
        self.skip_corrupt = skip_corrupt
        self.skipped: list[str] = []

    def __call__(self, example: dict) -> dict:
        key = example_key(example["image"])
        try:
            pixels = preprocess_image(decode_image(example["image"]["bytes"], key), self.prep)
        except CorruptImageError:
            if not self.skip_corrupt:
                raise
            self.skipped.append(key)
            pixels = None
        attributes = np.array([1 if example[name] else -1 for name in ATTRIBUTES], dtype=np.int8)
        return {"pixels": pixels, "key": key, "attributes": attributes}


# ----------------------------------------------------------------------------------------------- training stream
class TrainingBatch(NamedTuple):
    pixels: torch.Tensor      # uint8 (B, 3, H, W)
    keys: list[str]           # file names
    attributes: torch.Tensor  # int8 (B, 40): +1 present, -1 absent, in the order of ATTRIBUTES


class TrainStream:
    """Endless, shuffled, per-process ``TrainingBatch``es whose position can be saved and restored exactly.

    Epoch ``e`` is the raw stream shuffled with seed ``seed + e`` (shard order and a shuffle buffer), split across
    processes, then preprocessed. Its order depends only on (seed, epoch), so resuming = rebuilding the epoch and
    skipping the raw examples already consumed (cheap: skipped examples are never decoded). datasets' own
    ``state_dict`` is not used because it drops the shuffle buffer on resume, which breaks exact resume.
    """

    def __init__(self, raw: datasets.IterableDataset, prep: Preprocessing, batch_size: int, seed: int,
                 shuffle_buffer_size: int = 1000, rank: int = 0, world_size: int = 1, skip_corrupt: bool = False):
        self.raw, self.batch_size, self.seed = raw, batch_size, seed
        self.shuffle_buffer_size, self.rank, self.world_size = shuffle_buffer_size, rank, world_size
        self.preprocessor = ExamplePreprocessor(prep, skip_corrupt)
        self.epoch = 0
        self.consumed = 0  # raw examples of the current epoch taken by this process

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])

    def _epoch_stream(self):
        stream = self.raw.shuffle(seed=self.seed + self.epoch, buffer_size=self.shuffle_buffer_size)
        stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        return stream.skip(self.consumed) if self.consumed else stream

    def _examples(self):
        while True:
            produced = 0
            for example in self._epoch_stream():
                self.consumed += 1
                produced += 1
                item = self.preprocessor(example)
                if item["pixels"] is not None:
                    yield item
            if produced == 0 and self.consumed == 0:
                raise ValueError("the training stream is empty for this process")
            self.epoch, self.consumed = self.epoch + 1, 0

    def __iter__(self):
        items = []
        for item in self._examples():
            items.append(item)
            if len(items) == self.batch_size:
                yield TrainingBatch(torch.from_numpy(np.stack([item["pixels"] for item in items])),
                                    [item["key"] for item in items],
                                    torch.from_numpy(np.stack([item["attributes"] for item in items])))
                items = []

    @property
    def skipped_corrupt(self) -> list[str]:
        return self.preprocessor.skipped


def preprocessed_batches(raw: datasets.IterableDataset, prep: Preprocessing, batch_size: int,
                         keys: set[str] | None = None):
    """Batches (uint8 NCHW tensor, file keys) of a raw stream, preprocessed, in stream order (only ``keys`` when
    given): the one way evaluation, reference statistics and the tools read real images."""
    preprocessor = ExamplePreprocessor(prep)
    pixels, names = [], []
    for example in raw:
        if keys is not None and example_key(example["image"]) not in keys:
            continue
        item = preprocessor(example)
        pixels.append(torch.from_numpy(item["pixels"]))
        names.append(item["key"])
        if len(pixels) == batch_size:
            yield torch.stack(pixels), names
            pixels, names = [], []
    if pixels:
        yield torch.stack(pixels), names


def load_eval_images(train_data_dir: str | None, split: str, resolution: int, num_images: int,
                     dataset_name: str | None = None, dataset_config_name: str | None = HUB_CONFIG,
                     prep: Preprocessing | None = None) -> torch.Tensor:
    """The first ``num_images`` images of a split (stream order, no shuffle), preprocessed, as uint8 NCHW."""
    if train_data_dir is None and dataset_name is None:
        dataset_name = HUB_DATASET
    raw = load_celeba(dataset_name, dataset_config_name, train_data_dir, split).take(num_images)
    batches = [batch for batch, _ in preprocessed_batches(raw, prep or Preprocessing(resolution=resolution), 256)]
    count = sum(len(batch) for batch in batches)
    if count < num_images:
        raise ValueError(f"split {split!r} has only {count} images, {num_images} requested")
    return torch.cat(batches)
