"""benchmarks/paired_kid.py: only samples drawn from the same noise are paired; every pair's difference and errors."""

import pytest
import torch

from benchmarks.paired_kid import check_same_noise, paired_kid


def test_folders_that_do_not_share_their_noise_are_named():
    same = {"seed": 0, "batch_size": 64}
    check_same_noise({"a": same, "b": {**same, "scheduler": "other"}}, {"a": 128, "b": 128})
    with pytest.raises(ValueError, match=r"same seed, so their samples are not paired: \{'a': 0, 'b': 1\}"):
        check_same_noise({"a": same, "b": {**same, "seed": 1}}, {"a": 128, "b": 128})
    with pytest.raises(ValueError, match=r"same batch_size"):
        check_same_noise({"a": same, "b": {**same, "batch_size": 32}}, {"a": 128, "b": 128})
    with pytest.raises(ValueError,
                       match=r"different numbers of samples, so they are not paired: \{'a': 128, 'b': 64\}"):
        check_same_noise({"a": same, "b": same}, {"a": 128, "b": 64})


def test_every_pair_reports_the_kid_difference_and_a_paired_error_below_the_unpaired_one():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=generator)
    latent = torch.randn(64, 16, generator=generator)
    features = {"near": latent, "shifted": latent + 0.5,
                "nudged": latent + 0.05 * torch.randn(64, 16, generator=generator)}
    result = paired_kid(real, features)
    assert [(pair["a"], pair["b"]) for pair in result["pairs"]] == [("near", "shifted"), ("near", "nudged"),
                                                                   ("shifted", "nudged")]
    for pair in result["pairs"]:
        a, b = result["points"][pair["a"]], result["points"][pair["b"]]
        assert pair["kid_difference"] == pytest.approx(a["kid_mean"] - b["kid_mean"])
        assert 0 < pair["paired_se"] < pair["unpaired_se"]
    assert result["points"]["shifted"]["kid_mean"] > result["points"]["near"]["kid_mean"]


def test_identical_sets_differ_by_zero_with_no_z():
    real, fake = torch.randn(50, 8, generator=torch.Generator().manual_seed(1)), torch.ones(20, 8)
    fake[::2] = -1
    pair = paired_kid(real, {"a": fake, "b": fake.clone()})["pairs"][0]
    assert pair["kid_difference"] == 0 and pair["paired_se"] == 0 and pair["paired_z"] is None
