"""The network configuration: which architecture, encoder and input normalisation.

Pure pydantic, no torch: the trainer, the exporter and the registry all read it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from models.pretrained import PACKAGED_WEIGHTS

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = ("Unet", "FPN", "DeepLabV3Plus")
"""Architectures that pass the contract suite: output shape, odd sizes, ONNX parity."""

ENCODER_DEPTHS: tuple[int, ...] = (3, 4, 5)
"""Encoder depths every architecture in ``ARCHITECTURES`` accepts (FPN and DeepLabV3+ need >= 3)."""

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25
"""Per-channel defaults applied to ``image / 255``.

For networks trained from random weights, centring [0, 1] on 0.5 with std 0.25
maps pixels to [-2, 2]. With packaged ``encoder_weights`` the defaults are the
checkpoint's own statistics (``default_normalization``).
"""

_FPN_GROUPS = 32  # FPN's segmentation blocks use GroupNorm(32, channels)


def default_normalization(
    encoder_weights: str | None, in_channels: int
) -> tuple[list[float], list[float]]:
    """Mean and std for ``image / 255``: the pretrained checkpoint's, else 0.5 / 0.25."""
    if encoder_weights in PACKAGED_WEIGHTS:
        return PACKAGED_WEIGHTS[encoder_weights].normalization(in_channels)
    return [DEFAULT_MEAN] * in_channels, [DEFAULT_STD] * in_channels


def _default_mean(data: dict[str, Any]) -> list[float]:
    return default_normalization(data.get("encoder_weights"), int(data.get("in_channels", 1)))[0]


def _default_std(data: dict[str, Any]) -> list[float]:
    return default_normalization(data.get("encoder_weights"), int(data.get("in_channels", 1)))[1]


class NetworkConfig(BaseModel):
    """A segmentation network: architecture, encoder, channels and input normalisation.

    ``decoder_channels`` depends on the architecture (``None`` keeps smp's default):

    * ``Unet``: one width per decoder stage, ``encoder_depth`` values,
      e.g. ``[64, 32, 16, 16, 16]``; ``None`` takes the last ``encoder_depth``
      of smp's ``[256, 128, 64, 32, 16]``.
    * ``FPN``: ``[pyramid_channels, segmentation_channels]``; the second must be
      a multiple of 32 (GroupNorm with 32 groups).
    * ``DeepLabV3Plus``: ``[aspp_channels]``.

    ``mean``/``std`` are applied per input channel to ``image / 255``; they default
    to ``DEFAULT_MEAN``/``DEFAULT_STD`` repeated ``in_channels`` times.

    ``encoder_weights`` names ImageNet weights that an installed package ships
    (``models.pretrained.PACKAGED_WEIGHTS``, e.g. ``imagenet-mobilenet_v2``); mean and
    std then default to that checkpoint's normalisation. Nothing is ever downloaded.
    ``encoder_weights_path`` is a local encoder state_dict in the smp encoder's naming.
    ``checkpoint_path`` is a local state_dict of the whole network.
    ``guidance_channels`` (0 or 3) adds the click guidance inputs of ``models.guidance``
    after the encoder weights load and before the checkpoint does; ``in_channels``
    stays the image's channels.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str = "Unet"
    encoder: Annotated[str, Field(min_length=1)]
    encoder_depth: int = 5
    decoder_channels: list[PositiveInt] | None = None
    in_channels: PositiveInt
    classes: Annotated[int, Field(ge=2)]
    encoder_weights: str | None = None
    encoder_weights_path: Path | None = None
    checkpoint_path: Path | None = None
    mean: list[float] = Field(default_factory=_default_mean)
    std: list[PositiveFloat] = Field(default_factory=_default_std)
    guidance_channels: Literal[0, 3] = 0
    """3: the first convolution also reads click guidance (``models.guidance``): a click
    model. 0: a plain segmentation network."""

    @field_validator("arch", mode="before")
    @classmethod
    def _check_arch(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        by_lower = {name.lower(): name for name in ARCHITECTURES}
        if value.lower() not in by_lower:
            raise ValueError(f"unknown arch {value!r}; choose from {list(ARCHITECTURES)}")
        return by_lower[value.lower()]

    @field_validator("encoder_depth")
    @classmethod
    def _check_depth(cls, value: int) -> int:
        if value not in ENCODER_DEPTHS:
            raise ValueError(
                f"encoder_depth {value} is not supported; choose from {ENCODER_DEPTHS}"
            )
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> NetworkConfig:
        if self.encoder_weights is not None:
            _check_encoder_weights(self.encoder_weights, self.encoder)
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != self.in_channels:
                raise ValueError(
                    f"{name} has {len(values)} values but in_channels is {self.in_channels}; "
                    f"give one value per input channel"
                )
        if self.decoder_channels is not None:
            _check_decoder_channels(self.arch, self.encoder_depth, self.decoder_channels)
        return self

    @property
    def stride(self) -> int:
        """Input height and width must be multiples of this: ``2 ** encoder_depth``."""
        return int(2**self.encoder_depth)


def _check_encoder_weights(name: str, encoder: str) -> None:
    if name not in PACKAGED_WEIGHTS:
        raise ValueError(
            f"unknown encoder_weights {name!r}; choose from {sorted(PACKAGED_WEIGHTS)} "
            f"or null (weights are never downloaded)"
        )
    expected = PACKAGED_WEIGHTS[name].encoder
    if encoder != expected:
        raise ValueError(
            f"encoder_weights {name!r} belong to encoder {expected!r}, not {encoder!r}"
        )


def _check_decoder_channels(arch: str, depth: int, channels: list[int]) -> None:
    expected = {"Unet": depth, "FPN": 2, "DeepLabV3Plus": 1}[arch]
    if len(channels) != expected:
        meaning = {
            "Unet": f"one width per decoder stage ({depth} = encoder_depth)",
            "FPN": "[pyramid_channels, segmentation_channels]",
            "DeepLabV3Plus": "[aspp_channels]",
        }[arch]
        raise ValueError(
            f"decoder_channels {channels} has {len(channels)} values; {arch} needs "
            f"{expected}: {meaning}"
        )
    if arch == "FPN" and channels[1] % _FPN_GROUPS:
        raise ValueError(
            f"FPN segmentation_channels (decoder_channels[1]) must be a multiple of "
            f"{_FPN_GROUPS}, got {channels[1]}"
        )


def load_network_config(path: Path) -> NetworkConfig:
    """Read a ``NetworkConfig`` from a YAML file.

    The file holds the network's fields at top level, or under a ``model:``
    section (the layout of a training config). Relative weight paths are
    resolved against the YAML file's folder, so configs can be moved together
    with their weights.

    Args:
        path: YAML file.

    Returns:
        The validated configuration.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the YAML is not a mapping, or a field is invalid
            (``pydantic.ValidationError`` is a ``ValueError``).
    """
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        raw = raw["model"]
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of network fields, got {type(raw).__name__}")
    for key in ("encoder_weights_path", "checkpoint_path"):
        value = raw.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            raw[key] = path.parent / value
    config = NetworkConfig.model_validate(raw)
    logger.debug("loaded network config %s from %s", config.arch, path)
    return config
