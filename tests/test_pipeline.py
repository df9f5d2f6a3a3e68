"""The custom DiffusionPipeline: determinism, save/load round trip, custom_pipeline loading, generate CLI."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DModel

from pipeline import CelebADiffusionPipeline, load_pipeline, pipeline_celeba, save_pipeline_folder
from pipeline.cli import DEFAULT_DEVICE
from pipeline.generate import generate, parse_sampler_options
from pipeline.pipeline_folder import weights_checksum
from pipeline.sampling.schedulers import get_sampler
from pipeline.sampling.sde import SDESampler

from conftest import ROOT, run_command


def tiny_pipeline(scheduler_class=DDPMScheduler):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = CelebADiffusionPipeline(unet=unet, scheduler=scheduler_class(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler])
def test_same_generator_same_images(scheduler_class):
    pipe = tiny_pipeline(scheduler_class)
    first = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(5), output_type="np")
    second = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(5), output_type="np")
    other = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(6), output_type="np")
    assert first.images.shape == (2, 8, 8, 3) and first.images.min() >= 0 and first.images.max() <= 1
    assert np.array_equal(first.images, second.images) and not np.array_equal(first.images, other.images)


def test_output_types_agree():
    pipe = tiny_pipeline(DDIMScheduler)
    kwargs = dict(batch_size=1, num_inference_steps=3)
    pt = pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
    as_np = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images
    pil = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_allclose((pt.permute(0, 2, 3, 1).numpy() + 1) / 2, as_np, atol=1e-6)
    assert pil[0].size == (8, 8)
    assert isinstance(pipe(generator=None, return_dict=False, **kwargs), tuple)
    with pytest.raises(ValueError, match="output_type"):
        pipe(output_type="jpeg", **kwargs)


def test_save_load_round_trip(tmp_path):
    pipe = tiny_pipeline(DDIMScheduler)
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "CelebADiffusionPipeline"
    loaded = CelebADiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    for name, tensor in pipe.unet.state_dict().items():
        assert torch.equal(tensor, loaded.unet.state_dict()[name])
    def public(config):
        return {key: value for key, value in config.items() if not key.startswith("_")}

    assert type(loaded.scheduler) is DDIMScheduler and public(loaded.scheduler.config) == public(pipe.scheduler.config)
    kwargs = dict(batch_size=2, num_inference_steps=3, output_type="np")
    assert np.array_equal(pipe(generator=torch.Generator().manual_seed(1), **kwargs).images,
                          loaded(generator=torch.Generator().manual_seed(1), **kwargs).images)


def test_loads_through_diffusers_custom_pipeline(tmp_path):
    """What users without our package do: DiffusionPipeline.from_pretrained(path, custom_pipeline=file)."""
    pipe = tiny_pipeline(DDIMScheduler)
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(ROOT / "pipeline" / "pipeline_celeba.py"),
                                          trust_remote_code=True)
    assert type(loaded).__name__ == "CelebADiffusionPipeline"
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(batch_size=1, num_inference_steps=3, output_type="np")
    np.testing.assert_allclose(pipe(generator=torch.Generator().manual_seed(2), **kwargs).images,
                               loaded(generator=torch.Generator().manual_seed(2), **kwargs).images, atol=1e-5)


def test_weights_checksum_survives_a_folder_round_trip_and_sees_one_changed_weight(tmp_path):
    pipe = tiny_pipeline()
    save_pipeline_folder(pipe, tmp_path)
    assert weights_checksum(load_pipeline(str(tmp_path)).unet) == weights_checksum(pipe.unet)
    with torch.no_grad():
        pipe.unet.conv_out.bias[0] += 1e-6
    assert weights_checksum(load_pipeline(str(tmp_path)).unet) != weights_checksum(pipe.unet)


def test_a_saved_folder_does_not_record_the_local_folder_its_components_came_from(tmp_path):
    save_pipeline_folder(tiny_pipeline(), tmp_path / "first")
    save_pipeline_folder(load_pipeline(str(tmp_path / "first")), tmp_path / "second")
    configs = sorted((tmp_path / "second").glob("*/*config.json"))
    assert [path.parent.name for path in configs] == ["scheduler", "unet"]
    assert not any(str(tmp_path / "first") in path.read_text() for path in configs)
    assert weights_checksum(load_pipeline(str(tmp_path / "second")).unet) == weights_checksum(tiny_pipeline().unet)


def unet_output_dtypes(pipe, **call) -> set:
    """The dtypes of the UNet's output over one pipeline call."""
    dtypes = set()
    hook = pipe.unet.conv_out.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
    pipe(batch_size=1, num_inference_steps=2, output_type="np", **call)
    hook.remove()
    return dtypes


