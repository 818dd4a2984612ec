"""Drafts from an exported ONNX network: onnxruntime and numpy only, no torch.

This is what the service loads. An ``OnnxPredictor`` holds an immutable
onnxruntime session and spec, so one instance may serve concurrent requests.
"""

from __future__ import annotations

import ctypes
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf

from models.tiling import Tiling, predict_tiled
from prelabel.errors import ModelNotFound, ValidationFailed

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
METADATA_PREFIX = "prelabel."

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights for RGB -> grey, as Pillow's ``convert("L")`` uses."""

MAX_UINT8_CLASSES = 256

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
PredictorDevice = Literal["auto", "cpu", "cuda"]

Mask = npt.NDArray[np.uint8] | npt.NDArray[np.uint16]


@dataclass(frozen=True)
class Prediction:
    """A draft for one image.

    Attributes:
        mask: (H, W) class ids, uint8 (uint16 when the network has more than 256
            classes); the same H and W as the input image. No ignore index:
            every pixel gets its most likely class.
        confidence: (H, W) float32 in [0, 1], the softmax probability of the
            chosen class (at least ``1 / classes``).
    """

    mask: Mask
    confidence: npt.NDArray[np.float32]


@dataclass(frozen=True)
class PredictorSpec:
    """What the predictor needs to know about a network, read from ONNX metadata.

    Attributes:
        in_channels: Channels the network expects (1 grey, 3 RGB).
        stride: Height and width fed to the network must be multiples of this.
        mean: Per-channel mean subtracted from ``image / 255``.
        std: Per-channel std dividing ``image / 255 - mean``.
        classes: Number of output channels (class ids ``0..classes-1``).
    """

    in_channels: int
    stride: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: int

    def to_metadata(self) -> dict[str, str]:
        """The ``prelabel.*`` ONNX metadata entries (JSON-encoded values)."""
        return {
            f"{METADATA_PREFIX}in_channels": json.dumps(self.in_channels),
            f"{METADATA_PREFIX}stride": json.dumps(self.stride),
            f"{METADATA_PREFIX}mean": json.dumps(list(self.mean)),
            f"{METADATA_PREFIX}std": json.dumps(list(self.std)),
            f"{METADATA_PREFIX}classes": json.dumps(self.classes),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> PredictorSpec:
        """Parse the entries written by ``to_metadata``.

        Raises:
            ValidationFailed: if an entry is missing or malformed.
        """
        spec = cls(
            in_channels=_positive_int_entry(metadata, "in_channels"),
            stride=_positive_int_entry(metadata, "stride"),
            mean=_floats_entry(metadata, "mean"),
            std=_floats_entry(metadata, "std"),
            classes=_positive_int_entry(metadata, "classes"),
        )
        if not len(spec.mean) == len(spec.std) == spec.in_channels or min(spec.std) <= 0:
            raise ValidationFailed(
                f"malformed prelabel metadata: mean {spec.mean} and std {spec.std} need "
                f"{spec.in_channels} values each (in_channels), std > 0"
            )
        return spec


def _metadata_entry(metadata: Mapping[str, str], name: str) -> object:
    key = f"{METADATA_PREFIX}{name}"
    if key not in metadata:
        raise ValidationFailed(f"not a prelabel ONNX model: missing metadata {key}")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"metadata {key}={metadata[key]!r} is not JSON") from exc


