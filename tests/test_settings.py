"""Typed training settings: one flag per field, YAML and flags land in the right group, every shipped config loads."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.training.settings import GROUPS, TrainingSettings, build_parser, load_settings, parse_settings

from conftest import ROOT


def test_every_field_is_one_flag_of_one_group():
    names = [item.name for cls in GROUPS.values() for item in dataclasses.fields(cls)]
    assert len(names) == len(set(names))  # a flag name sorts into exactly one group
    flags = {action.dest for action in build_parser()._actions} - {"help", "config"}
    assert flags == set(names)


@pytest.mark.parametrize("config", sorted(Path(ROOT, "configs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_loads_into_its_groups(config):
    settings = load_settings(str(config))
    flat = settings.flat()
    for key, value in yaml.safe_load(config.read_text()).items():
        assert flat[key] == value, key


def test_flags_override_the_yaml_which_overrides_the_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1.0e-3\nrandom_flip: false\nblock_out_channels: [16, 32]\n"
                      "down_block_types: [DownBlock2D, DownBlock2D]\nup_block_types: [UpBlock2D, UpBlock2D]\n"
                      "norm_num_groups: 8\n")
    settings = parse_settings(["--config", str(config), "--train_data_dir", "x", "--learning_rate", "5e-4",
                               "--random_flip"])
    assert isinstance(settings, TrainingSettings)
    assert settings.optimizer.learning_rate == 5e-4 and settings.data.random_flip is True  # flags win
    assert settings.model.block_out_channels == [16, 32]                                  # the YAML's
    assert settings.optimizer.adam_beta2 == 0.999 and settings.data.crop_size == 140        # the defaults
    assert settings.sampling.validation_scheduler == "dpm++2m"  # unset: the DDPM family's DPM-Solver++(2M)
    edm = parse_settings(["--config", str(config), "--train_data_dir", "x", "--preconditioning", "edm"])
    assert edm.sampling.eval_fid_scheduler == "edm-dpm++2m"


def test_a_training_run_needs_one_data_source_but_building_a_unet_needs_none(capsys):
    assert load_settings("configs/smoke.yaml").data.train_data_dir is None
    with pytest.raises(SystemExit):
        parse_settings(["--config", "configs/smoke.yaml"])
    assert "give exactly one of --dataset_name and --train_data_dir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_settings("configs/smoke.yaml", "--attribute_dropout", "1.5")
    assert "--attribute_dropout is a probability, got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_settings("configs/smoke.yaml", "--attribute_encoder_learning_rate", "1e-2")
    assert "--attribute_encoder_learning_rate applies only with --attribute_conditioning" in capsys.readouterr().err
