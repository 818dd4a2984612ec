"""Fine-tune a project's network on its corrections: ``run_training`` reads top-down.

build data → build the network (from the serving version, or from scratch) →
``train_one_epoch`` x N → export ONNX and check parity → ``evaluate`` candidate
and serving version on the same held-out images → register → promote or reject.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.artifacts import sha256_file
from models.builder import build_network, load_checkpoint, save_checkpoint
from models.config import NetworkConfig
from models.onnx_export import check_parity, export_onnx
from models.registry import (
    ModelRecord,
    NewModelVersion,
    promote,
    register_version,
    reject,
    serving_version,
)
from prelabel.errors import TrainingError
from prelabel.images import list_images
from prelabel.jobs import RunKind
from prelabel.policy import PromotionDecision, decide_promotion
from prelabel.projects import Project, get_project
from prelabel.workspace import Workspace
from training.config import TrainingConfig
from training.data import SegmentationDataset, Split, build_transform, load_split
from training.evaluate import evaluate_onnx

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainingOutcome:
    """What a run produced: the registered version and whether it now serves."""

    model: ModelRecord
    promoted: bool
    decision: str
    kind: RunKind
    train_s: float
    candidate_miou: float | None
    serving_miou: float | None


def _network_config(
    config: TrainingConfig, project: Project, workspace: Workspace
) -> NetworkConfig:
    """The configured network, sized for the project: its class count and image channels."""
    with workspace.sessions() as session:
        rgb = any(image.channels == 3 for image in list_images(session, project.id))
    in_channels = 3 if rgb else 1
    base = config.model
    same = base.in_channels == in_channels
    return base.model_copy(
        update={
            "classes": project.label_schema.num_classes,
            "in_channels": in_channels,
            "mean": base.mean if same else [base.mean[0]] * in_channels,
            "std": base.std if same else [base.std[0]] * in_channels,
        }
    )


def build_start_network(
    config: TrainingConfig,
    project: Project,
    workspace: Workspace,
    parent: ModelRecord | None,
    kind: RunKind,
    workdir: Path,
) -> tuple[torch.nn.Module, NetworkConfig, RunKind]:
    """The network to train: the parent's weights for an incremental run, else fresh."""
    if parent is not None and kind is RunKind.INCREMENTAL:
        checkpoint = workdir / "parent.pt"
        checkpoint.write_bytes(workspace.blobs.get(parent.checkpoint_key))
        net, net_config = load_checkpoint(checkpoint)
        if net_config.classes == project.label_schema.num_classes:
            return net, net_config, RunKind.INCREMENTAL
        logger.info(
            "parent %s has %d classes, schema has %d: training from scratch",
            parent.version,
            net_config.classes,
            project.label_schema.num_classes,
        )
    net_config = _network_config(config, project, workspace)
    return build_network(net_config), net_config, RunKind.FULL


def train_one_epoch(
    net: torch.nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loss_fn: Callable[..., torch.Tensor],
) -> float:
    """One pass over ``loader``; returns the mean loss."""
    net.train()
    total, batches = 0.0, 0
    for images, masks in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(images), masks)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total, batches = total + float(loss.detach()), batches + 1
    return total / max(batches, 1)


def make_loss(ignore_index: int, dice_weight: float) -> Callable[..., torch.Tensor]:
    """Cross-entropy plus Dice, both ignoring ``ignore_index``."""
    import segmentation_models_pytorch as smp
    import torch

    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=ignore_index)
    dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=ignore_index)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target) + dice_weight * dice(logits, target)

    return loss


