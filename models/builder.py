"""Build smp networks from a ``NetworkConfig``; save and load checkpoints.

torch and segmentation_models_pytorch are imported inside the functions, so
importing this module stays cheap and torch-free.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.artifacts import atomic_target, sha256_file
from models.config import NetworkConfig
from models.pretrained import encoder_state, packaged_weights
from prelabel.errors import ValidationFailed

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_WRAPPER_KEYS = ("state_dict", "model")
"""Keys under which training scripts commonly nest a state_dict."""

_NETWORK_PREFIXES = ("module.", "_orig_mod.")
"""Added by DataParallel/DistributedDataParallel and by torch.compile."""

_UNET_DEFAULT_DECODER = (256, 128, 64, 32, 16)
"""smp's Unet default ``decoder_channels`` (for encoder_depth 5)."""

_RESERVED_CHECKPOINT_KEYS = frozenset({"state_dict", "config"})
_MAX_KEYS_SHOWN = 5


def build_network(config: NetworkConfig) -> torch.nn.Module:
    """Create the network described by ``config``, with local weights if configured.

    Weights are applied in order: packaged ImageNet ``encoder_weights``
    (``models.pretrained``: sha256 checked, keys mapped explicitly, first
    convolution adapted to ``in_channels``), then ``encoder_weights_path`` into
    ``net.encoder``, then ``checkpoint_path`` into the whole network. Both files may hold a raw
    state_dict or a dict with a ``"state_dict"`` or ``"model"`` entry; the
    ``module.`` and ``_orig_mod.`` prefixes are stripped.

    Args:
        config: The network to build.

    Returns:
        The network in training mode, on CPU. It maps ``(N, in_channels, H, W)``
        float32 to logits ``(N, classes, H, W)`` for H and W multiples of
        ``config.stride``.

    Raises:
        ValueError: if ``config.encoder`` is not an smp encoder.
        ValidationFailed: if a weights file does not fit the network (the
            message names missing, unexpected and mis-shaped keys).
    """
    import segmentation_models_pytorch as smp

    _check_encoder(config.encoder)
    net: torch.nn.Module = smp.create_model(
        config.arch,
        encoder_name=config.encoder,
        encoder_weights=None,  # never smp's downloads; packaged weights load below
        encoder_depth=config.encoder_depth,
        in_channels=config.in_channels,
        classes=config.classes,
        **_decoder_kwargs(config),
    )
    if config.encoder_weights is not None:
        weights = packaged_weights(config.encoder_weights)
        encoder = net.get_submodule("encoder")
        state = encoder_state(weights, encoder, config.in_channels)
        _load_into(encoder, state, source=weights.path())
        logger.info("loaded %s from %s", weights.name, weights.package)
    if config.encoder_weights_path is not None:
        state = _read_state_dict(config.encoder_weights_path, extra_prefixes=("encoder.",))
        _load_into(net.get_submodule("encoder"), state, source=config.encoder_weights_path)
        logger.info("loaded encoder weights from %s", config.encoder_weights_path)
    if config.guidance_channels:
        from models.guidance import add_guidance_channels

        add_guidance_channels(net, config.in_channels)
    if config.checkpoint_path is not None:
        state = _read_state_dict(config.checkpoint_path)
        _load_into(net, state, source=config.checkpoint_path)
        logger.info("loaded network weights from %s", config.checkpoint_path)
    return net


def _check_encoder(name: str) -> None:
    from segmentation_models_pytorch.encoders import encoders

    if name.startswith("tu-") or name in encoders:
        return
    raise ValueError(
        f"unknown encoder {name!r}; choose from {sorted(encoders)} or a timm encoder 'tu-<name>'"
    )


