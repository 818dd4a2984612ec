"""The click model trains on simulated clicks, helps after clicks, and is gated by NoC."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.builder import build_network
from models.click_model import ClickPredictor, interactive_artifact
from models.guidance import export_click_onnx, with_zero_guidance
from prelabel.clicking import clicks_to_targets
from prelabel.jobs import RunKind
from prelabel.projects import get_project
from prelabel.workspace import Workspace
from tests.e2e.test_loop import TINY_TRAINING
from tests.split_labelling import label_until_split
from tests.synthetic import twin_disks_sample
from training.config import TrainingConfig
from training.data import Sample
from training.interactive import ClickTraining, _Episode, clicked_class_loss
from training.train import fit, plan_steps, run_training, training_dataset

CLICK_TRAINING = {
    **TINY_TRAINING,
    "model": {**TINY_TRAINING["model"], "guidance_channels": 3},
    "optim": {**TINY_TRAINING["optim"], "min_steps_full": 100, "epochs_full": 1},
    "interactive": {"enabled": True, "automatic_share": 0.25},
}


def _draft(net: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    x = (torch.from_numpy(image).float()[None, None] / 255.0 - 0.5) / 0.25
    with torch.no_grad():
        return with_zero_guidance(net.eval(), x).argmax(1)[0].numpy().astype(np.uint8)


def test_training_with_simulated_clicks_makes_clicks_help(tmp_path: Path) -> None:
    """Twin disks: only a click tells which one is meant, so the draft cannot, and the
    click model, trained on simulated clicks, must read its guidance to do it."""
    torch.manual_seed(0)
    config = TrainingConfig.model_validate(CLICK_TRAINING)
    net = build_network(config.model)
    samples = [Sample(str(i), str(i), *twin_disks_sample(i)) for i in range(16)]
    dataset = training_dataset(samples, config.model, config, ignore_index=255)
    plan = plan_steps(config.optim, kind=RunKind.FULL, batches_per_epoch=2)
    clicks = ClickTraining(config.interactive, 255, 0, random.Random(0))
    fit(net, dataset, plan, config, ignore_index=255, on_progress=lambda _: None, clicks=clicks)
    export_click_onnx(net, tmp_path / "click.onnx", config=config.model, sample_hw=(64, 64))
    model = ClickPredictor.from_bytes((tmp_path / "click.onnx").read_bytes())

    drafted, clicked = [], []
    for seed in range(100, 108):
        image, truth = twin_disks_sample(seed)
        draft = _draft(net, image)
        record = clicks_to_targets(model, image, draft, truth == 1, 1, 0, 3)
        ious = record["ious"] + [record["ious"][-1]] * (4 - len(record["ious"]))
        drafted.append(ious[0])  # the zero-guidance prediction
        clicked.append(ious[3])  # after three clicks (or the target reached earlier)
    assert np.mean(clicked) > np.mean(drafted) + 0.3, (drafted, clicked)
    assert np.mean(clicked) > 0.7


def _three_blobs(size: int = 64) -> np.ndarray:
    """Class 1 on three separate squares of different sizes, the rest background."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[4:24, 4:24] = 1
    mask[40:56, 8:24] = 1
    mask[30:42, 44:56] = 1
    return mask


def _blobs_clicked(points: list[tuple[int, int]], mask: np.ndarray) -> set[int]:
    """Which connected parts of class 1 the points fall in."""
    _, parts = cv2.connectedComponents((mask == 1).astype(np.uint8))
    return {int(parts[y, x]) for x, y in points}


def test_clicks_without_a_network_pass_spread_over_the_error_regions() -> None:
    """Each click counts as fixing its error region, so the next goes to the next one:
    three clicks from an empty mask land in the three missed squares, largest first."""
    mask = _three_blobs()
    episode = _Episode.start(np.zeros_like(mask), mask, 1, empty=True, ignore_index=255)
    for _ in range(3):
        episode.click()
    assert episode.negative == []
    assert len(_blobs_clicked(episode.positive, mask)) == 3
    assert episode.positive[0] == (13, 13)  # the centre of the 20-pixel square


