"""Fine-tune a project's network on its corrections: ``run_training`` reads top-down.

build data → build the network (from the serving version, or from scratch) →
``train_one_epoch`` x N → export ONNX and check parity → ``evaluate`` candidate
and serving version on the same held-out images → register → promote or reject.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.artifacts import sha256_file
from models.builder import build_network, load_checkpoint, save_checkpoint
from models.config import NetworkConfig, default_normalization
from models.guidance import automatic_mode
from models.onnx_export import check_parity, export_onnx
from models.precision import served_onnx
from models.pretrained import packaged_weights
from models.registry import (
    ModelRecord,
    NewModelVersion,
    promote,
    register_version,
    reject,
    serving_version,
)
from prelabel.blobs import download
from prelabel.errors import TrainingError
from prelabel.images import list_images
from prelabel.jobs import RunKind
from prelabel.policy import PromotionDecision, decide_promotion, pair_scores
from prelabel.projects import Project, get_project
from prelabel.schema import LabelSchema
from prelabel.workspace import Workspace
from training.config import OptimConfig, TrainingConfig
from training.data import (
    Sample,
    SegmentationDataset,
    TrainingSplit,
    build_transform,
    load_pseudo_labelled,
    load_split,
)
from training.devices import autocast, detect_placement, grad_scaler
from training.distributed import (
    Replica,
    agree_total,
    check_replicas_agree,
    make_loader,
    prepare_network,
    shared_progress,
)
from training.evaluate import HeldOutScores, evaluate_onnx
from training.interactive import (
    ClickGate,
    ClickTraining,
    ensure_guidance,
    gate_click_model,
    store_click_model,
    with_guidance_config,
)
from training.serving_choice import ServingChoice, choose_serving

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]

TIMING_STEPS = 3
"""Steps timed before the plan is fitted to the run's wall-time cap."""
PROGRESS_EVERY_STEPS = 10


@dataclass(frozen=True)
class TrainingOutcome:
    """What a run produced: the registered version and whether it now serves."""

    model: ModelRecord
    promoted: bool
    decision: str
    kind: RunKind
    train_s: float
    steps: int
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
    mean, std = base.mean, base.std
    if base.in_channels != in_channels:
        defaults = default_normalization(base.encoder_weights, base.in_channels)
        if (mean, std) == defaults:  # the defaults follow the channel count
            mean, std = default_normalization(base.encoder_weights, in_channels)
        else:  # explicit values: the first channel's, repeated
            mean, std = [mean[0]] * in_channels, [std[0]] * in_channels
    sized = base.model_copy(
        update={
            "classes": project.label_schema.num_classes,
            "in_channels": in_channels,
            "mean": mean,
            "std": std,
        }
    )
    return with_guidance_config(sized, config.interactive)


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
        download(workspace.blobs, parent.checkpoint_key, checkpoint)
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


def make_loss(ignore_index: int, dice_weight: float) -> Callable[..., torch.Tensor]:
    """Cross-entropy plus Dice, both ignoring ``ignore_index``."""
    import segmentation_models_pytorch as smp
    import torch

    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=ignore_index)
    dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=ignore_index)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target) + dice_weight * dice(logits, target)

    return loss


@dataclass(frozen=True)
class StepPlan:
    """How long a run optimises: steps, peak learning rate, wall-time cap."""

    steps: int
    lr: float
    max_s: float
    warmup_share: float


def plan_steps(config: OptimConfig, *, kind: RunKind, batches_per_epoch: int) -> StepPlan:
    """Size a run: ``max(min_steps, epochs x batches per epoch)`` steps of its kind."""
    incremental = kind is RunKind.INCREMENTAL
    min_steps = config.min_steps_incremental if incremental else config.min_steps_full
    epochs = config.epochs_incremental if incremental else config.epochs_full
    return StepPlan(
        steps=max(min_steps, math.ceil(epochs * batches_per_epoch)),
        lr=config.lr_incremental if incremental else config.lr,
        max_s=60.0 * config.max_minutes,
        warmup_share=config.warmup_share,
    )


def learning_rate(step: int, total: int, plan: StepPlan) -> float:
    """Linear warm-up over ``warmup_share`` of ``total`` steps, then cosine to zero."""
    warmup = max(1, round(plan.warmup_share * total))
    if step < warmup:
        return plan.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return plan.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class FitResult:
    """What optimisation did: steps planned and run, the loss, and the time it took."""

    planned_steps: int
    steps: int
    epochs: float
    final_loss: float
    train_s: float
    images_per_s: float | None
    stopped_by_time: bool
    processes: int = 1
    device: str = "cpu"
    train_precision: str = "fp32"
    """Training arithmetic (fp32, bf16, fp16); ``metrics["precision"]`` is the serving one."""

    def to_dict(self) -> dict[str, object]:
        """The JSON stored with the model version."""
        return asdict(self)