def _decoder_kwargs(config: NetworkConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    channels = config.decoder_channels
    if config.arch == "Unet":
        # smp's default widths assume depth 5; shallower encoders keep the widths of
        # the finest stages, so each resolution gets the width it has at depth 5.
        widths = (
            channels if channels is not None else _UNET_DEFAULT_DECODER[-config.encoder_depth :]
        )
        kwargs["decoder_channels"] = tuple(widths)
    elif config.arch == "FPN":
        # smp's FPN always merges the last four encoder features and then upsamples
        # by 4, which is only right for depth 5: at depth 3 the output would be 4x
        # the input. The merged map sits at stride 2 ** (depth - 3).
        kwargs["upsampling"] = 2 ** (config.encoder_depth - 3)
        if channels is not None:
            kwargs["decoder_pyramid_channels"] = channels[0]
            kwargs["decoder_segmentation_channels"] = channels[1]
    elif config.arch == "DeepLabV3Plus" and channels is not None:
        kwargs["decoder_channels"] = channels[0]
    return kwargs


def _read_state_dict(
    path: Path, *, extra_prefixes: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Load a state_dict from a local file, unwrapping and stripping known prefixes."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        raise ValidationFailed(f"{path} is not a torch weights file: {exc}") from exc
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise ValidationFailed(
            f"{path} holds no state_dict: expected a mapping of names to tensors, "
            f"optionally under one of {list(_WRAPPER_KEYS)}"
        )
    return _strip_prefixes(obj, (*_NETWORK_PREFIXES, *extra_prefixes))


def _strip_prefixes(
    state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Remove each prefix that every key carries, repeatedly ("module.encoder.x" -> "x")."""
    result = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if result and all(k.startswith(prefix) for k in result):
                result = {k.removeprefix(prefix): v for k, v in result.items()}
                changed = True
    return result


def _load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: Path) -> None:
    """Load ``state`` strictly, with one error that lists every kind of mismatch."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = [
        f"{len(keys)} {what} key(s) {keys[:_MAX_KEYS_SHOWN]}"
        for what, keys in (("missing", missing), ("unexpected", unexpected))
        if keys
    ]
    if misshaped:
        problems.append(f"{len(misshaped)} shape mismatch(es) {misshaped[:_MAX_KEYS_SHOWN]}")
    if problems:
        target = type(module).__name__
        raise ValidationFailed(f"weights in {source} do not fit {target}: " + "; ".join(problems))
    module.load_state_dict(dict(state), strict=True)


def save_checkpoint(
    net: torch.nn.Module,
    path: Path,
    *,
    config: NetworkConfig,
    extra: Mapping[str, object] | None = None,
) -> str:
    """Write ``{"state_dict", "config", **extra}`` to ``path`` atomically.

    Tensors are saved on CPU. ``load_checkpoint`` reads with
    ``torch.load(weights_only=True)``, so ``extra`` values must be plain data
    (str, int, float, bool, None, lists, dicts, tensors).

    Args:
        net: The network built from ``config``.
        path: Destination file (folder created if missing).
        config: The network's configuration, stored as JSON-compatible data.
        extra: More entries (epoch, metrics, schema); must not use the keys
            ``"state_dict"`` or ``"config"``.

    Returns:
        The sha256 hex digest of the written file.

    Raises:
        ValueError: if ``extra`` uses a reserved key.
    """
    import torch

    extra = dict(extra or {})
    clashes = sorted(_RESERVED_CHECKPOINT_KEYS & set(extra))
    if clashes:
        raise ValueError(
            f"extra keys {clashes} are reserved; not allowed: {sorted(_RESERVED_CHECKPOINT_KEYS)}"
        )
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "config": config.model_dump(mode="json"),
        **extra,
    }
    with atomic_target(path) as tmp:
        torch.save(payload, tmp)
        digest = sha256_file(tmp)
    logger.info("saved checkpoint %s (sha256 %s)", path, digest)
    return digest


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, NetworkConfig]:
    """Rebuild a network saved by ``save_checkpoint``.

    The stored config is returned as saved. Its weight sources
    (``encoder_weights``, ``encoder_weights_path``, ``checkpoint_path``) are
    ignored while rebuilding: the checkpoint's own state_dict replaces them.

    Args:
        path: A file written by ``save_checkpoint``.

    Returns:
        ``(network in eval mode on CPU, its config)``.

    Raises:
        ValidationFailed: if the file is not a prelabel checkpoint or its
            weights do not fit its config.
    """
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
        raise ValidationFailed(f"{path} is not a torch checkpoint: {exc}") from exc
    if not (isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and "config" in obj):
        raise ValidationFailed(
            f"{path} is not a prelabel checkpoint: needs keys 'state_dict' and 'config'"
        )
    config = NetworkConfig.model_validate(obj["config"])
    bare = config.model_copy(
        update={"encoder_weights": None, "encoder_weights_path": None, "checkpoint_path": None}
    )
    net = build_network(bare)
    _load_into(net, _strip_prefixes(obj["state_dict"], _NETWORK_PREFIXES), source=path)
    net.eval()
    return net, config