def fit(
    net: torch.nn.Module,
    split: Split,
    net_config: NetworkConfig,
    config: TrainingConfig,
    *,
    epochs: int,
    min_steps: int,
    lr: float,
    ignore_index: int,
    on_progress: ProgressCallback,
) -> dict[str, Any]:
    """Train ``net`` in place on ``split.train``; returns the training metrics."""
    import torch

    dataset = SegmentationDataset(
        split.train,
        in_channels=net_config.in_channels,
        mean=net_config.mean,
        std=net_config.std,
        transform=build_transform(config.data, ignore_index=ignore_index),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        shuffle=True,
        num_workers=config.data.num_workers,
        drop_last=False,
    )
    steps_per_epoch = len(loader)
    epochs = max(epochs, math.ceil(min_steps / steps_per_epoch))
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.1
    )
    loss_fn = make_loss(ignore_index, config.optim.dice_weight)
    started, loss = time.perf_counter(), float("nan")
    for epoch in range(1, epochs + 1):
        loss = train_one_epoch(net, loader, optimizer, scheduler, loss_fn)
        on_progress({"stage": "training", "epoch": epoch, "epochs": epochs, "loss": loss})
        logger.info("epoch %d/%d loss %.4f", epoch, epochs, loss)
    seconds = time.perf_counter() - started
    return {
        "epochs": epochs,
        "final_loss": loss,
        "train_s": seconds,
        "images_per_s": epochs * len(dataset) / seconds if seconds else None,
    }


def export_candidate(
    net: torch.nn.Module, net_config: NetworkConfig, workdir: Path, config: TrainingConfig
) -> tuple[Path, Path, float]:
    """Save checkpoint and ONNX; check ONNX-vs-torch parity at a size other than the export's."""
    checkpoint = workdir / "model.pt"
    save_checkpoint(
        net,
        checkpoint,
        config=net_config,
        extra={"training_config": config.model_dump(mode="json")},
    )
    onnx_path = workdir / "model.onnx"
    export_onnx(net, onnx_path, config=net_config, sample_hw=(128, 128))
    stride = net_config.stride
    diff = check_parity(net, onnx_path, config=net_config, hw=(3 * stride, 5 * stride))
    return checkpoint, onnx_path, diff


def _upload_candidate(
    workspace: Workspace, project: Project, run_id: str, checkpoint: Path, onnx_path: Path
) -> tuple[str, str, str, str]:
    prefix = f"projects/{project.id}/models/{run_id}"
    onnx_key, checkpoint_key = f"{prefix}.onnx", f"{prefix}.pt"
    workspace.blobs.put(onnx_key, onnx_path.read_bytes())
    workspace.blobs.put(checkpoint_key, checkpoint.read_bytes())
    return onnx_key, sha256_file(onnx_path), checkpoint_key, sha256_file(checkpoint)


def run_training(
    workspace: Workspace,
    project: Project,
    config: TrainingConfig,
    *,
    run_id: str,
    kind: RunKind = RunKind.INCREMENTAL,
    on_progress: ProgressCallback = lambda _: None,
) -> TrainingOutcome:
    """Train a candidate on the project's corrections, register it, and gate its promotion.

    Raises:
        TrainingError: the project has no corrected images outside the held-out set.
    """
    import torch

    torch.manual_seed(config.optim.seed)
    with workspace.sessions() as session:
        split = load_split(
            session, workspace.blobs, project.id, held_out_share=config.data.held_out_share
        )
        parent = serving_version(session, project.id)
    if not split.train:
        raise TrainingError(
            f"project {project.name!r} has no corrected images to train on "
            f"({len(split.held_out)} held out)"
        )
    with tempfile.TemporaryDirectory(prefix="prelabel-train-") as tmp:
        net, net_config, kind = build_start_network(
            config, project, workspace, parent, kind, Path(tmp)
        )
        incremental = kind is RunKind.INCREMENTAL
        metrics = fit(
            net,
            split,
            net_config,
            config,
            epochs=config.optim.epochs_incremental if incremental else config.optim.epochs_full,
            min_steps=0 if incremental else config.optim.min_steps,
            lr=config.optim.lr_incremental if incremental else config.optim.lr,
            ignore_index=project.label_schema.ignore_index,
            on_progress=on_progress,
        )
        on_progress({"stage": "evaluating", **metrics})
        keys = _export_and_score(
            workspace,
            project,
            config,
            run_id=run_id,
            net=net,
            net_config=net_config,
            parent=parent,
            split=split,
            workdir=Path(tmp),
            metrics=metrics,
        )
    return _register_and_gate(
        workspace,
        project.id,
        config,
        run_id=run_id,
        kind=kind,
        parent=parent,
        split=split,
        keys=keys,
        net_config=net_config,
        metrics=metrics,
    )


