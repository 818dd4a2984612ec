"""Training and gating the click model: simulated clicks in the error regions, as RITM does.

A batch trains in automatic mode (zero guidance: the draft) with probability
``automatic_share``; otherwise each sample gets a class present in its mask and a
*base* (the network's own zero-guidance prediction of that class, or an empty mask
for ``empty_start_share`` of the samples), the simulated annotator clicks at the
centre of the largest error region of the base one to ``initial_clicks`` times (each
click taken as fixing its region, so the next goes to the next region: the first
clicks spread without a network pass, as RITM's multi-point sampler spreads them),
and up to ``click_iterations`` no-grad passes (network in eval mode, like RITM) each
add the next click where the prediction with the clicks so far is wrong. The
learning pass then sees the base as previous mask and every click, as
``POST …/refine`` sends them, and is scored with the segmentation loss plus a
normalised focal loss on the clicked class.

After training, :func:`gate_click_model` exports the click model, checks its
ONNX-vs-torch parity, and measures NoC@85/90 from the candidate's drafts on a few
held-out images with the click model and with the GrabCut fallback: the click
model serves refinements only if it needs no more clicks than the fallback (it is
stored either way, marked, for inspection and benchmarks).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from models.artifacts import sha256_file
from models.click_model import CONFIG_KEY, ClickPredictor, InteractiveArtifact, guidance_maps
from models.config import NetworkConfig
from models.predictor import OnnxPredictor
from prelabel.clicking import clicks_to_targets, next_click, summarise_noc
from prelabel.refinement import Point, Refiner, refine_class
from prelabel.schema import LabelSchema
from training.config import InteractiveConfig
from training.data import Sample

if TYPE_CHECKING:
    import torch

    from prelabel.blobs import BlobStore

logger = logging.getLogger(__name__)

LossFn = Callable[..., "torch.Tensor"]

FOCAL_GAMMA = 2.0
"""RITM's normalised focal loss exponent for the clicked class."""


def with_guidance_config(
    net_config: NetworkConfig, interactive: InteractiveConfig
) -> NetworkConfig:
    """The network config with guidance channels if the run trains a click model."""
    if interactive.enabled and not net_config.guidance_channels:
        return net_config.model_copy(update={"guidance_channels": 3})
    return net_config


def ensure_guidance(
    net: torch.nn.Module, net_config: NetworkConfig, interactive: InteractiveConfig
) -> tuple[torch.nn.Module, NetworkConfig]:
    """Add zero-initialised guidance channels to a parent that has none, if asked for."""
    from models.guidance import add_guidance_channels

    updated = with_guidance_config(net_config, interactive)
    if updated is not net_config:
        add_guidance_channels(net, net_config.in_channels)
    return net, updated


@dataclass
class ClickTraining:
    """The loss of one batch of a network with guidance channels (see the module docstring)."""

    config: InteractiveConfig
    ignore_index: int
    background: int
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def loss(
        self, net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, loss_fn: LossFn
    ) -> torch.Tensor:
        """The batch's loss, in automatic mode or with simulated clicks."""
        from models.guidance import with_zero_guidance

        if not self.config.enabled or self.rng.random() < self.config.automatic_share:
            return loss_fn(with_zero_guidance(net, images), masks)
        guidance, classes = self.simulate(net, images, masks)
        logits = with_zero_guidance(net, images, guidance)
        return loss_fn(logits, masks) + clicked_class_loss(
            logits, masks, classes, self.ignore_index
        )

    def simulate(
        self, net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, list[int | None]]:
        """Guidance ``(N, 3, H, W)`` of iterative simulated clicks, and each sample's class."""
        import torch

        from models.guidance import with_zero_guidance

        truth_masks = masks.cpu().numpy()
        classes = [self._pick_class(m) for m in truth_masks]
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                drafts = with_zero_guidance(net, images).argmax(1).cpu().numpy()
            episodes = [
                _Episode.start(drafts[i], truth_masks[i], c, self._empty_start(), self.ignore_index)
                for i, c in enumerate(classes)
            ]
            for episode in episodes:
                for _ in range(self._initial_click_count()):
                    episode.click()
            for _ in range(self.rng.randint(0, self.config.click_iterations)):
                guidance = self._guidance(episodes, images.shape[2:]).to(images.device)
                with torch.no_grad():
                    predicted = with_zero_guidance(net, images, guidance).argmax(1).cpu().numpy()
                for episode, prediction in zip(episodes, predicted, strict=True):
                    episode.click(prediction)
        finally:
            net.train(was_training)
        return self._guidance(episodes, images.shape[2:]).to(images.device), classes

    def _pick_class(self, mask: npt.NDArray[np.integer]) -> int | None:
        present = [int(c) for c in np.unique(mask) if c not in (self.background, self.ignore_index)]
        return self.rng.choice(present) if present else None

    def _initial_click_count(self) -> int:
        """1 to ``initial_clicks``, uniformly; 1 draws nothing (the recipe before the option)."""
        most = self.config.initial_clicks
        return self.rng.randint(1, most) if most > 1 else 1

    def _empty_start(self) -> bool:
        return self.rng.random() < self.config.empty_start_share

    def _guidance(self, episodes: Sequence[_Episode], hw: Sequence[int]) -> torch.Tensor:
        import torch

        height, width = int(hw[0]), int(hw[1])
        maps = [e.guidance(height, width, self.config.click_radius_px) for e in episodes]
        return torch.from_numpy(np.stack(maps))


