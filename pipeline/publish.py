"""Write a saved pipeline as a Hub repository folder (offline), and upload it to the Hugging Face Hub.

    python -m pipeline.publish --model pretrained/celeba-64 --out hub/celeba-64            # the folder, offline
    python -m pipeline.publish --model pretrained/celeba-64 --repo_id USER/celeba-64-ddpm  # and upload it

The folder holds model_index.json (naming ``["pipeline_celeba", "CelebADiffusionPipeline"]``), unet/, scheduler/,
attribute_encoder/ for an attribute model, ``pipeline_celeba.py`` with the ``denoisers.py`` it imports, README.md
(the model card: ``--card`` or the model folder's own README.md) and the card's sample grid, so
``DiffusionPipeline.from_pretrained(ID_OR_FOLDER, trust_remote_code=True)`` loads it. The token comes from
``--hub_token``, ``HF_TOKEN`` or ``hf auth login``; ``HF_ENDPOINT`` selects another Hub endpoint.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from .cli import ArgumentParser, run_cli
from .model_card import GRID_NAME
from .pipeline_folder import HUB_CLASS_NAME, OPTIONAL_COMPONENTS, copy_pipeline_code

PIPELINE_PARTS = ("model_index.json", "unet", "scheduler")


def write_hub_folder(model_dir, out, card=None) -> list[str]:
    """Write exactly what the Hub repo should contain into the new folder ``out`` (all or nothing); returns the
    relative file paths. ``card`` defaults to the model folder's README.md."""
    model_dir, out = Path(model_dir), Path(out)
    for part in PIPELINE_PARTS:
        if not (model_dir / part).exists():
            raise FileNotFoundError(f"{model_dir} is not a saved pipeline: {model_dir / part} is missing")
    card = Path(card) if card else model_dir / "README.md"
    if not card.is_file():
        raise FileNotFoundError(f"model card not found: {card} (write one with python -m pipeline.model_card "
                                f"--model {model_dir}, or pass --card)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for part in ("unet", "scheduler", *OPTIONAL_COMPONENTS):
            if (model_dir / part).is_dir():
                shutil.copytree(model_dir / part, staging / part)
        index = json.loads((model_dir / "model_index.json").read_text())
        index["_class_name"] = HUB_CLASS_NAME
        (staging / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        copy_pipeline_code(staging)
        shutil.copy2(card, staging / "README.md")
        if (model_dir / GRID_NAME).is_file():  # the sample grid the card shows
            shutil.copy2(model_dir / GRID_NAME, staging / GRID_NAME)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def hub_api(token: str | None = None):
    """An HfApi with a token (``token``, HF_TOKEN or the cached login); ValueError naming --hub_token if none."""
    from huggingface_hub import HfApi, get_token

    token = token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: pass --hub_token, set HF_TOKEN or run `hf auth login`")
    return HfApi(token=token)


def hub_errors(repo_id: str):
    """The Hub's refusals and unreachable endpoints as one ConnectionError line each."""
    import contextlib

    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    @contextlib.contextmanager
    def translated():
        try:
            yield
        except HfHubHTTPError as error:
            raise ConnectionError(f"the Hub at {constants.ENDPOINT} refused {repo_id}: "
                                  f"{str(error).splitlines()[0]}") from None
        except (httpx2.TransportError, OSError) as error:  # connection refused, DNS, timeouts
            raise ConnectionError(f"cannot reach the Hub endpoint {constants.ENDPOINT}: {error}") from None

    return translated()


def prepare_repo(repo_id: str, private: bool = False, token: str | None = None) -> None:
    """Check the token and create (or find) the repo: run before a long job whose result will be pushed."""
    api = hub_api(token)
    with hub_errors(repo_id):
        api.create_repo(repo_id, private=private, exist_ok=True)


def publish(model_dir: str, repo_id: str, private: bool = False, token: str | None = None,
            card: str | None = None, commit_message: str = "Upload CelebA diffusion pipeline") -> str:
    """Write the Hub folder of ``model_dir`` and upload it (create_repo + upload_folder); returns the commit URL."""
    api = hub_api(token)
    with tempfile.TemporaryDirectory() as staging:
        folder = Path(staging) / "repo"
        write_hub_folder(model_dir, folder, card)
        with hub_errors(repo_id):
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=commit_message)
    return commit.commit_url


def main(argv=None):
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="saved pipeline folder")
    parser.add_argument("--out", default=None, help="write the Hub repository folder here (offline)")
    parser.add_argument("--repo_id", default=None, help="upload to USER/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--hub_token", default=None)
    parser.add_argument("--card", default=None, help="model card (default: the folder's README.md)")
    args = parser.parse_args(argv)
    if args.out is None and args.repo_id is None:
        parser.error("nothing to do: give --out (write the Hub folder) and/or --repo_id (upload)")
    if args.out is not None:
        files = write_hub_folder(args.model, args.out, args.card)
        print(f"wrote the Hub folder of {args.model} to {args.out} ({len(files)} files)")
    if args.repo_id is not None:
        url = publish(args.model, args.repo_id, args.private, args.hub_token, args.card)
        print(f"published {args.model} to {args.repo_id}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
