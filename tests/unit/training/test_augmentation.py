"""Augmentation follows the run's seed: the same run trains the same network, and each
loader worker of each pass augments differently."""

from __future__ import annotations

import numpy as np
import torch

from models.builder import build_network
from prelabel.jobs import RunKind
from tests.e2e.test_loop import TINY_TRAINING
from tests.synthetic import shapes_sample
from training.config import DataConfig, TrainingConfig
from training.data import Sample
from training.distributed import Replica, make_loader
from training.train import fit, plan_steps, training_dataset

CONFIG = TrainingConfig.model_validate(
    {**TINY_TRAINING, "optim": {**TINY_TRAINING["optim"], "min_steps_full": 6, "epochs_full": 1}}
)


def _samples(count: int, *, same: bool = False) -> list[Sample]:
    return [Sample(str(i), str(i), *shapes_sample(0 if same else i)) for i in range(count)]


def _trained_weights(samples: list[Sample]) -> list[torch.Tensor]:
    torch.manual_seed(CONFIG.optim.seed)
    net = build_network(CONFIG.model)
    dataset = training_dataset(samples, CONFIG.model, CONFIG, ignore_index=255)
    plan = plan_steps(CONFIG.optim, kind=RunKind.FULL, batches_per_epoch=2)
    fit(net, dataset, plan, CONFIG, ignore_index=255, on_progress=lambda _: None)
    return [p.detach().clone() for p in net.parameters()]


def test_the_same_seed_augments_alike_and_another_does_not() -> None:
    dataset = training_dataset(_samples(1), CONFIG.model, CONFIG, ignore_index=255)
    streams = []
    for seed in (3, 3, 4):
        dataset.reseed(seed)
        streams.append(torch.stack([dataset[0][0] for _ in range(4)]))
    assert torch.equal(streams[0], streams[1])
    assert not torch.equal(streams[0], streams[2])


def test_two_runs_with_the_same_seed_train_the_same_network() -> None:
    samples = _samples(8)
    first, second = _trained_weights(samples), _trained_weights(samples)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_each_loader_worker_of_each_pass_augments_differently() -> None:
    # Eight copies of one image: batches differ only by their augmentation.
    dataset = training_dataset(_samples(8, same=True), CONFIG.model, CONFIG, ignore_index=255)
    data = DataConfig(batch_size=2, num_workers=2, crop_px=CONFIG.data.crop_px)
    torch.manual_seed(0)
    loader = make_loader(dataset, data, Replica(), seed=0)
    passes = [[images.numpy() for images, _ in loader] for _ in range(2)]
    first = passes[0]
    # Worker 0 makes batches 0 and 2, worker 1 batches 1 and 3: unseeded they would match.
    assert not np.array_equal(first[0], first[1])
    assert not any(np.array_equal(a, b) for a, b in zip(passes[0], passes[1], strict=True))