@dataclass
class _Episode:
    """One sample's simulated interaction: the class, its base and the clicks so far."""

    class_id: int | None
    base: npt.NDArray[np.bool_]
    truth: npt.NDArray[np.bool_]
    valid: npt.NDArray[np.bool_]
    current: npt.NDArray[np.bool_]
    positive: list[Point] = field(default_factory=list)
    negative: list[Point] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        draft: npt.NDArray[np.integer],
        mask: npt.NDArray[np.integer],
        class_id: int | None,
        empty: bool,
        ignore_index: int,
    ) -> _Episode:
        base = np.zeros(mask.shape, dtype=bool) if empty or class_id is None else draft == class_id
        truth = mask == class_id if class_id is not None else np.zeros(mask.shape, dtype=bool)
        return cls(class_id, base, truth, mask != ignore_index, base)

    def click(self, prediction: npt.NDArray[np.integer] | None = None) -> None:
        """Add the next click where ``prediction`` (else the mask so far) is most wrong.

        Without a prediction (the clicks before the first network pass) a click counts
        as fixing the error region it lands in, so the next one goes to the next
        region, as RITM's first clicks are spread without a network pass.
        """
        if self.class_id is None:
            return
        if prediction is not None:
            self.current = prediction == self.class_id
        found = next_click(self.current, self.truth, self.valid)
        if found is None:
            return
        point, positive = found
        (self.positive if positive else self.negative).append(point)
        if prediction is None:
            self.current = self._region_fixed(point)

    def _region_fixed(self, point: Point) -> npt.NDArray[np.bool_]:
        """The mask so far with the wrong pixels connected to ``point`` set right (missed
        and extra ones together)."""
        error = (self.current != self.truth) & self.valid
        _, regions = cv2.connectedComponents(error.astype(np.uint8), connectivity=8)
        region = regions == regions[point[1], point[0]]
        fixed = self.current.copy()
        fixed[region] = self.truth[region]
        return fixed

    def guidance(self, height: int, width: int, radius_px: int) -> npt.NDArray[np.float32]:
        if self.class_id is None:  # automatic mode for a sample without a class
            return np.zeros((3, height, width), dtype=np.float32)
        return guidance_maps(height, width, self.positive, self.negative, self.base, radius_px)


