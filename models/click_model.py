"""The click model: the project's network with guidance inputs, served by onnxruntime.

Following RITM (Sofiiuk et al. 2021) and MONAI's DeepEdit, the project's
segmentation network takes three *guidance* channels besides the image:

* ``0``: disks of radius ``click_radius_px`` around the positive clicks (1 inside),
* ``1``: the same around the negative clicks,
* ``2``: the previous mask of the class being refined (1 on the class).

They enter the encoder's first convolution as extra input channels whose weights
start at zero (``models.guidance``), so the pretrained draft behaviour is
unchanged, and all-zero guidance is *automatic mode*: the draft. One set of
weights therefore makes both the drafts and the refinements. Two ONNX artifacts
are exported from them: the draft model (the guidance fixed to zero inside the
graph, one ``image`` input, the serving contract of ``OnnxPredictor``
unchanged) and the click model (inputs ``image`` and ``guidance``), recorded in
the version's config under ``"interactive"`` with its sha256 and whether it passed
its gate (``serves``).

This module is torch-free (onnxruntime and numpy): the service loads it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidProtobuf
from pydantic import BaseModel, ConfigDict, ValidationError

from models.predictor import INPUT_NAME, OUTPUT_NAME, PredictorSpec, preprocess
from prelabel.blobs import BlobStore
from prelabel.errors import IntegrationError, ValidationFailed
from prelabel.refinement import Clicks, Point, RefinedMask, RefineMethod, click_disks

logger = logging.getLogger(__name__)

GUIDANCE_NAME = "guidance"
GUIDANCE_CHANNELS = 3
"""Positive click disks, negative click disks, previous mask of the class."""
CLICK_RADIUS_PX = 5
"""Radius of a click's disk in the guidance (RITM's)."""
CERTAIN_RADIUS_PX = 4
"""Pixels this near a click keep its label in the model's answer (``click_disks``): the
network may disagree with a click on small or faint objects, and without this the
simulated annotator clicks the same pixel again and again to no effect. 2, 3, 4, 5 and
7 px were measured on both learning-curve datasets (README, session 19): 3 and 4 tie,
5 and more cost clicks on small Colin27/AAL regions."""
CONFIG_KEY = "interactive"
"""Where a model version's config records its click model artifact."""


class InteractiveArtifact(BaseModel):
    """The click model of a model version, pinned by sha256 like its draft model."""

    model_config = ConfigDict(frozen=True)

    onnx_key: str
    onnx_sha256: str
    click_radius_px: int = CLICK_RADIUS_PX
    serves: bool = True
    """Whether it passed its gate (NoC@90 no worse than GrabCut's): only then it refines
    in the service; a click model that failed is kept for inspection and benchmarks."""


def interactive_artifact(config: dict[str, Any]) -> InteractiveArtifact | None:
    """The click model recorded in a model version's ``config``, or None if it has none."""
    raw = config.get(CONFIG_KEY)
    if not isinstance(raw, dict) or "onnx_key" not in raw:
        return None
    try:
        return InteractiveArtifact.model_validate(raw)
    except ValidationError:
        logger.warning("model version config has an unreadable %r entry: ignored", CONFIG_KEY)
        return None


def guidance_maps(
    height: int,
    width: int,
    positive: list[Point],
    negative: list[Point],
    previous: npt.NDArray[np.bool_] | None,
    radius_px: int = CLICK_RADIUS_PX,
) -> npt.NDArray[np.float32]:
    """The three guidance channels of one refinement.

    Args:
        height: Image height.
        width: Image width.
        positive: ``(x, y)`` pixels of the positive clicks.
        negative: ``(x, y)`` pixels of the negative clicks.
        previous: ``(H, W)`` bool, the class's pixels before the clicks; None: empty.
        radius_px: Disk radius.

    Returns:
        ``(3, H, W)`` float32 in {0, 1}: positive disks, negative disks, previous mask.
    """
    maps = np.zeros((GUIDANCE_CHANNELS, height, width), dtype=np.uint8)
    for channel, points in ((0, positive), (1, negative)):
        for point in points:
            cv2.circle(maps[channel], (int(point[0]), int(point[1])), radius_px, 1, thickness=-1)
    if previous is not None:
        maps[2] = previous
    return maps.astype(np.float32)