def test_the_default_precision_is_bf16_only_for_a_float32_unet_on_a_cpu_with_native_bf16(monkeypatch):
    pipe = tiny_pipeline(DDIMScheduler)
    monkeypatch.setattr(pipeline_celeba, "native_bf16_cpu", lambda: True)
    assert pipe.resolve_mixed_precision(None) == "bf16" and unet_output_dtypes(pipe) == {torch.bfloat16}
    assert unet_output_dtypes(pipe, mixed_precision="no") == {torch.float32}
    # an adaptive solver needs full-precision outputs, whatever the default
    assert get_sampler("ode-rk45").resolve_mixed_precision(pipe, None) == "no"
    assert get_sampler("ddim").resolve_mixed_precision(pipe, None) == "bf16"
    with pytest.raises(ValueError, match="ode-rk45 cannot sample under bf16"):
        get_sampler("ode-rk45").resolve_mixed_precision(pipe, "bf16")
    assert SDESampler("ode-rk45").full_precision and not SDESampler("pc").full_precision
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        pipe.resolve_mixed_precision("fp16")
    pipe.unet.to(torch.float64)  # a float64 UNet stays exact
    assert pipe.resolve_mixed_precision(None) == "no"
    monkeypatch.setattr(pipeline_celeba, "native_bf16_cpu", lambda: False)
    pipe.unet.to(torch.float32)
    assert pipe.resolve_mixed_precision(None) == "no" and unet_output_dtypes(pipe) == {torch.float32}


def test_loaded_pipelines_sample_with_channels_last_weights_on_a_cpu(tmp_path):
    pipe = tiny_pipeline()
    save_pipeline_folder(pipe, tmp_path)
    fast, exact = load_pipeline(str(tmp_path)), load_pipeline(str(tmp_path), channels_last=False)
    weight = fast.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert exact.unet.conv_in.weight.is_contiguous()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.allclose(fast.unet(x, t).sample, exact.unet(x, t).sample, atol=1e-5)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++2m"])  # pipeline.sampling.sde casts its state itself
def test_bf16_generation_runs_the_unet_in_bf16_and_stays_close_to_fp32(scheduler):
    pipe = tiny_pipeline(DDIMScheduler)
    outputs, states = [], []
    hooks = [pipe.unet.conv_out.register_forward_hook(lambda module, inputs, output: outputs.append(output.dtype)),
             pipe.unet.register_forward_pre_hook(lambda module, inputs: states.append(inputs[0].dtype))]
    full, _ = generate(pipe, 4, scheduler, 4, seed=0, batch_size=4, progress=False, mixed_precision="no")
    half, _ = generate(pipe, 4, scheduler, 4, seed=0, batch_size=4, progress=False, mixed_precision="bf16")
    for hook in hooks:
        hook.remove()
    assert set(outputs) == {torch.float32, torch.bfloat16} and set(states) == {torch.float32}
    difference = np.abs(full.astype(float) - half.astype(float)) / 255
    assert 0 < difference.mean() < 0.02  # bf16 is used, and the sampler state did not degrade to bf16
    with pytest.raises(ValueError, match="mixed_precision"):
        generate(pipe, 1, scheduler, 4, seed=0, mixed_precision="fp16")


@pytest.mark.parametrize("scheduler", ["ddpm", "pc"])
def test_generate_shows_each_batch_steps_only_with_progress(scheduler, capsys):
    pipe = tiny_pipeline()
    generate(pipe, 4, scheduler, 3, seed=0, batch_size=2, progress=True)
    shown = capsys.readouterr().err
    # the per-step bar opens at 0/steps (tqdm may skip later redraws on a fast run), the batch bar ends at 2/2
    assert "steps of this batch:   0%|          | 0/3 [" in shown and "2/2 [" in shown
    generate(pipe, 4, scheduler, 3, seed=0, batch_size=2, progress=False)
    assert capsys.readouterr().err == ""


def test_adaptive_rk45_refuses_bf16_before_sampling():
    pipe = tiny_pipeline()
    calls = []
    pipe.unet.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match="ode-rk45 cannot sample under bf16"):
        generate(pipe, 1, "ode-rk45", 1, seed=0, progress=False, mixed_precision="bf16")
    assert calls == []


def test_generate_cli_writes_pngs_and_grids(smoke_pipeline_dir, tmp_path):
    out = tmp_path / "samples"
    run_command(["-m", "pipeline.generate", "--model", str(smoke_pipeline_dir), "--num_images", "5",
                 "--batch_size", "2", "--steps", "4", "--scheduler", "ddim", "--out", str(out)])
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:05d}.png" for i in range(5)]
    assert (out / "grid.png").is_file() and (out / "grid_x4.png").is_file()
    record = json.loads((out / "generation.json").read_text())
    assert record["steps"] == 4 and record["nfe"] == 4  # counted UNet calls per batch
    assert record["device"] == DEFAULT_DEVICE.split(":")[0]
    # seconds is rounded to 0.01 and images/s to 0.001, which bounds how far their product can be from 5 images
    rate, seconds = record["images_per_second"], record["seconds"]
    assert abs(rate * seconds - 5) <= 0.005 * rate + 0.0005 * seconds + 1e-5
    again = tmp_path / "again"
    run_command(["-m", "pipeline.generate", "--model", str(smoke_pipeline_dir), "--num_images", "5",
                 "--batch_size", "2", "--steps", "4", "--scheduler", "ddim", "--out", str(again)])
    assert (out / "00004.png").read_bytes() == (again / "00004.png").read_bytes()  # seeded per batch


