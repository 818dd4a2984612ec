"""After export: the network's cost (FLOPs) and the precision its drafts are served in.

A step of ``run_training`` between export and registration: count the FLOPs once
(``models.cost``), try the configured lower precisions against FP32 on the run's
held-out images (``models.precision``), and store the chosen artifact beside the FP32
one. Both land in the version's metrics (``cost``, ``precision``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.artifacts import sha256_file
from models.config import NetworkConfig
from models.cost import NetworkCost, count_flops
from models.precision import Precision, PrecisionDecision, select_precision
from prelabel.schema import LabelSchema
from prelabel.workspace import Workspace
from training.config import PrecisionConfig
from training.data import TrainingSplit

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingChoice:
    """The version's FLOPs and its precision decision (with the stored artifact)."""

    cost: NetworkCost
    precision: PrecisionDecision

    def to_metrics(self) -> dict[str, Any]:
        """The entries of the version's ``metrics``."""
        return {
            "cost": self.cost.model_dump(mode="json")
            | {"flops_per_pixel": self.cost.flops_per_pixel},
            "precision": self.precision.model_dump(mode="json"),
        }


def choose_serving(
    workspace: Workspace,
    *,
    key_prefix: str,
    net: torch.nn.Module,
    net_config: NetworkConfig,
    fp32_onnx: Path,
    split: TrainingSplit,
    schema: LabelSchema,
    config: PrecisionConfig,
) -> ServingChoice:
    """Count FLOPs, decide the precision, and upload a non-FP32 winner to ``key_prefix``."""
    cost = count_flops(net, net_config)
    decision, chosen = select_precision(
        fp32_onnx,
        fp32_onnx.parent,
        calibration=[sample.image for sample in split.train[: config.calibration_images]],
        held_out=[(sample.image, sample.mask) for sample in split.held_out],
        num_classes=schema.num_classes,
        ignore_index=schema.ignore_index,
        candidates=[Precision(name) for name in config.candidates],
        max_loss_points=config.max_miou_loss_points,
    )
    if decision.chosen is not Precision.FP32:
        key = f"{key_prefix}.{decision.chosen.value}.onnx"
        workspace.blobs.put_file(key, chosen)
        decision = decision.model_copy(update={"onnx_key": key, "onnx_sha256": sha256_file(chosen)})
    logger.info("serving precision %s, %.2f GFLOPs at 512²", decision.chosen, cost.flops / 1e9)
    return ServingChoice(cost=cost, precision=decision)