@pytest.mark.parametrize(("initial_clicks", "disks"), [(1, {1}), (3, {1, 2, 3})])
def test_a_guided_batch_starts_with_up_to_initial_clicks(
    initial_clicks: int, disks: set[int]
) -> None:
    """``initial_clicks`` bounds the clicks placed before the first no-grad pass (1, the
    default: one click, as before the option); with no pass (``click_iterations: 0``)
    they are all the clicks, one per error region."""
    torch.manual_seed(0)
    config = TrainingConfig.model_validate(
        {
            **CLICK_TRAINING,
            "interactive": {
                "enabled": True,
                "initial_clicks": initial_clicks,
                "click_iterations": 0,
                "empty_start_share": 1.0,
            },
        }
    )
    net = build_network(config.model)
    mask = _three_blobs()
    images = torch.zeros(8, 1, 64, 64)
    masks = torch.from_numpy(np.stack([mask] * 8)).long()
    guidance, classes = ClickTraining(config.interactive, 255, 0, random.Random(0)).simulate(
        net, images, masks
    )
    assert classes == [1] * 8
    counts = [cv2.connectedComponents(g[0].numpy().astype(np.uint8))[0] - 1 for g in guidance]
    assert set(counts) == disks, counts  # 1 to initial_clicks disks, each in its own square
    assert float(guidance[:, 1].sum()) == 0.0  # from empty every click is positive


def test_the_clicked_class_loss_ignores_the_ignore_index() -> None:
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    masks = torch.tensor([[[1, 0], [255, 2]]])
    loss = clicked_class_loss(logits, masks, [1], ignore_index=255, gamma=0.0)
    # p(class 1) = 1/3 everywhere: one pixel in the class, two outside, the ignored one skipped.
    expected = -(np.log(1 / 3) + 2 * np.log(2 / 3)) / 3
    assert abs(float(loss.detach()) - expected) < 1e-5
    assert float(clicked_class_loss(logits, masks, [None], ignore_index=255).detach()) == 0.0
    # The focal weights favour the pixels still wrong: (1 - 1/3)^2 in the class, (1/3)^2 outside.
    focal = clicked_class_loss(logits, masks, [1], ignore_index=255, gamma=2.0)
    w_in, w_out = (2 / 3) ** 2, (1 / 3) ** 2
    expected = -(w_in * np.log(1 / 3) + 2 * w_out * np.log(2 / 3)) / (w_in + 2 * w_out)
    assert abs(float(focal.detach()) - expected) < 1e-5


def test_a_run_with_the_click_model_records_its_noc_and_gates_it(
    client: TestClient, make_project: Callable[[str], str], workspace: Workspace
) -> None:
    project_id = make_project("clickrun")
    share = TINY_TRAINING["data"]["held_out_share"]
    label_until_split(client, project_id, share, held_out=2, trained=8)
    config = TrainingConfig.model_validate(
        {
            **TINY_TRAINING,
            "optim": {**TINY_TRAINING["optim"], "min_steps_full": 20, "epochs_full": 1},
            "interactive": {"enabled": True, "gate_images": 2, "gate_max_clicks": 3},
        }
    )
    with workspace.sessions() as session:
        project = get_project(session, project_id)

    outcome = run_training(workspace, project, config, run_id="run-1", kind=RunKind.FULL)

    record = outcome.model
    assert record.config["model"]["guidance_channels"] == 3
    gate = record.metrics["interactive"]
    assert gate["images"] == 2 and gate["parity_max_abs_diff"] < 1e-3
    model_noc, fallback_noc = (gate["noc_from_draft"][m]["noc90"] for m in ("model", "grabcut"))
    assert 0 <= model_noc <= 3 and 0 <= fallback_noc <= 3
    model_auc, fallback_auc = (gate["noc_from_draft"][m]["iou_auc"] for m in ("model", "grabcut"))
    better = model_noc < fallback_noc or (model_noc == fallback_noc and model_auc >= fallback_auc)
    assert gate["serves"] == better
    artifact = interactive_artifact(record.config)
    assert artifact is not None and artifact.serves == gate["serves"]
    stored = workspace.blobs.get(artifact.onnx_key)
    assert hashlib.sha256(stored).hexdigest() == artifact.onnx_sha256
    ClickPredictor.from_bytes(stored)
