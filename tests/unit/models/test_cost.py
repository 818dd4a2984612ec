"""FLOPs counted once at export scale with the padded pixels of a draft."""

from __future__ import annotations

from models.config import NetworkConfig
from models.cost import NetworkCost, count_flops


def test_flops_scale_with_the_padded_input() -> None:
    cost = NetworkCost(flops=1_000_000, height=100, width=100)
    assert cost.flops_per_pixel == 100.0
    assert cost.flops_for(100, 100, stride=1) == 1_000_000
    assert cost.flops_for(30, 30, stride=32) == 100.0 * 64 * 64  # padded to 2 x stride


def test_counted_flops_of_a_conv_network_grow_with_its_input() -> None:
    import torch

    from models.builder import build_network

    config = NetworkConfig.model_validate(
        {
            "arch": "Unet",
            "encoder": "resnet18",
            "encoder_depth": 3,
            "decoder_channels": [16, 8, 8],
            "in_channels": 1,
            "classes": 2,
            "mean": [0.5],
            "std": [0.25],
        }
    )
    torch.manual_seed(0)
    net = build_network(config)
    small, large = count_flops(net, config, side_px=64), count_flops(net, config, side_px=128)
    assert small.flops > 0 and (small.height, small.width) == (64, 64)
    assert large.flops == 4 * small.flops  # fully convolutional: linear in pixels
    assert net.training  # mode restored
