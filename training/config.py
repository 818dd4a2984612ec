"""Training configuration: one YAML file in ``configs/``, validated per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from models.config import NetworkConfig


class DataConfig(BaseModel):
    """How corrected images become training batches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    held_out_share: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    crop_px: Annotated[int, Field(ge=32)] = 160
    batch_size: Annotated[int, Field(ge=1)] = 8
    horizontal_flip: bool = False
    """Off by default: for data with left/right classes a flip swaps their meaning."""
    num_workers: Annotated[int, Field(ge=0)] = 0
    self_training: bool = False
    """Also train on uncorrected images, labelled by the serving version's precomputed
    drafts where it is confident (other pixels ignored). Measured in the README."""
    self_training_min_confidence: Annotated[float, Field(gt=0, le=1)] = 0.9
    self_training_ratio: Annotated[float, Field(gt=0)] = 1.0
    """At most this many pseudo-labelled images per corrected training image."""


class OptimConfig(BaseModel):
    """Optimiser, schedule and the run's budget in optimiser steps and wall time.

    A run plans ``max(min_steps, epochs x batches per epoch)`` steps (so a small
    project still gets enough steps to converge and a large one sees all of its
    data), then shrinks the plan after timing its first steps so that it ends
    within ``max_minutes``. The learning rate warms up linearly over
    ``warmup_share`` of the steps, then follows a cosine to zero.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: Annotated[float, Field(gt=0)] = 3e-3
    """Peak learning rate of a full run."""
    lr_incremental: Annotated[float, Field(gt=0)] = 1e-3
    """Peak learning rate when fine-tuning the serving version: gentler, it starts trained."""
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    min_steps_full: Annotated[int, Field(ge=1)] = 300
    min_steps_incremental: Annotated[int, Field(ge=1)] = 60
    epochs_full: Annotated[float, Field(ge=0)] = 10
    epochs_incremental: Annotated[float, Field(ge=0)] = 2
    max_minutes: Annotated[float, Field(gt=0)] = 20.0
    """Wall-time cap of one run's optimisation (export and evaluation come on top)."""
    warmup_share: Annotated[float, Field(ge=0, lt=1)] = 0.1
    dice_weight: Annotated[float, Field(ge=0)] = 1.0
    seed: int = 0


class PromotionConfig(BaseModel):
    """The gate a candidate must pass to serve (the margin is per project, in its policy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_held_out_images: Annotated[int, Field(ge=1)] = 1
    """Fewer held-out images than this and a candidate cannot replace a serving version."""


class PrecisionConfig(BaseModel):
    """Which lower precisions a run tries after export, and how much quality they may cost.

    Each candidate is built from the FP32 export, scored on the held-out images and
    timed; the fastest one within ``max_miou_loss_points`` of FP32's held-out mIoU that
    is also faster serves (``models.precision``); otherwise FP32 does.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidates: list[Literal["int8", "fp16", "bf16"]] = ["int8", "fp16"]
    max_miou_loss_points: Annotated[float, Field(ge=0)] = 0.5
    calibration_images: Annotated[int, Field(ge=1)] = 32
    """INT8 ranges are calibrated on up to this many of the run's training images."""


class InteractiveConfig(BaseModel):
    """The click model: guidance channels trained with simulated clicks (RITM, DeepEdit).

    With ``enabled`` the network gets three guidance inputs (``models.guidance``) and
    ``automatic_share`` of the batches train with zero guidance (the draft); the others
    start from the network's own draft (or, for ``empty_start_share`` of them, from an
    empty mask), click at the centre of the largest error region
    (``prelabel.clicking``) one to ``initial_clicks`` times, each click taken as fixing
    the error region it lands in (no network pass), then run up to
    ``click_iterations`` more no-grad passes that each add the next click where the
    prediction is wrong, before the pass that learns. The run then exports the click
    model beside the draft model and serves it for refinements only if its NoC@90 on up
    to ``gate_images`` held-out images is no worse than the GrabCut fallback's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    initial_clicks: Annotated[int, Field(ge=1, le=20)] = 1
    click_iterations: Annotated[int, Field(ge=0, le=10)] = 3
    automatic_share: Annotated[float, Field(ge=0, le=1)] = 0.5
    empty_start_share: Annotated[float, Field(ge=0, le=1)] = 0.3
    click_radius_px: Annotated[int, Field(ge=1)] = 5
    gate_images: Annotated[int, Field(ge=1)] = 4
    gate_max_clicks: Annotated[int, Field(ge=1, le=20)] = 10


class TrainingConfig(BaseModel):
    """A training run's configuration; a copy is stored with every model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataConfig = DataConfig()
    model: NetworkConfig
    optim: OptimConfig = OptimConfig()
    promotion: PromotionConfig = PromotionConfig()
    precision: PrecisionConfig = PrecisionConfig()
    interactive: InteractiveConfig = InteractiveConfig()


def load_training_config(path: Path) -> TrainingConfig:
    """Read and validate a training YAML; ``model`` may name another YAML file to include."""
    raw = yaml.safe_load(path.read_text()) or {}
    if isinstance(raw.get("model"), str):
        raw["model"] = yaml.safe_load((path.parent / raw["model"]).read_text())
    return TrainingConfig.model_validate(raw)