def _export_and_score(
    workspace: Workspace,
    project: Project,
    config: TrainingConfig,
    *,
    run_id: str,
    net: torch.nn.Module,
    net_config: NetworkConfig,
    parent: ModelRecord | None,
    split: Split,
    workdir: Path,
    metrics: dict[str, Any],
) -> tuple[str, str, str, str]:
    """Export and upload the candidate; score it and the serving version on the same held-out set.

    Adds ``held_out``, ``serving_held_out``, ``parity_max_abs_diff``, ``export_s``
    and ``evaluate_s`` to ``metrics``; returns the artifacts' keys and sha256s.
    """
    started = time.perf_counter()
    checkpoint, onnx_path, metrics["parity_max_abs_diff"] = export_candidate(
        net, net_config, workdir, config
    )
    metrics["export_s"] = time.perf_counter() - started
    started = time.perf_counter()
    schema = project.label_schema
    metrics["held_out"] = evaluate_onnx(onnx_path, split.held_out, schema)
    if parent is not None:
        parent_onnx = workdir / "parent.onnx"
        parent_onnx.write_bytes(workspace.blobs.get(parent.onnx_key))
        metrics["serving_held_out"] = evaluate_onnx(parent_onnx, split.held_out, schema)
    metrics["evaluate_s"] = time.perf_counter() - started
    return _upload_candidate(workspace, project, run_id, checkpoint, onnx_path)


def _register_and_gate(
    workspace: Workspace,
    project_id: str,
    config: TrainingConfig,
    *,
    run_id: str,
    kind: RunKind,
    parent: ModelRecord | None,
    split: Split,
    keys: tuple[str, str, str, str],
    net_config: NetworkConfig,
    metrics: dict[str, Any],
) -> TrainingOutcome:
    """Register the candidate and, in the same transaction, promote or reject it.

    The project (its pin and margin) and the serving version are read again here:
    a rollback or pin made while the run trained is respected.
    """
    onnx_key, onnx_sha, checkpoint_key, checkpoint_sha = keys
    candidate_miou = metrics["held_out"]["miou"]
    serving_miou = metrics.get("serving_held_out", {}).get("miou") if parent else None
    held_out = len(split.held_out)
    new = NewModelVersion(
        project_id=project_id,
        parent_version=parent.version if parent else None,
        onnx_key=onnx_key,
        onnx_sha256=onnx_sha,
        checkpoint_key=checkpoint_key,
        checkpoint_sha256=checkpoint_sha,
        config={
            **config.model_dump(mode="json"),
            "model": net_config.model_dump(mode="json"),
            "kind": kind.value,
        },
        metrics={**metrics, "kind": kind.value},
        trained_on=[s.correction_id for s in split.train],
        held_out=[s.image_id for s in split.held_out],
        training_run_id=run_id,
    )
    with workspace.sessions() as session, session.begin():
        project = get_project(session, project_id)
        current = serving_version(session, project_id)
        decision = decide_promotion(
            candidate_miou=candidate_miou,
            serving_miou=serving_miou,
            held_out_images=held_out if held_out >= config.promotion.min_held_out_images else 0,
            has_serving_version=parent is not None,
            margin=project.training_policy.margin,
            serving_pinned=project.pinned_version is not None,
        )
        if (current.version if current else None) != (parent.version if parent else None):
            decision = PromotionDecision(False, "the serving version changed during the run")
        record = register_version(session, new)
        gate = promote if decision.promote else reject
        record = gate(session, project_id, record.version, reason=decision.reason)
    return TrainingOutcome(
        model=record,
        promoted=decision.promote,
        decision=decision.reason,
        kind=kind,
        train_s=float(metrics["train_s"]),
        candidate_miou=candidate_miou,
        serving_miou=serving_miou,
    )
