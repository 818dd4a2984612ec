"""Training in several processes (DistributedDataParallel): what each process does.

Every process ("replica") of a run loads the same corrections and start network, reads its
own share of the training images (``DistributedSampler``, ``make_loader``) and trains its
copy of the network, wrapped in DDP (``prepare_network``), which all-reduces the gradients
(gloo on CPU, NCCL on GPU); ``check_replicas_agree`` verifies at the end that the copies are
identical. The replicas agree on when to stop (``agree_total``: the wall-time cap is fitted
from each one's step time) and on a stop at a progress report (``shared_progress``). Only
rank 0 reports progress, exports, evaluates, uploads, registers and gates, through the same
``training.train.run_training`` as a single-process run. ``training.torchrun`` launches the
processes and is their entry point.

``batch_size`` stays per process: N processes train on N x ``batch_size`` images per
optimiser step. The plan counts an epoch in those global batches, so a large project needs
N times fewer steps for its epochs, while ``min_steps`` stays a floor on optimiser steps.
The learning rate is not rescaled. BatchNorm statistics are each process's own (DDP
broadcasts rank 0's buffers at each forward pass); rank 0's are exported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prelabel.errors import TrainingError
from training.config import DataConfig
from training.data import seed_loader_worker
from training.devices import (
    DeviceRequest,
    Placement,
    PrecisionRequest,
    choose_device,
    detect_placement,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[dict[str, Any]], None]

SYNC_RTOL = 1e-6
"""Relative tolerance of the end-of-run check that the replicas' weights agree."""


class StopRequested(Exception):
    """Raised from a run's progress report when the worker was asked to stop."""


class PeerStopped(Exception):
    """Raised on ranks other than 0 when rank 0 stopped the run at a progress report."""


@dataclass(frozen=True)
class Replica:
    """One training process: its placement and its rank among ``world_size`` processes."""

    placement: Placement = field(default_factory=Placement)
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports, exports, evaluates and registers."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether gradients are all-reduced across processes."""
        return self.world_size > 1


def make_loader(dataset: Any, data: DataConfig, replica: Replica, *, seed: int) -> Any:
    """Batches of this replica's share of ``dataset``, reshuffled each pass.

    With several processes a ``DistributedSampler`` gives each rank a disjoint share
    (padded by repetition to equal sizes, so every rank runs the same number of batches).
    """
    from torch.utils.data import DataLoader, DistributedSampler

    sampler: DistributedSampler[int] | None = (
        DistributedSampler(
            dataset, num_replicas=replica.world_size, rank=replica.rank, shuffle=True, seed=seed
        )
        if replica.distributed
        else None
    )
    samples = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(
        dataset,
        batch_size=data.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=data.num_workers,
        worker_init_fn=seed_loader_worker,
        drop_last=samples > data.batch_size,
        pin_memory=replica.placement.device_type == "cuda",
    )


def prepare_network(net: torch.nn.Module, replica: Replica) -> torch.nn.Module:
    """Move ``net`` to the replica's device; wrap it in DDP when there are several replicas.

    The returned module trains ``net``'s own parameters (DDP wraps, it does not copy).
    """
    from torch.nn.parallel import DistributedDataParallel

    net.to(replica.placement.device)
    if not replica.distributed:
        return net
    cuda = replica.placement.device_type == "cuda"
    # smp encoders built shallower than their full depth keep unused stages.
    return DistributedDataParallel(
        net,
        device_ids=[replica.placement.device] if cuda else None,
        find_unused_parameters=True,
    )


def agree_total(total: int, replica: Replica) -> int:
    """The smallest of every replica's planned total steps, so that all stop together."""
    if not replica.distributed:
        return total
    import torch
    import torch.distributed as dist

    value = torch.tensor([total], dtype=torch.int64, device=replica.placement.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())


def shared_progress(on_progress: ProgressCallback, replica: Replica) -> ProgressCallback:
    """Call ``on_progress`` on rank 0; if it raises, every rank stops at the same report.

    Every rank must call the returned callback at the same steps (the reports follow the
    agreed total), since it is a collective operation when there are several replicas.
    """
    if not replica.distributed:
        return on_progress

    def report(progress: dict[str, Any]) -> None:
        import torch
        import torch.distributed as dist

        failure: Exception | None = None
        if replica.is_main:
            try:
                on_progress(progress)
            except Exception as exc:  # re-raised below, after the other ranks know
                failure = exc
        flag = torch.tensor([int(failure is not None)], device=replica.placement.device)
        dist.broadcast(flag, src=0)
        if failure is not None:
            raise failure
        if flag.item():
            raise PeerStopped(f"rank 0 stopped the run at {progress}")

    return report


def check_replicas_agree(net: torch.nn.Module, replica: Replica) -> None:
    """Fail if the replicas' weights differ after training (gradients not all-reduced).

    Raises:
        TrainingError: the weights' sums differ across ranks beyond ``SYNC_RTOL``.
    """
    if not replica.distributed:
        return
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        total = sum(float(p.detach().double().sum()) for p in net.parameters())
    low = torch.tensor([total], dtype=torch.float64, device=replica.placement.device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    spread = float(high.item() - low.item())
    if spread > SYNC_RTOL * max(1.0, abs(total)):
        raise TrainingError(f"the {replica.world_size} replicas' weights differ (spread {spread})")


def join_process_group(device: DeviceRequest, precision: PrecisionRequest) -> Replica:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU) and place this rank."""
    import torch
    import torch.distributed as dist

    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    kind = choose_device(device, cuda_devices=cuda_devices)
    dist.init_process_group(backend="nccl" if kind == "cuda" else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    placement = detect_placement(kind, precision, local_rank=rank)
    if placement.device_type == "cuda":
        torch.cuda.set_device(placement.device)
    logger.info("rank %d of %d on %s", rank, world_size, placement.device)
    return Replica(placement=placement, rank=rank, world_size=world_size)