def batches(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (image, mask) batches: reshuffled passes over ``loader``."""
    for epoch in itertools.count():
        if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler: a new shuffle per pass
            loader.sampler.set_epoch(epoch)
        yield from loader


def fit(
    net: torch.nn.Module,
    dataset: SegmentationDataset,
    plan: StepPlan,
    config: TrainingConfig,
    *,
    ignore_index: int,
    on_progress: ProgressCallback,
    replica: Replica | None = None,
    clicks: ClickTraining | None = None,
) -> FitResult:
    """Train ``net`` in place for ``plan.steps`` steps, fewer if the time cap would be passed.

    From step ``TIMING_STEPS`` on, and at every progress report, the total is re-fitted
    to what the measured step time allows within ``plan.max_s`` (``affordable_steps``;
    the smallest over the replicas of a distributed run); the schedule follows the current
    total. ``net`` trains on the replica's device (default: ``detect_placement``) and
    comes back on the CPU. A network with guidance channels is trained by ``clicks``
    (``training.interactive``): automatic mode or simulated clicks.
    """
    import torch

    replica = replica or Replica(placement=detect_placement())
    on_progress = shared_progress(on_progress, replica)  # a stop at rank 0 stops every rank
    dataset.reseed(config.optim.seed + replica.rank)  # the same run augments the same way
    loader = make_loader(dataset, config.data, replica, seed=config.optim.seed)
    model = prepare_network(net, replica)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=plan.lr, weight_decay=config.optim.weight_decay
    )
    loss_fn = make_loss(ignore_index, config.optim.dice_weight)
    scaler = grad_scaler(replica.placement)  # active for fp16 only
    total, losses, started = plan.steps, [], time.perf_counter()
    timed_from = started
    model.train()
    for step, (images, masks) in enumerate(batches(loader)):
        if step >= total:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total, plan)
        optimizer.zero_grad(set_to_none=True)
        with autocast(replica.placement):
            images = images.to(replica.placement.device)
            masks = masks.to(replica.placement.device)
            loss = (
                loss_fn(model(images), masks)
                if clicks is None
                else clicks.loss(model, images, masks, loss_fn)
            )
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
        done = step + 1
        if done == 1:
            timed_from = time.perf_counter()  # the first step pays one-off allocations
        elif done == TIMING_STEPS or done % PROGRESS_EVERY_STEPS == 0:
            step_s = (time.perf_counter() - timed_from) / (done - 1)
            total = affordable_steps(done, time.perf_counter() - started, step_s, plan)
            total = agree_total(total, replica)
        if done % PROGRESS_EVERY_STEPS == 0 or done == total:
            _report(on_progress, step + 1, total, len(loader), losses)
    seconds = time.perf_counter() - started
    check_replicas_agree(net, replica)
    net.to("cpu")
    steps, images_per_step = len(losses), config.data.batch_size * replica.world_size
    return FitResult(
        planned_steps=plan.steps,
        steps=steps,
        epochs=steps / max(1, len(loader)),
        final_loss=float(sum(losses[-10:]) / max(1, len(losses[-10:]))),
        train_s=seconds,
        images_per_s=steps * images_per_step / seconds if seconds else None,
        stopped_by_time=total < plan.steps,
        processes=replica.world_size,
        device=replica.placement.device,
        train_precision=replica.placement.precision,
    )


def affordable_steps(done: int, elapsed_s: float, step_s: float, plan: StepPlan) -> int:
    """The run's total steps: the plan, or fewer if ``step_s`` per step would pass ``max_s``."""
    remaining = math.floor(max(0.0, plan.max_s - elapsed_s) / step_s) if step_s > 0 else plan.steps
    return max(done, min(plan.steps, done + remaining))


def _report(
    on_progress: ProgressCallback, step: int, total: int, per_epoch: int, losses: list[float]
) -> None:
    recent = losses[-PROGRESS_EVERY_STEPS:]
    loss = sum(recent) / len(recent)
    epoch, epochs = math.ceil(step / per_epoch), math.ceil(total / per_epoch)
    on_progress(
        {"stage": "training", "step": step, "steps": total}
        | {"epoch": epoch, "epochs": epochs, "loss": loss}
    )
    logger.info("step %d/%d loss %.4f", step, total, loss)


@dataclass(frozen=True)
class ExportedCandidate:
    """The candidate's files in the run's folder and its ONNX-vs-torch parity."""

    checkpoint: Path
    onnx: Path
    parity_max_abs_diff: float
    export_s: float


def export_candidate(
    net: torch.nn.Module, net_config: NetworkConfig, workdir: Path, config: TrainingConfig
) -> ExportedCandidate:
    """Save checkpoint and ONNX; check ONNX-vs-torch parity at a size other than the export's."""
    started = time.perf_counter()
    checkpoint = workdir / "model.pt"
    save_checkpoint(
        net,
        checkpoint,
        config=net_config,
        extra={"training_config": config.model_dump(mode="json")},
    )
    onnx_path = workdir / "model.onnx"
    draft_net = automatic_mode(net, net_config)  # a click model drafts with zero guidance
    export_onnx(draft_net, onnx_path, config=net_config, sample_hw=(128, 128))
    stride = net_config.stride
    diff = check_parity(draft_net, onnx_path, config=net_config, hw=(3 * stride, 5 * stride))
    return ExportedCandidate(checkpoint, onnx_path, diff, time.perf_counter() - started)


def model_prefix(project: Project, run_id: str) -> str:
    """The blob key prefix of a run's artifacts (``.onnx``, ``.pt``, ``.click.onnx``)."""
    return f"projects/{project.id}/models/{run_id}"


@dataclass(frozen=True)
class StoredArtifacts:
    """Where the candidate's files live in the blob store, with their digests."""

    onnx_key: str
    onnx_sha256: str
    checkpoint_key: str
    checkpoint_sha256: str


def _upload_candidate(
    workspace: Workspace, project: Project, run_id: str, exported: ExportedCandidate
) -> StoredArtifacts:
    prefix = model_prefix(project, run_id)
    onnx_key, checkpoint_key = f"{prefix}.onnx", f"{prefix}.pt"
    # From the files: large artifacts go to S3 in parts, never whole in memory.
    workspace.blobs.put_file(onnx_key, exported.onnx)
    workspace.blobs.put_file(checkpoint_key, exported.checkpoint)
    return StoredArtifacts(
        onnx_key, sha256_file(exported.onnx), checkpoint_key, sha256_file(exported.checkpoint)
    )


@dataclass(frozen=True)
class Scored:
    """The candidate's held-out scores and the serving version's on the same images."""

    candidate: HeldOutScores
    serving: HeldOutScores | None
    evaluate_s: float


def score_on_held_out(
    workspace: Workspace,
    schema: LabelSchema,
    exported: ExportedCandidate,
    parent: ModelRecord | None,
    split: TrainingSplit,
    workdir: Path,
) -> Scored:
    """Score the candidate and the serving version on the same held-out images via ONNX."""
    started = time.perf_counter()
    candidate = evaluate_onnx(exported.onnx, split.held_out, schema)
    serving = None
    if parent is not None:
        parent_onnx = workdir / "parent.onnx"
        download(workspace.blobs, served_onnx(parent)[0], parent_onnx)
        serving = evaluate_onnx(parent_onnx, split.held_out, schema)
    return Scored(candidate, serving, time.perf_counter() - started)


def run_training(
    workspace: Workspace,
    project: Project,
    config: TrainingConfig,
    *,
    run_id: str,
    kind: RunKind = RunKind.INCREMENTAL,
    on_progress: ProgressCallback = lambda _: None,
    replica: Replica | None = None,
) -> TrainingOutcome:
    """Train a candidate on the project's corrections, register it, and gate its promotion.

    In a distributed run this is rank 0's part; the other ranks run ``train_replica``.

    Raises:
        TrainingError: the project has no corrected images outside the held-out set.
    """
    split, parent = load_inputs(workspace, project, config)
    with tempfile.TemporaryDirectory(prefix="prelabel-train-") as tmp:
        workdir = Path(tmp)
        trained = train_candidate(
            workspace, project, config, split, parent, kind, workdir, on_progress, replica
        )
        fitted, net_config = trained.fitted, trained.net_config
        on_progress({"stage": "evaluating", "steps": fitted.steps, "train_s": fitted.train_s})
        exported = export_candidate(trained.net, net_config, workdir, config)
        scored = score_on_held_out(
            workspace, project.label_schema, exported, parent, split, workdir
        )
        gate = (
            gate_click_model(
                trained.net,
                net_config,
                exported.onnx,
                split.held_out,
                project.label_schema,
                config.interactive,
                workdir,
            )
            if net_config.guidance_channels and config.interactive.enabled
            else None
        )
        artifacts = _upload_candidate(workspace, project, run_id, exported)
        click_model = store_click_model(
            workspace.blobs, model_prefix(project, run_id), gate, config.interactive.click_radius_px
        )
        on_progress({"stage": "precision"})
        serving_choice = choose_serving(
            workspace,
            key_prefix=f"projects/{project.id}/models/{run_id}",
            net=automatic_mode(trained.net, net_config),
            net_config=net_config,
            fp32_onnx=exported.onnx,
            split=split,
            schema=project.label_schema,
            config=config.precision,
        )
    return _register_and_gate(
        workspace,
        project.id,
        config,
        run_id=run_id,
        kind=trained.kind,
        parent=parent,
        split=split,
        artifacts=artifacts,
        net_config=net_config,
        fitted=fitted,
        exported=exported,
        scored=scored,
        self_trained_on=[sample.correction_id for sample in trained.pseudo],
        serving_choice=serving_choice,
        click_gate=gate,
        click_model=click_model,
    )


@dataclass(frozen=True)
class TrainedCandidate:
    """A fitted network (on the CPU), its config and kind, and the self-training samples."""

    net: torch.nn.Module
    net_config: NetworkConfig
    kind: RunKind
    pseudo: list[Sample]
    fitted: FitResult


def load_inputs(
    workspace: Workspace, project: Project, config: TrainingConfig
) -> tuple[TrainingSplit, ModelRecord | None]:
    """The project's split corrections and its serving version (the run's parent).

    Raises:
        TrainingError: the project has no corrected images outside the held-out set.
    """
    with workspace.sessions() as session:
        split = load_split(
            session, workspace.blobs, project, held_out_share=config.data.held_out_share
        )
        parent = serving_version(session, project.id)
    if not split.train:
        raise TrainingError(
            f"project {project.name!r} has no corrected images to train on "
            f"({len(split.held_out)} held out)"
        )
    return split, parent


def train_candidate(
    workspace: Workspace,
    project: Project,
    config: TrainingConfig,
    split: TrainingSplit,
    parent: ModelRecord | None,
    kind: RunKind,
    workdir: Path,
    on_progress: ProgressCallback,
    replica: Replica | None,
) -> TrainedCandidate:
    """Build the start network and the training data, and fit: every replica's part."""
    import torch

    torch.manual_seed(config.optim.seed)
    net, net_config, kind = build_start_network(config, project, workspace, parent, kind, workdir)
    net, net_config = ensure_guidance(net, net_config, config.interactive)
    pseudo = pseudo_labelled(workspace, project, config, parent, len(split.train))
    dataset = training_dataset(
        [*split.train, *pseudo], net_config, config, project.label_schema.ignore_index
    )
    world_size = replica.world_size if replica else 1
    plan = plan_steps(
        config.optim,
        kind=kind,
        batches_per_epoch=math.ceil(len(dataset) / (config.data.batch_size * world_size)),
    )
    fitted = fit(
        net,
        dataset,
        plan,
        config,
        ignore_index=project.label_schema.ignore_index,
        on_progress=on_progress,
        replica=replica,
        clicks=click_training(config, net_config, project.label_schema),
    )
    return TrainedCandidate(net, net_config, kind, pseudo, fitted)


def click_training(
    config: TrainingConfig, net_config: NetworkConfig, schema: LabelSchema
) -> ClickTraining | None:
    """How a network with guidance channels trains (None: a plain network)."""
    if not net_config.guidance_channels:
        return None
    return ClickTraining(
        config.interactive,
        ignore_index=schema.ignore_index,
        background=schema.background,
        rng=random.Random(config.optim.seed),
    )


def train_replica(
    workspace: Workspace,
    project: Project,
    config: TrainingConfig,
    *,
    kind: RunKind,
    replica: Replica,
    on_progress: ProgressCallback,
) -> FitResult:
    """A distributed run's part on ranks other than 0: the same data and network, fitted."""
    split, parent = load_inputs(workspace, project, config)
    with tempfile.TemporaryDirectory(prefix="prelabel-train-") as tmp:
        trained = train_candidate(
            workspace, project, config, split, parent, kind, Path(tmp), on_progress, replica
        )
    return trained.fitted


def pseudo_labelled(
    workspace: Workspace,
    project: Project,
    config: TrainingConfig,
    parent: ModelRecord | None,
    corrected: int,
) -> list[Sample]:
    """Self-training samples from the serving version's drafts, if the config asks for them.

    At most ``self_training_ratio`` per corrected image, drawn with the run's seed.
    """
    data = config.data
    if not data.self_training or parent is None:
        return []
    with workspace.sessions() as session:
        samples = load_pseudo_labelled(
            session,
            workspace.blobs,
            project.id,
            model_version=parent.version,
            min_confidence=data.self_training_min_confidence,
            held_out_share=data.held_out_share,
            ignore_index=project.label_schema.ignore_index,
        )
    limit = math.floor(data.self_training_ratio * corrected)
    random.Random(config.optim.seed).shuffle(samples)
    logger.info("self-training on %d of %d drafts", min(limit, len(samples)), len(samples))
    return samples[:limit]


def training_dataset(
    samples: list[Sample], net_config: NetworkConfig, config: TrainingConfig, ignore_index: int
) -> SegmentationDataset:
    """The augmented training samples in the network's input format."""
    return SegmentationDataset(
        samples,
        in_channels=net_config.in_channels,
        mean=net_config.mean,
        std=net_config.std,
        transform=build_transform(config.data, ignore_index=ignore_index),
    )


def pretrained_lineage(net_config: NetworkConfig) -> dict[str, object] | None:
    """The packaged weights the network started from: name, package, sha256, license."""
    if net_config.encoder_weights is None:
        return None
    weights = packaged_weights(net_config.encoder_weights)
    return {
        "name": weights.name,
        "package": weights.package,
        "file": weights.resource,
        "sha256": weights.sha256,
        "license": weights.license,
    }


def _register_and_gate(
    workspace: Workspace,
    project_id: str,
    config: TrainingConfig,
    *,
    run_id: str,
    kind: RunKind,
    parent: ModelRecord | None,
    split: TrainingSplit,
    artifacts: StoredArtifacts,
    net_config: NetworkConfig,
    fitted: FitResult,
    exported: ExportedCandidate,
    scored: Scored,
    self_trained_on: list[str],
    serving_choice: ServingChoice | None = None,
    click_gate: ClickGate | None = None,
    click_model: dict[str, Any] | None = None,
) -> TrainingOutcome:
    """Register the candidate and, in the same transaction, promote or reject it.

    The project (its pin and margin) and the serving version are read again here:
    a rollback or pin made while the run trained is respected.
    """
    with workspace.sessions() as session, session.begin():
        project = get_project(session, project_id)
        current = serving_version(session, project_id)
        margin = project.training_policy.margin
        evidence = (
            pair_scores(scored.candidate.per_image, scored.serving.per_image, margin=margin)
            if scored.serving is not None
            else None
        )
        decision = decide_promotion(
            evidence=evidence,
            has_serving_version=parent is not None,
            margin=margin,
            serving_pinned=project.pinned_version is not None,
            min_images=config.promotion.min_held_out_images,
        )
        if (current.version if current else None) != (parent.version if parent else None):
            decision = PromotionDecision(
                False, "the serving version changed during the run", evidence
            )
        metrics: dict[str, Any] = {
            **fitted.to_dict(),
            "kind": kind.value,
            "parity_max_abs_diff": exported.parity_max_abs_diff,
            "export_s": exported.export_s,
            "evaluate_s": scored.evaluate_s,
            "held_out": scored.candidate.to_dict(),
            "promotion_evidence": evidence.to_dict() if evidence else None,
            "self_trained_on_drafts": self_trained_on,
            **(serving_choice.to_metrics() if serving_choice else {}),
            "interactive": click_gate.metrics if click_gate else None,
        }
        if scored.serving is not None:
            metrics["serving_held_out"] = scored.serving.to_dict()
        new = NewModelVersion(
            project_id=project_id,
            parent_version=parent.version if parent else None,
            onnx_key=artifacts.onnx_key,
            onnx_sha256=artifacts.onnx_sha256,
            checkpoint_key=artifacts.checkpoint_key,
            checkpoint_sha256=artifacts.checkpoint_sha256,
            config={
                **config.model_dump(mode="json"),
                "model": net_config.model_dump(mode="json"),
                "kind": kind.value,
                "pretrained": pretrained_lineage(net_config),
                **(click_model or {}),
            },
            metrics=metrics,
            trained_on=[s.correction_id for s in split.train],
            held_out=[s.image_id for s in split.held_out],
            training_run_id=run_id,
            review_states={s.correction_id: s.review_status for s in split.all},
        )
        record = register_version(session, new)
        gate = promote if decision.promote else reject
        record = gate(session, project_id, record.version, reason=decision.reason)
    return TrainingOutcome(
        model=record,
        promoted=decision.promote,
        decision=decision.reason,
        kind=kind,
        train_s=fitted.train_s,
        steps=fitted.steps,
        candidate_miou=scored.candidate.miou,
        serving_miou=scored.serving.miou if scored.serving else None,
    )
