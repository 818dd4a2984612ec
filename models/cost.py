"""What a draft costs in arithmetic: the network's FLOPs, counted once at export.

A segmentation network here is fully convolutional, so its work grows with the
pixels it sees: ``NetworkCost`` keeps the count at one reference size and scales it
to any padded input. The count comes from torch's ``FlopCounterMode`` (convolutions
and matrix products, 2 FLOPs per multiply-add; element-wise work is not counted, so
the compute bound derived from it is a lower bound on time). torch is imported
inside ``count_flops`` only; the rest is plain data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from models.config import NetworkConfig
from models.predictor import padded_size

if TYPE_CHECKING:
    import torch

REFERENCE_SIDE_PX = 512
"""The counted input is ``REFERENCE_SIDE_PX`` square (a multiple of every stride used here)."""


class NetworkCost(BaseModel):
    """FLOPs of one forward pass, stored with a model version (``metrics["cost"]``).

    Attributes:
        flops: FLOPs of one image of ``height x width`` (batch 1).
        height: Counted input height (a multiple of the stride).
        width: Counted input width.
        counter: How they were counted.
    """

    model_config = ConfigDict(frozen=True)

    flops: int
    height: int
    width: int
    counter: str = "torch.utils.flop_counter.FlopCounterMode"

    @property
    def flops_per_pixel(self) -> float:
        """FLOPs per input pixel."""
        return self.flops / (self.height * self.width)

    def flops_for(self, height: int, width: int, stride: int) -> float:
        """FLOPs of a draft of an image of ``height x width``: the padded input's pixels."""
        padded_h, padded_w = padded_size(height, width, stride)
        return self.flops_per_pixel * padded_h * padded_w


def count_flops(
    net: torch.nn.Module, config: NetworkConfig, *, side_px: int = REFERENCE_SIDE_PX
) -> NetworkCost:
    """Count the FLOPs of one forward pass of ``net`` on a ``side_px`` square image.

    Args:
        net: The network built from ``config`` (its train/eval mode is restored).
        config: Its configuration (input channels, stride).
        side_px: Side of the counted input; rounded up to the stride.

    Returns:
        The count, with the size it was made at.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    height, width = padded_size(side_px, side_px, config.stride)
    device = next(net.parameters()).device
    sample = torch.zeros(1, config.in_channels, height, width, device=device)
    was_training = net.training
    net.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            net(sample)
    finally:
        net.train(was_training)
    return NetworkCost(flops=int(counter.get_total_flops()), height=height, width=width)
