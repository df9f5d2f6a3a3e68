"""Publish a saved pipeline to the Hugging Face Hub with its model card and its pipeline code.

    python -m pipeline.publish --model pretrained/celeba-64 --repo_id USER/celeba-64-ddpm [--private]

Uploads model_index.json, unet/, scheduler/, README.md (the model card: ``model_card.md`` or the folder's own
README.md) and ``pipeline_celeba.py``, so that anyone can load it with
``DiffusionPipeline.from_pretrained(ID, custom_pipeline="pipeline_celeba", trust_remote_code=True)``.
The token comes from ``--token``, ``HF_TOKEN`` or ``hf auth login``; ``HF_ENDPOINT`` selects another Hub endpoint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .cli import ArgumentParser, run_cli
from .model_card import GRID_NAME

PIPELINE_FILE = Path(__file__).with_name("pipeline_celeba.py")
PIPELINE_PARTS = ("model_index.json", "unet", "scheduler")


def stage_repository(model_dir: str | os.PathLike, card: str | os.PathLike | None, staging: Path) -> list[str]:
    """Copy exactly what the Hub repo should contain into ``staging``; returns the relative file paths."""
    model_dir = Path(model_dir)
    for part in PIPELINE_PARTS:
        source = model_dir / part
        if not source.exists():
            raise FileNotFoundError(f"{model_dir} is not a saved pipeline: {source} is missing")
        if source.is_dir():
            shutil.copytree(source, staging / part)
        else:
            shutil.copy2(source, staging / part)
    if (model_dir / GRID_NAME).is_file():  # the sample grid the card shows
        shutil.copy2(model_dir / GRID_NAME, staging / GRID_NAME)
    card = Path(card) if card else model_dir / "README.md"
    if not card.is_file():
        raise FileNotFoundError(f"model card not found: {card} (write one with python -m pipeline.model_card "
                                f"--model {model_dir}, or pass --card)")
    shutil.copy2(card, staging / "README.md")
    shutil.copy2(PIPELINE_FILE, staging / PIPELINE_FILE.name)
    return sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())


def publish(model_dir: str, repo_id: str, private: bool = False, token: str | None = None,
            card: str | None = None, commit_message: str = "Upload CelebA diffusion pipeline") -> str:
    """create_repo + upload_folder; returns the commit URL. Errors name the missing token or the endpoint."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: pass --token, set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        stage_repository(model_dir, card, Path(staging))
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=staging, repo_id=repo_id, commit_message=commit_message)
        except HfHubHTTPError as error:
            raise ConnectionError(f"the Hub at {constants.ENDPOINT} refused the upload to {repo_id}: {error}") from error
        except (httpx2.TransportError, OSError) as error:  # connection refused, DNS, timeouts
            raise ConnectionError(f"cannot reach the Hub endpoint {constants.ENDPOINT}: {error}") from error
    return commit.commit_url


def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved pipeline folder")
    parser.add_argument("--repo_id", required=True, help="USER/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None)
    parser.add_argument("--card", default=None, help="model card (default: the folder's README.md)")
    args = parser.parse_args(argv)
    url = publish(args.model, args.repo_id, args.private, args.token, args.card)
    print(f"published {args.model} to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