class ClickPredictor:
    """Refines one class of a mask from clicks with the click model (a ``Refiner``).

    Thread-safe like ``OnnxPredictor``: an immutable session and spec.
    """

    def __init__(
        self, session: ort.InferenceSession, spec: PredictorSpec, *, click_radius_px: int
    ) -> None:
        """Wrap a session; see ``from_bytes``."""
        self.session = session
        self.spec = spec
        self.click_radius_px = click_radius_px

    @classmethod
    def from_bytes(
        cls, data: bytes, *, threads: int = 0, click_radius_px: int = CLICK_RADIUS_PX
    ) -> ClickPredictor:
        """Load a click model exported by ``models.guidance.export_click_onnx``.

        Raises:
            ValidationFailed: not ONNX, no prelabel metadata, or no ``guidance`` input.
        """
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except InvalidProtobuf as exc:
            raise ValidationFailed(f"<{len(data)} bytes> is not an ONNX model: {exc}") from exc
        names = {i.name for i in session.get_inputs()}
        if names != {INPUT_NAME, GUIDANCE_NAME}:
            raise ValidationFailed(
                f"a click model takes inputs {[INPUT_NAME, GUIDANCE_NAME]}, "
                f"this one takes {sorted(names)}"
            )
        spec = PredictorSpec.from_metadata(session.get_modelmeta().custom_metadata_map)
        return cls(session, spec, click_radius_px=click_radius_px)

    def logits(
        self, pixels: npt.NDArray[np.uint8], guidance: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """``(classes, H, W)`` logits of one image with ``(3, H, W)`` guidance."""
        height, width = pixels.shape[:2]
        image = preprocess(pixels, self.spec)
        padded = np.zeros((1, GUIDANCE_CHANNELS, *image.shape[2:]), dtype=np.float32)
        padded[0, :, :height, :width] = guidance
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: image, GUIDANCE_NAME: padded})
        return np.asarray(logits[0, :, :height, :width], dtype=np.float32)

    def __call__(
        self,
        pixels: npt.NDArray[np.uint8],
        base: npt.NDArray[np.integer],
        class_id: int,
        clicks: Clicks,
        *,
        background: int,
    ) -> RefinedMask:
        """The whole mask with ``class_id`` redrawn by the click model.

        The class's pixels become those the network labels ``class_id`` given the
        clicks and the base's class as previous mask; pixels the class gives up
        become ``background``, other classes keep theirs elsewhere. With a box, the
        class changes only inside it. Pixels within ``CERTAIN_RADIUS_PX`` of a click
        take the click's label whatever the network says (``click_disks``).

        Raises:
            ValueError: ``pixels`` and ``base`` differ in size, or ``class_id`` is the
                background or beyond the network's classes.
            ValidationFailed: no click and no box, or a click outside the image.
        """
        height, width = base.shape
        if pixels.shape[:2] != base.shape:
            raise ValueError(f"image {pixels.shape[:2]} and base mask {base.shape} differ")
        if class_id == background or not 0 <= class_id < self.spec.classes:
            raise ValueError(
                f"class {class_id} cannot be refined: the background is {background}, "
                f"the network has classes 0..{self.spec.classes - 1}"
            )
        clicks.check(height, width)
        started = time.perf_counter()
        region = base == class_id
        guidance = guidance_maps(
            height, width, clicks.positive, clicks.negative, region, self.click_radius_px
        )
        fg = np.argmax(self.logits(pixels, guidance), axis=0) == class_id
        if clicks.box is not None:
            x1, y1, x2, y2 = clicks.box
            inside = np.zeros_like(fg)
            inside[y1 : y2 + 1, x1 : x2 + 1] = True
            fg = np.where(inside, fg, region)
        fg = click_disks(base.shape, clicks, CERTAIN_RADIUS_PX).kept_in(fg)
        out = base.copy()
        out[fg] = class_id
        out[~fg & region] = background
        logger.debug("click model refined class %d in %.1f ms", class_id, _ms(started))
        return RefinedMask(mask=out, method=RefineMethod.MODEL)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def load_click_predictor(
    blobs: BlobStore, artifact: InteractiveArtifact, *, threads: int = 0
) -> ClickPredictor:
    """The click model of a version, after checking the sha256 the registry pins.

    Raises:
        IntegrationError: the stored artifact does not match its recorded checksum.
    """
    data = blobs.get(artifact.onnx_key)
    digest = hashlib.sha256(data).hexdigest()
    if digest != artifact.onnx_sha256:
        raise IntegrationError(
            f"click model {artifact.onnx_key} has sha256 {digest[:12]}…, "
            f"the registry pins {artifact.onnx_sha256[:12]}…"
        )
    return ClickPredictor.from_bytes(
        data, threads=threads, click_radius_px=artifact.click_radius_px
    )
