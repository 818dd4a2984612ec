"""The tiny network the training tests use: seconds per run on the CPU, 3 classes, grey input."""

from __future__ import annotations

from typing import Any

TINY_NETWORK: dict[str, Any] = {
    "arch": "Unet",
    "encoder": "resnet18",
    "encoder_depth": 3,
    "decoder_channels": [32, 16, 8],
    "in_channels": 1,
    "classes": 3,
    "mean": [0.5],
    "std": [0.25],
}
