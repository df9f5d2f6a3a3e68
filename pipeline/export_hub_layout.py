"""Write an official-layout CelebA folder as a local dataset repo with the Hub mirror's exact schema and layout.

    python -m pipeline.export_hub_layout --train_data_dir ../shared/celeba --out data/celeba-hub

gives ``OUT/img_align+identity+attr/{train,valid,test}-0000k-of-0000n.parquet`` and a README.md whose
``configs:``/``dataset_info:`` YAML matches flwrlabs/celeba, so that
``load_dataset(OUT, "img_align+identity+attr", streaming=True)`` behaves like the Hub dataset. Splits with no image
present are left out (and reported).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

import datasets
import yaml
from tqdm.auto import tqdm

from .cli import ArgumentParser, run_cli
from .data.celeba import (
    FEATURES,
    HUB_CONFIG,
    IMAGE_DIR,
    SPLIT_CODES,
    _generate_official_examples,
    read_official_layout,
)

CARD_BODY = """
# CelebA (aligned faces, identities, attributes)

Local export of an official-layout CelebA copy by `python -m pipeline.export_hub_layout`, in the layout and schema of
the Hub dataset `flwrlabs/celeba` (config `{config}`). Images present per split: {counts}.

CelebA (Liu, Luo, Wang, Tang, ICCV 2015) is available for non-commercial research purposes only, under the CelebA
release agreement.
"""


def dataset_card(split_sizes: dict[str, tuple[int, int]]) -> str:
    """README.md with the ``configs:`` and ``dataset_info:`` YAML of the Hub mirror, for the splits written."""
    header = {
        "license": "other",
        "license_name": "celeba-dataset-release-agreement",
        "dataset_info": {
            "config_name": HUB_CONFIG,
            "features": FEATURES._to_yaml_list(),
            "splits": [{"name": split, "num_bytes": num_bytes, "num_examples": size}
                       for split, (size, num_bytes) in split_sizes.items()],
        },
        "configs": [{"config_name": HUB_CONFIG,
                     "data_files": [{"split": split, "path": f"{HUB_CONFIG}/{split}-*"} for split in split_sizes]}],
    }
    counts = ", ".join(f"{split} {size}" for split, (size, _) in split_sizes.items())
    return "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + CARD_BODY.format(config=HUB_CONFIG,
                                                                                          counts=counts)


def export(train_data_dir: str, out_dir: str, max_shard_bytes: int = 500 * 2**20) -> dict[str, tuple[int, int]]:
    """Export every split that has images present; returns (images, Arrow bytes) written per split."""
    layout = read_official_layout(train_data_dir)
    image_dir = str(layout.root / IMAGE_DIR)
    config_dir = os.path.join(out_dir, HUB_CONFIG)
    os.makedirs(config_dir, exist_ok=True)
    written = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for split in SPLIT_CODES:
            records = layout.records[split]
            if not records:
                print(f"{split}: no image present of {layout.listed[split]} listed; split not exported")
                continue
            table = datasets.Dataset.from_generator(
                _generate_official_examples, features=FEATURES, cache_dir=cache_dir,
                gen_kwargs={"image_dir": image_dir, "shards": [records]})
            total_bytes = sum(os.path.getsize(os.path.join(image_dir, name)) for name, _, _ in records)
            num_shards = max(1, math.ceil(total_bytes / max_shard_bytes))
            for index in tqdm(range(num_shards), desc=f"export {split}", unit="shard"):
                shard = table.shard(num_shards=num_shards, index=index, contiguous=True)
                shard.to_parquet(os.path.join(config_dir, f"{split}-{index:05d}-of-{num_shards:05d}.parquet"))
            written[split] = (len(records), table.data.nbytes)
            print(f"{split}: {len(records)} of {layout.listed[split]} listed images, {num_shards} parquet shard(s)")
    with open(os.path.join(out_dir, "README.md"), "w") as handle:
        handle.write(dataset_card(written))
    return written


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_data_dir", required=True, help="CelebA folder in the official layout")
    parser.add_argument("--out", required=True, help="folder of the local dataset repo to write")
    parser.add_argument("--max_shard_mb", type=float, default=500, help="target parquet shard size")
    args = parser.parse_args(argv)
    export(args.train_data_dir, args.out, int(args.max_shard_mb * 2**20))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
