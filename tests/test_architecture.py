"""The GroupNorm guard of pipeline.models.architecture, and why it exists: an InstanceNorm UNet is blind to a DC
shift."""

import pytest
import torch

from pipeline.models.architecture import build_unet, check_group_norm
from train_unet import parse_args

TINY = dict(resolution=16, in_channels=3, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def test_guard_names_level_and_numbers():
    with pytest.raises(ValueError, match=r"level 0: 32 channels in norm_num_groups = 32 groups is 1 channel"):
        check_group_norm([32, 64, 128], 32)
    with pytest.raises(ValueError, match=r"level 1: 48 channels do not split into norm_num_groups = 32"):
        check_group_norm([64, 48], 32)
    check_group_norm([32, 64, 128], 8)                        # 4 channels per group
    check_group_norm([32, 64], 32, allow_instance_norm=True)  # the explicit override


def test_train_flags_refuse_instance_norm_before_any_work(capsys):
    base = ["--config", "configs/celeba64_cpu.yaml", "--train_data_dir", "x"]
    with pytest.raises(SystemExit):
        parse_args(base + ["--norm_num_groups", "32"])
    assert "level 0: 32 channels" in capsys.readouterr().err
    assert parse_args(base + ["--norm_num_groups", "32", "--allow_instance_norm"]).model.allow_instance_norm


@torch.no_grad()
def head_response(norm_num_groups: int) -> float:
    """Largest change of the UNet's output when the features entering its last GroupNorm (``conv_norm_out``, right
    before ``conv_out``) get a different mean and scale per channel, relative to the output's size."""
    torch.manual_seed(0)
    unet = build_unet(norm_num_groups=norm_num_groups, allow_instance_norm=True, **TINY).double().eval()
    unet.conv_norm_out.eps = 0.0  # its variance floor would otherwise let a scale through by ~eps / variance
    x, t = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([999, 999])
    out = unet(x, t).sample
    channels = unet.conv_norm_out.num_channels
    scale = torch.linspace(0.5, 2.0, channels, dtype=torch.float64).view(1, -1, 1, 1)
    shift = torch.linspace(-1.0, 1.0, channels, dtype=torch.float64).view(1, -1, 1, 1)
    hook = unet.conv_norm_out.register_forward_pre_hook(lambda _module, args: (args[0] * scale + shift,))
    moved = unet(x, t).sample
    hook.remove()
    return ((moved - out).abs().max() / out.abs().max()).item()


def test_instance_norm_head_cannot_carry_a_channel_mean_or_scale_to_the_output():
    # one channel per group: whatever mean and scale each feature channel has (e.g. the DC and the noise amplitude
    # of x_t, as seen by the layers before), conv_norm_out removes them, so the output cannot depend on them
    assert head_response(norm_num_groups=8) < 1e-12       # 8 channels in 8 groups at level 0
    # 2 or 4 channels per group: only the group's joint mean and scale are removed, so differences between the
    # channels of a group reach conv_out
    assert head_response(norm_num_groups=4) > 1e-2
    assert head_response(norm_num_groups=2) > 1e-2
