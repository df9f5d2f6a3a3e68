"""Publishing to the Hub, tested offline against a local stand-in for the Hub API (HF_ENDPOINT)."""

import json
import shutil
import socket
import subprocess
import sys

from conftest import ROOT, run_command, subprocess_env, train_args
from hub_standin import HubStandIn


def publish_command(model_dir, card, endpoint, token="hf_test_token", *extra):
    """Run the publish CLI against ``endpoint`` (online mode: the endpoint is on this machine)."""
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(card.parent / "hf_home"),
           "HF_TOKEN": token or ""}  # HF_HOME: no cached login
    return run_command(["-m", "pipeline.publish", "--model", str(model_dir), "--repo_id", "user/celeba-test",
                        "--card", str(card), *extra], check=False, env=env)


def test_the_offline_hub_folder_loads_with_plain_diffusers_from_anywhere(smoke_pipeline_dir, tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    out = tmp_path / "hub"
    run_command(["-m", "pipeline.publish", "--model", str(smoke_pipeline_dir), "--out", str(out), "--card", str(card)])
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "denoisers.py", "model_index.json",
                                                     "pipeline_celeba.py", "scheduler", "unet"]
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == ["pipeline_celeba",
                                                                                  "CelebADiffusionPipeline"]
    # sys.modules["pipeline"] = None: the folder must load without this project's (installed) package
    load = ("import sys, torch; sys.modules['pipeline'] = None; from diffusers import DiffusionPipeline; "
            "pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True); "
            "print(type(pipe).__name__, pipe(batch_size=1, num_inference_steps=2, output_type='np').images.shape)")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for folder in (out, smoke_pipeline_dir):  # every training output is already in the Hub layout
        result = subprocess.run([sys.executable, "-c", load, str(folder)], cwd=elsewhere, capture_output=True,
                                text=True, timeout=300, env=subprocess_env())
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip().splitlines()[-1] == "CelebADiffusionPipeline (1, 32, 32, 3)"
    again = run_command(["-m", "pipeline.publish", "--model", str(smoke_pipeline_dir), "--out", str(out)],
                        check=False)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr


def test_upload_sends_exactly_the_pipeline_card_grid_and_code(smoke_pipeline_dir, tmp_path):
    card = tmp_path / "card.md"
    card.write_text("---\nlibrary_name: diffusers\n---\n# test card\n")
    model = tmp_path / "model"
    shutil.copytree(smoke_pipeline_dir, model)
    (model / "samples.png").write_bytes(b"grid")  # written there by pipeline.model_card --grid
    (model / "notes.txt").write_text("not part of the repo")
    with HubStandIn() as hub:
        result = publish_command(model, card, hub.endpoint, "hf_test_token", "--private")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (hub.created and hub.created[0]["name"] == "celeba-test"
            and hub.created[0].get("visibility", hub.created[0].get("private")) in ("private", True)), hub.created
    expected = {
        "README.md": card.read_bytes(),
        "model_index.json": (smoke_pipeline_dir / "model_index.json").read_bytes(),
        "scheduler/scheduler_config.json": (smoke_pipeline_dir / "scheduler" / "scheduler_config.json").read_bytes(),
        "unet/config.json": (smoke_pipeline_dir / "unet" / "config.json").read_bytes(),
        "unet/diffusion_pytorch_model.safetensors":
            (smoke_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes(),
        "pipeline_celeba.py": (ROOT / "pipeline" / "pipeline_celeba.py").read_bytes(),
        "denoisers.py": (ROOT / "pipeline" / "denoisers.py").read_bytes(),
        "samples.png": b"grid",
    }
    assert hub.files == expected


def test_missing_token_is_one_clear_error(smoke_pipeline_dir, tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    with HubStandIn() as hub:
        result = publish_command(smoke_pipeline_dir, card, hub.endpoint, token=None)
        assert not hub.requests
    assert result.returncode == 2 and "no Hugging Face token" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_endpoint_is_one_clear_error(smoke_pipeline_dir, tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = publish_command(smoke_pipeline_dir, card, f"http://127.0.0.1:{port}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot reach the Hub endpoint http://127.0.0.1:{port}" in result.stderr


def test_push_to_hub_checks_the_token_before_training(tmp_path):
    out = tmp_path / "run"
    result = run_command(train_args(out, "--push_to_hub", "--hub_model_id", "user/smoke"), check=False,
                         env={"HF_HOME": str(tmp_path / "h"), "HF_TOKEN": ""})
    assert result.returncode == 2 and "no Hugging Face token: pass --hub_token" in result.stderr
    assert not out.exists()


def test_train_unet_push_to_hub(tmp_path):
    """train_unet.py --push_to_hub: the final EMA pipeline, a generated model card and the pipeline code arrive."""
    out = tmp_path / "run"
    with HubStandIn() as hub:
        result = run_command(train_args(out, "--push_to_hub", "--hub_model_id", "user/smoke", "--hub_token",
                                        "hf_test_token"), check=False,
                             env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "h")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert hub.files["unet/diffusion_pytorch_model.safetensors"] == \
        (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    card = hub.files["README.md"].decode()
    assert (card.startswith("---\n") and "\nlibrary_name: diffusers\n" in card.split("---")[1]
            and "8 optimisation steps" in card)
    assert "pipeline_celeba.py" in hub.files


def test_an_attribute_model_is_published_with_its_encoder(tmp_path):
    from test_attributes import attribute_pipeline

    from pipeline.pipeline_folder import load_pipeline, save_pipeline_folder
    from pipeline.publish import main as publish_main

    pipe = attribute_pipeline()
    save_pipeline_folder(pipe, tmp_path / "model")
    (tmp_path / "model" / "README.md").write_text("# card\n")
    publish_main(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "hub")])
    assert (tmp_path / "hub" / "attribute_encoder" / "attribute_encoder.py").is_file()
    loaded = load_pipeline(str(tmp_path / "hub"))
    assert loaded.attribute_encoder is not None and loaded.attribute_encoder.config.attribute_names == list(
        pipe.attribute_encoder.config.attribute_names)