def _positive_int_entry(metadata: Mapping[str, str], name: str) -> int:
    value = _metadata_entry(metadata, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationFailed(f"metadata {METADATA_PREFIX}{name}={value!r} is not a positive int")
    return value


def _floats_entry(metadata: Mapping[str, str], name: str) -> tuple[float, ...]:
    value = _metadata_entry(metadata, name)
    if not isinstance(value, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in value
    ):
        raise ValidationFailed(f"metadata {METADATA_PREFIX}{name}={value!r} is not a number list")
    return tuple(float(x) for x in value)


def padded_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """The (height, width) fed to the network for an image of ``height x width``.

    Each side is rounded up to a multiple of ``stride`` and to at least
    ``2 * stride``. A ``stride x stride`` input leaves a 1x1 deepest feature
    map, where FPN's GroupNorm normalises single values: torch refuses it, and
    onnxruntime turns rounding noise into logits.
    """

    def up(side: int) -> int:
        return max(-(-side // stride) * stride, 2 * stride)

    return up(height), up(width)


def preprocess(image: npt.NDArray[np.uint8], spec: PredictorSpec) -> npt.NDArray[np.float32]:
    """Turn an image into a normalised, padded network input.

    Channels are converted to ``spec.in_channels`` (RGB -> grey by
    ``LUMINANCE_WEIGHTS``; grey -> RGB by repetition), scaled by 1/255,
    normalised by ``spec.mean``/``spec.std``, then padded at the bottom and
    right to ``padded_size``: reflected where the image is large enough,
    repeated from the edge otherwise.

    Args:
        image: (H, W) grey, (H, W, 1) grey or (H, W, 3) RGB, uint8 in 0..255.
        spec: The network's input contract.

    Returns:
        (1, in_channels, H', W') float32, H' and W' from ``padded_size``.

    Raises:
        TypeError: if ``image`` is not uint8.
        ValueError: if its shape is not one of those listed above, or its
            channels cannot be converted to ``spec.in_channels``.
    """
    channels = convert_channels(image, spec.in_channels)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    scaled = (channels.astype(np.float32) / np.float32(255.0) - mean) / std
    height, width = image.shape[:2]
    target_h, target_w = padded_size(height, width, spec.stride)
    padded = _pad_axis(scaled, axis=0, amount=target_h - height)
    padded = _pad_axis(padded, axis=1, amount=target_w - width)
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)


def _as_hwc(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    if image.dtype != np.uint8:
        raise TypeError(f"image dtype is {image.dtype}; expected uint8")
    hwc = image[:, :, None] if image.ndim == 2 else image
    if hwc.ndim == 3 and hwc.shape[2] in (1, 3) and hwc.shape[0] > 0 and hwc.shape[1] > 0:
        return hwc
    raise ValueError(
        f"image shape {image.shape} is not one of (H, W), (H, W, 1), (H, W, 3) with H, W > 0"
    )


def convert_channels(image: npt.NDArray[np.uint8], in_channels: int) -> npt.NDArray[np.uint8]:
    """Give an image the channels a network expects; training uses this too.

    RGB -> grey uses ``LUMINANCE_WEIGHTS``, rounded to uint8 like Pillow's
    ``convert("L")``; grey -> N channels repeats the grey channel.

    Args:
        image: (H, W) grey, (H, W, 1) grey or (H, W, 3) RGB, uint8 in 0..255.
        in_channels: Channels wanted.

    Returns:
        (H, W, in_channels) uint8.

    Raises:
        TypeError: if ``image`` is not uint8.
        ValueError: if the shape is not one of those above, or an RGB image
            should become something other than 1 or 3 channels.
    """
    hwc = _as_hwc(image)
    have = hwc.shape[2]
    if have == in_channels:
        return hwc
    if have == 3 and in_channels == 1:
        weights = np.asarray(LUMINANCE_WEIGHTS, dtype=np.float32)
        luminance: npt.NDArray[np.float32] = hwc.astype(np.float32) @ weights
        return np.rint(luminance).clip(0, 255).astype(np.uint8)[:, :, None]
    if have == 1:
        return np.repeat(hwc, in_channels, axis=2)
    raise ValueError(
        f"cannot convert a {have}-channel image to {in_channels} channels; "
        f"RGB images convert to 1 or 3 channels"
    )


def _pad_axis(array: npt.NDArray[np.float32], *, axis: int, amount: int) -> npt.NDArray[np.float32]:
    if amount == 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, amount)
    # Reflection mirrors real structure into the padding; it needs amount < size.
    mode: Literal["reflect", "edge"] = "reflect" if amount < array.shape[axis] else "edge"
    return np.pad(array, widths, mode=mode)


def postprocess(logits: npt.NDArray[np.float32], height: int, width: int) -> Prediction:
    """Crop one image's logits to its size and turn them into mask and confidence.

    Args:
        logits: (classes, H', W') float32, H' >= height and W' >= width.
        height: Image height.
        width: Image width.

    Returns:
        The prediction, ``(height, width)``.
    """
    cropped = logits[:, :height, :width]
    mask_dtype = np.uint8 if cropped.shape[0] <= MAX_UINT8_CLASSES else np.uint16
    # One pass per class over (H, W) planes: twice as fast as argmax over the class axis
    # of a (C, H, W) array; ties go to the lower class id, as with argmax.
    top = cropped[0].astype(np.float32, copy=True)
    mask = np.zeros((height, width), dtype=mask_dtype)
    for class_id in range(1, cropped.shape[0]):
        np.copyto(mask, mask_dtype(class_id), where=cropped[class_id] > top)
        np.maximum(top, cropped[class_id], out=top)
    # The top class has probability exp(0) / sum(exp(l - max)): stable, no full softmax.
    total = np.zeros((height, width), dtype=np.float32)
    term = np.empty((height, width), dtype=np.float32)
    for class_id in range(cropped.shape[0]):
        np.subtract(cropped[class_id], top, out=term)
        total += np.exp(term, out=term)
    confidence = np.reciprocal(total, out=total)
    return Prediction(mask=mask, confidence=np.clip(confidence, 0.0, 1.0, out=confidence))


def choose_providers(
    available: Sequence[str], *, cuda_devices: int, requested: PredictorDevice = "auto"
) -> list[str]:
    """The onnxruntime execution providers to ask for, best first, always ending on the CPU.

    CUDA comes first when onnxruntime offers it (the ``onnxruntime-gpu`` package) and a
    GPU is visible, unless ``requested`` is ``cpu``.

    Args:
        available: ``onnxruntime.get_available_providers()``.
        cuda_devices: GPUs visible to this process (``visible_cuda_devices()``).
        requested: ``auto``, ``cpu`` (force the CPU) or ``cuda`` (fail without it).

    Raises:
        ValueError: ``cuda`` was requested but is not available, or an unknown request.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown predictor device {requested!r}; choose auto, cpu or cuda")
    cuda = CUDA_PROVIDER in available and cuda_devices > 0
    if requested == "cuda" and not cuda:
        raise ValueError(
            f"predictor device 'cuda' needs onnxruntime-gpu and a visible GPU; onnxruntime "
            f"offers {list(available)}, {cuda_devices} GPU(s) visible"
        )
    return [CUDA_PROVIDER, CPU_PROVIDER] if cuda and requested != "cpu" else [CPU_PROVIDER]


def visible_cuda_devices() -> int:
    """How many CUDA devices the driver shows this process (0 without a driver).

    Asks the CUDA driver library directly, so that the service needs no torch; it honours
    ``CUDA_VISIBLE_DEVICES``.
    """
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


GraphOptimization = Literal["disable", "basic", "extended", "all"]
ExecutionMode = Literal["sequential", "parallel"]

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_EXECUTION_MODES = {
    "sequential": ort.ExecutionMode.ORT_SEQUENTIAL,
    "parallel": ort.ExecutionMode.ORT_PARALLEL,
}


@dataclass(frozen=True)
class RuntimeOptions:
    """onnxruntime session options; the defaults are the measured best on this project's
    reference machine (README, "Tuned inference"; ``python -m bench.runtime_options``).

    Attributes:
        threads: Intra-op threads; 0 lets onnxruntime choose (one per physical core).
        inter_op_threads: Threads across independent graph branches (``parallel`` mode
            only); 0 lets onnxruntime choose.
        graph_optimization: Graph rewrites before running (constant folding, fusions).
        execution_mode: ``sequential`` runs one node at a time, each on ``threads``;
            ``parallel`` also runs independent branches side by side.
        memory_pattern: Plan buffers from the first run's shapes (helps repeated sizes).
        cpu_arena: Keep freed tensors in onnxruntime's arena instead of returning them.
        spinning: Intra-op threads busy-wait for work between nodes; off yields the
            cores to the other processes (service, worker) sharing them.
        device: ``cpu``; ``cuda`` needs onnxruntime-gpu and a GPU; ``auto`` takes CUDA
            when both are present, else the CPU.
    """

    threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: GraphOptimization = "all"
    execution_mode: ExecutionMode = "sequential"
    memory_pattern: bool = True
    cpu_arena: bool = True
    spinning: bool = True
    device: PredictorDevice = "auto"

    def __post_init__(self) -> None:
        if self.threads < 0 or self.inter_op_threads < 0:
            raise ValueError(
                f"threads must be 0 (automatic) or positive, got threads={self.threads}, "
                f"inter_op_threads={self.inter_op_threads}"
            )
        if self.graph_optimization not in _GRAPH_LEVELS:
            raise ValueError(
                f"unknown graph_optimization {self.graph_optimization!r}; "
                f"choose from {sorted(_GRAPH_LEVELS)}"
            )
        if self.execution_mode not in _EXECUTION_MODES:
            raise ValueError(
                f"unknown execution_mode {self.execution_mode!r}; "
                f"choose from {sorted(_EXECUTION_MODES)}"
            )

    def session_options(self) -> ort.SessionOptions:
        """These options as onnxruntime ``SessionOptions``."""
        options = ort.SessionOptions()
        if self.threads > 0:
            options.intra_op_num_threads = self.threads
        if self.inter_op_threads > 0:
            options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = _GRAPH_LEVELS[self.graph_optimization]
        options.execution_mode = _EXECUTION_MODES[self.execution_mode]
        options.enable_mem_pattern = self.memory_pattern
        options.enable_cpu_mem_arena = self.cpu_arena
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.spinning else "0"
        )
        options.add_session_config_entry(
            "session.inter_op.allow_spinning", "1" if self.spinning else "0"
        )
        return options

    def providers(self) -> list[str]:
        """The execution providers to ask for, best first."""
        available = ort.get_available_providers()
        cuda_devices = visible_cuda_devices() if CUDA_PROVIDER in available else 0
        return choose_providers(available, cuda_devices=cuda_devices, requested=self.device)


def _open_session(
    model: str | bytes, options: ort.SessionOptions, providers: list[str], *, source: str
) -> ort.InferenceSession:
    """An onnxruntime session on ``providers``; back on the CPU if CUDA cannot start."""
    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    except InvalidProtobuf as exc:
        raise ValidationFailed(f"{source} is not an ONNX model: {exc}") from exc
    except RuntimeError as exc:  # the CUDA provider failed to start (driver, cuDNN, memory)
        if providers == [CPU_PROVIDER]:
            raise
        logger.warning("CUDA provider failed for %s (%s); drafting on the CPU", source, exc)
        return _open_session(model, options, [CPU_PROVIDER], source=source)


class OnnxPredictor:
    """Runs an ONNX network exported by ``models.onnx_export.export_onnx``.

    Thread-safe: it holds no mutable state, and onnxruntime sessions accept
    concurrent ``run`` calls. Images with a side over ``tiling.tile_px`` are drafted
    tile by tile (``models.tiling``), so memory stays bounded however large they are.
    """

    def __init__(
        self, session: ort.InferenceSession, spec: PredictorSpec, tiling: Tiling | None = None
    ) -> None:
        """Wrap a session; see ``from_path`` to load a file."""
        self.session = session
        self.spec = spec
        self.tiling = tiling or Tiling()

    @classmethod
    def from_path(
        cls,
        path: Path,
        *,
        threads: int = 0,
        tiling: Tiling | None = None,
        device: PredictorDevice = "auto",
        runtime: RuntimeOptions | None = None,
    ) -> OnnxPredictor:
        """Load an ONNX file and read its ``prelabel.*`` metadata.

        Args:
            path: ``.onnx`` file written by ``export_onnx``.
            threads: Intra-op threads; 0 lets onnxruntime choose (one per core).
            tiling: When and how large images are drafted tile by tile.
            device: Execution providers by ``choose_providers`` (CUDA when available);
                ignored when ``runtime`` is given (its ``device`` counts).
            runtime: Session options (``threads`` and ``device`` are ignored when given).

        Returns:
            A predictor on the chosen execution providers.

        Raises:
            ValueError: if ``threads`` is negative.
            ModelNotFound: if ``path`` is not a file.
            ValidationFailed: if the file is not ONNX or lacks prelabel metadata.
        """
        options = runtime or RuntimeOptions(threads=threads, device=device)
        if not path.is_file():
            raise ModelNotFound(str(path))
        return cls._load(str(path), options, source=str(path), tiling=tiling)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        threads: int = 0,
        tiling: Tiling | None = None,
        device: PredictorDevice = "auto",
        runtime: RuntimeOptions | None = None,
    ) -> OnnxPredictor:
        """Load an ONNX model from memory (e.g. a blob fetched from storage).

        Args:
            data: The bytes of a ``.onnx`` file written by ``export_onnx``.
            threads: Intra-op threads; 0 lets onnxruntime choose (one per core).
            tiling: When and how large images are drafted tile by tile.
            device: Execution providers by ``choose_providers`` (CUDA when available);
                ignored when ``runtime`` is given (its ``device`` counts).
            runtime: Session options (``threads`` and ``device`` are ignored when given).

        Returns:
            A predictor on the chosen execution providers.

        Raises:
            ValueError: if ``threads`` is negative.
            ValidationFailed: if ``data`` is not ONNX or lacks prelabel metadata.
        """
        options = runtime or RuntimeOptions(threads=threads, device=device)
        return cls._load(data, options, source=f"<{len(data)} bytes>", tiling=tiling)

    @classmethod
    def _load(
        cls,
        model: str | bytes,
        options: RuntimeOptions,
        *,
        source: str,
        tiling: Tiling | None,
    ) -> OnnxPredictor:
        session = _open_session(
            model, options.session_options(), options.providers(), source=source
        )
        spec = PredictorSpec.from_metadata(session.get_modelmeta().custom_metadata_map)
        logger.info(
            "loaded ONNX model %s (%d classes) on %s",
            source,
            spec.classes,
            ", ".join(session.get_providers()),
        )
        return cls(session, spec, tiling)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session runs on, best first."""
        return list(self.session.get_providers())

    def predict(self, image: npt.NDArray[np.uint8]) -> Prediction:
        """Draft one image of any size.

        Args:
            image: (H, W) grey, (H, W, 1) grey or (H, W, 3) RGB, uint8.

        Returns:
            Mask and confidence of shape (H, W).

        Raises:
            TypeError: if ``image`` is not uint8.
            ValueError: if ``image`` has an unsupported shape.
        """
        height, width = image.shape[:2]
        if self.tiling.applies(height, width):
            mask, confidence = predict_tiled(
                _as_hwc(image), self._tile_logits, self.tiling, align=self.spec.stride
            )
            typed: Mask = (
                mask.astype(np.uint8)
                if self.spec.classes <= MAX_UINT8_CLASSES
                else mask.astype(np.uint16)
            )
            return Prediction(mask=typed, confidence=confidence)
        return self.predict_batch([image], max_batch=1)[0]

    def _tile_logits(self, tile: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        height, width = tile.shape[:2]
        return self._run(preprocess(tile, self.spec))[0, :, :height, :width]

    def predict_batch(
        self, images: Sequence[npt.NDArray[np.uint8]], *, max_batch: int = 8
    ) -> list[Prediction]:
        """Draft several images; those with the same padded size share one run.

        Args:
            images: Images as accepted by ``predict``; sizes may differ.
            max_batch: Most images in one onnxruntime run (bounds memory).

        Returns:
            One prediction per image, in input order.

        Raises:
            TypeError: if an image is not uint8.
            ValueError: if an image has an unsupported shape, or ``max_batch < 1``.
        """
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        results: dict[int, Prediction] = {}
        inputs: dict[int, npt.NDArray[np.float32]] = {}
        for index, image in enumerate(images):
            if self.tiling.applies(*image.shape[:2]):
                results[index] = self.predict(image)  # tile by tile, alone
            else:
                inputs[index] = preprocess(image, self.spec)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, tensor in inputs.items():
            groups.setdefault(tensor.shape, []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), max_batch):
                chunk = indices[start : start + max_batch]
                logits = self._run(np.concatenate([inputs[i] for i in chunk]))
                for row, index in zip(logits, chunk, strict=True):
                    height, width = images[index].shape[:2]
                    results[index] = postprocess(row, height, width)
        return [results[i] for i in range(len(images))]

    def _run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        expected = (batch.shape[0], self.spec.classes, *batch.shape[2:])
        if logits.shape != expected:
            raise ValidationFailed(f"model returned logits {logits.shape}, expected {expected}")
        return np.asarray(logits, dtype=np.float32)
