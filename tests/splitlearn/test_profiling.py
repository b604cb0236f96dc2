import torch
from torch import nn

from edgecloud.splitlearn.data import DIGITS_SHAPE
from edgecloud.splitlearn.models import build_model
from edgecloud.splitlearn.profiling import calibrate, profile_model


def test_flops_and_sizes_come_from_the_module() -> None:
    model = nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, 10)),
    )
    profile = profile_model(model, DIGITS_SHAPE)
    first, second = profile.blocks
    assert first.forward_flops == 2 * 64 * 32
    assert first.backward_flops_no_input_grad == 2 * 64 * 32  # weight gradient only
    assert first.backward_flops == 2 * 2 * 64 * 32  # weight and input gradients
    assert (first.output_elements, second.output_elements) == (32, 10)
    assert (first.parameter_elements, first.parameter_tensors) == (64 * 32 + 32, 2)
    assert profile.element_bytes == 4
    # The UE's backward of its first block needs no input gradient: data is not trained.
    assert profile.backward_flops(0, 1, batch=8) == 8 * 2 * 64 * 32
    assert profile.backward_flops(1, 2, batch=8) == 8 * 2 * 2 * 32 * 10


def test_conv_flops_scale_with_the_output_map() -> None:
    profile = profile_model(build_model("cnn", seed=0), DIGITS_SHAPE)
    # Conv2d(1, 16, 3, padding=1) on 8x8: 64 outputs x 16 channels x 9 taps x 2.
    assert profile.blocks[0].forward_flops == 64 * 16 * 9 * 2
    assert [b.output_elements for b in profile.blocks] == [1024, 512, 128, 64, 10]


def test_calibration_is_non_negative_and_monotone_in_batch() -> None:
    torch.set_num_threads(1)
    model = build_model("mlp", seed=0)
    profile = profile_model(model, DIGITS_SHAPE)
    speed = calibrate(model, profile, DIGITS_SHAPE, batches=(4, 32), repeats=3)
    for cost in (speed.ue_forward, speed.ue_backward, speed.bs_step, speed.optimizer):
        assert min(cost.s_per_flop, cost.s_per_block, cost.s_per_call) >= 0
    for cut in profile.cuts:
        assert speed.ue_forward_s(profile, cut, 64) >= speed.ue_forward_s(profile, cut, 4) > 0
        assert speed.bs_s(profile, cut, 64) >= speed.bs_s(profile, cut, 4) > 0