def test_sampler_options_are_parsed_checked_and_reach_the_score_sde_sampler():
    assert parse_sampler_options(["corrector_steps=2", "snr=0.17", "grid=karras", "rtol=1e-3"]) == {
        "corrector_steps": 2, "snr": 0.17, "grid": "karras", "rtol": 1e-3}
    with pytest.raises(ValueError, match="look like rtol=1e-3"):
        parse_sampler_options(["snr"])
    pipe = tiny_pipeline()
    plain, plain_nfe = generate(pipe, 2, "pc", 3, seed=0, batch_size=2, progress=False)
    more, more_nfe = generate(pipe, 2, "pc", 3, seed=0, batch_size=2, progress=False,
                              sampler_options={"corrector_steps": 2})
    assert (plain_nfe, more_nfe) == (6, 9) and not np.array_equal(plain, more)  # 3 steps x (1 + corrector steps)
    with pytest.raises(ValueError, match=r"pc does not take sampler option\(s\) \['rtol'\]"):
        generate(pipe, 2, "pc", 3, seed=0, progress=False, sampler_options={"rtol": 1e-3})
    with pytest.raises(ValueError, match="'ddim' takes none"):
        generate(pipe, 2, "ddim", 3, seed=0, progress=False, sampler_options={"snr": 0.1})


def test_generate_cli_records_sampler_options(smoke_pipeline_dir, tmp_path):
    out = tmp_path / "pc"
    run_command(["-m", "pipeline.generate", "--model", str(smoke_pipeline_dir), "--num_images", "2", "--steps", "2",
                 "--scheduler", "pc", "--sampler_option", "corrector_steps=2", "grid=karras", "--out", str(out)])
    record = json.loads((out / "generation.json").read_text())
    assert record["sampler_options"] == {"corrector_steps": 2, "grid": "karras"} and record["nfe"] == 6


def test_generate_cli_errors_are_one_line(tmp_path):
    result = run_command(["-m", "pipeline.generate", "--model", str(tmp_path / "missing"), "--out",
                          str(tmp_path / "o")], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"no pipeline at {tmp_path / 'missing'}" in result.stderr


@pytest.mark.parametrize("device", ["gpu", "cuda:99"])
def test_device_names_a_device_this_machine_has(device, tmp_path):
    result = run_command(["-m", "pipeline.generate", "--device", device, "--out", str(tmp_path / "o")], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument --device: {device!r}" in result.stderr


def test_hub_layout_folder_round_trip_and_shipped_code_in_sync(tmp_path):
    pipe = tiny_pipeline(DDIMScheduler)
    save_pipeline_folder(pipe, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["_class_name"] == [
        "pipeline_celeba", "CelebADiffusionPipeline"]
    loaded = load_pipeline(str(tmp_path / "model"), channels_last=False)  # the same memory layout: the same kernels
    assert type(loaded) is CelebADiffusionPipeline and type(loaded.scheduler) is DDIMScheduler
    kwargs = dict(batch_size=2, num_inference_steps=3, output_type="np")
    assert np.array_equal(pipe(generator=torch.Generator().manual_seed(1), **kwargs).images,
                          loaded(generator=torch.Generator().manual_seed(1), **kwargs).images)
    for name in ("pipeline_celeba.py", "denoisers.py"):
        assert (tmp_path / "model" / name).read_bytes() == (ROOT / "pipeline" / name).read_bytes()
        for folder in sorted((ROOT / "pretrained").iterdir()):  # shipped folders carry today's pipeline code
            assert (folder / name).read_bytes() == (ROOT / "pipeline" / name).read_bytes(), folder


def test_loader_says_what_a_folder_is_instead(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_pipeline_folder(tiny_pipeline(DDIMScheduler), tmp_path / "checkpoint-5" / "pipeline")
    with pytest.raises(FileNotFoundError,
                       match=r"checkpoint-5 is a training checkpoint; its pipeline .* is .*pipeline"):
        load_pipeline(str(tmp_path / "checkpoint-5"))
    with pytest.raises(FileNotFoundError, match="model_index.json missing"):
        load_pipeline(str(tmp_path))
    with pytest.raises(ConnectionError, match=r"fetching it as a Hub repo id failed .*hf download someone/faces"):
        load_pipeline("someone/faces")
    weights = tmp_path / "checkpoint-5" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(ValueError, match=r"cannot load the unet from .*diffusion_pytorch_model.safetensors.*corrupt"):
        load_pipeline(str(tmp_path / "checkpoint-5" / "pipeline"))