def clicked_class_loss(
    logits: torch.Tensor,
    masks: torch.Tensor,
    classes: list[int | None],
    ignore_index: int,
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """Normalised focal loss of "the clicked class vs the rest" over the guided samples.

    RITM's NFL: binary cross-entropy weighted by ``(1 - p_t) ** gamma`` and normalised by
    the weights' sum (not differentiated), so the pixels still wrong — the error regions
    the clicks point at — carry the gradient however small they are. ``gamma = 0`` is
    plain binary cross-entropy.
    """
    import torch

    rows = [i for i, c in enumerate(classes) if c is not None]
    if not rows:
        return logits.sum() * 0.0
    index = torch.tensor([classes[i] for i in rows], dtype=torch.long)
    log_p = torch.log_softmax(logits[rows], dim=1)
    chosen = torch.nn.functional.one_hot(index, logits.shape[1]).bool()[:, :, None, None]
    log_in = (log_p * chosen).sum(1)
    log_out = log_p.masked_fill(chosen, float("-inf")).logsumexp(1)
    target = masks[rows] == index[:, None, None]
    valid = masks[rows] != ignore_index
    log_pt = torch.where(target, log_in, log_out)[valid]
    if log_pt.numel() == 0:
        return logits.sum() * 0.0
    weights = (1.0 - log_pt.exp()).clamp(min=0.0).pow(gamma).detach()
    return -(weights * log_pt).sum() / weights.sum().clamp(min=1e-6)


@dataclass(frozen=True)
class ClickGate:
    """The click model's export, its parity, and its clicks-to-target on held-out images."""

    onnx: Path
    parity_max_abs_diff: float
    metrics: dict[str, Any]
    serves: bool

    def artifact(self, onnx_key: str, radius_px: int) -> InteractiveArtifact:
        """The registry entry of the stored click model."""
        return InteractiveArtifact(
            onnx_key=onnx_key,
            onnx_sha256=sha256_file(self.onnx),
            click_radius_px=radius_px,
            serves=self.serves,
        )


def export_click_candidate(
    net: torch.nn.Module, net_config: NetworkConfig, workdir: Path
) -> tuple[Path, float]:
    """Export ``model.click.onnx`` into ``workdir`` and check it against torch.

    Parity is checked at a size other than the export's, as for the draft model.

    Returns:
        The file and the largest absolute difference of its logits from torch's.
    """
    from models.guidance import check_click_parity, export_click_onnx

    onnx_path = workdir / "model.click.onnx"
    export_click_onnx(net, onnx_path, config=net_config, sample_hw=(128, 128))
    stride = net_config.stride
    parity = check_click_parity(net, onnx_path, config=net_config, hw=(3 * stride, 5 * stride))
    return onnx_path, parity


def gate_click_model(
    net: torch.nn.Module,
    net_config: NetworkConfig,
    draft_onnx: Path,
    held_out: Sequence[Sample],
    schema: LabelSchema,
    config: InteractiveConfig,
    workdir: Path,
) -> ClickGate:
    """Export the click model and compare its NoC with GrabCut's from the candidate's drafts.

    It serves if its mean NoC@90 is below the fallback's, or equal with a mean IoU over the
    clicks (``iou_auc``) at least the fallback's; without held-out images it does not serve.
    """
    started = time.perf_counter()
    onnx_path, parity = export_click_candidate(net, net_config, workdir)
    model = ClickPredictor.from_bytes(
        onnx_path.read_bytes(), click_radius_px=config.click_radius_px
    )
    drafts = OnnxPredictor.from_path(draft_onnx)
    samples = list(held_out[: config.gate_images])
    noc = {
        "model": noc_from_drafts(model, drafts, samples, schema, config.gate_max_clicks),
        "grabcut": noc_from_drafts(refine_class, drafts, samples, schema, config.gate_max_clicks),
    }
    model_noc, fallback_noc = noc["model"].get("noc90"), noc["grabcut"].get("noc90")
    serves = model_noc is not None and fallback_noc is not None and model_noc <= fallback_noc
    if serves and model_noc == fallback_noc:
        serves = noc["model"]["iou_auc"] >= noc["grabcut"]["iou_auc"]
    metrics = {
        "images": len(samples),
        "noc_from_draft": noc,
        "parity_max_abs_diff": parity,
        "serves": serves,
        "gate_s": time.perf_counter() - started,
    }
    logger.info(
        "click model NoC@90 %s (IoU AUC %s) vs GrabCut %s (%s) on %d held-out images: %s",
        model_noc,
        noc["model"].get("iou_auc"),
        fallback_noc,
        noc["grabcut"].get("iou_auc"),
        len(samples),
        "serves" if serves else "GrabCut stays",
    )
    return ClickGate(onnx_path, parity, metrics, serves)


def noc_from_drafts(
    refiner: Refiner,
    drafts: OnnxPredictor,
    samples: Sequence[Sample],
    schema: LabelSchema,
    max_clicks: int,
) -> dict[str, Any]:
    """Mean NoC@85/90 of ``refiner`` from the drafts, over every (sample, class present)."""
    records = []
    for sample in samples:
        base = drafts.predict(sample.image).mask
        for class_id in np.unique(sample.mask).tolist():
            if class_id in (schema.background, schema.ignore_index):
                continue
            truth = sample.mask == class_id
            records.append(
                clicks_to_targets(
                    refiner, sample.image, base, truth, class_id, schema.background, max_clicks
                )
            )
    return summarise_noc(records, max_clicks)


def store_click_model(
    blobs: BlobStore, prefix: str, gate: ClickGate | None, radius_px: int
) -> dict[str, Any]:
    """Upload the click model; the entry for the version's config (``serves``: its gate)."""
    if gate is None:
        return {}
    key = f"{prefix}.click.onnx"
    blobs.put_file(key, gate.onnx)
    return {CONFIG_KEY: gate.artifact(key, radius_px).model_dump(mode="json")}
