"""Training data: a project's corrected images, split by the fixed held-out rule, augmented."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy.orm import Session

from prelabel.blobs import BlobStore
from prelabel.corrections import load_correction_mask, trainable_corrections
from prelabel.drafts import latest_draft, load_draft_confidence, load_draft_mask
from prelabel.images import get_image, list_images, load_pixels
from prelabel.projects import Project
from prelabel.reviewing import ReviewStatus
from prelabel.split import is_held_out
from training.config import DataConfig

if TYPE_CHECKING:
    import albumentations as A
    import torch


@dataclass(frozen=True)
class Sample:
    """One corrected image: (H, W) or (H, W, 3) uint8 pixels and its (H, W) index mask."""

    image_id: str
    correction_id: str
    image: npt.NDArray[np.uint8]
    mask: npt.NDArray[np.integer]
    review_status: str = ReviewStatus.NOT_REQUIRED
    """The correction's review status when loaded (lineage); self-training drafts have none."""


@dataclass(frozen=True)
class TrainingSplit:
    """Train and held-out samples; the held-out side is fixed per image id."""

    train: list[Sample]
    held_out: list[Sample]

    @property
    def all(self) -> list[Sample]:
        """Train then held-out samples."""
        return [*self.train, *self.held_out]


def load_split(
    session: Session, blobs: BlobStore, project: Project, *, held_out_share: float
) -> TrainingSplit:
    """Load the project's trainable corrections and split them by the held-out rule.

    Trainable: the current correction of each image, and when the project requires
    review only an approved one (``prelabel.corrections.trainable_corrections``).
    """
    train: list[Sample] = []
    held_out: list[Sample] = []
    for correction in trainable_corrections(session, project):
        image = get_image(session, project.id, correction.image_id)
        sample = Sample(
            image.id,
            correction.id,
            load_pixels(blobs, image),
            load_correction_mask(blobs, correction),
            correction.review_status,
        )
        (held_out if is_held_out(image.id, held_out_share) else train).append(sample)
    return TrainingSplit(train=train, held_out=held_out)


def load_pseudo_labelled(
    session: Session,
    blobs: BlobStore,
    project_id: str,
    *,
    model_version: str,
    min_confidence: float,
    held_out_share: float,
    ignore_index: int,
) -> list[Sample]:
    """Uncorrected images labelled by ``model_version``'s precomputed drafts (self-training).

    Pixels whose draft confidence is below ``min_confidence`` get the ignore index.
    Images on the held-out side of the split are left out, so that the gate never
    judges a model on images it was trained on, labels or not. ``correction_id`` is
    the draft's id.
    """
    samples: list[Sample] = []
    for image in list_images(session, project_id):
        if image.has_correction or is_held_out(image.id, held_out_share):
            continue
        draft = latest_draft(session, image, model_version=model_version)
        if draft is None:
            continue
        mask = load_draft_mask(blobs, draft).copy()
        mask[load_draft_confidence(blobs, draft) < min_confidence] = ignore_index
        samples.append(Sample(image.id, draft.id, load_pixels(blobs, image), mask))
    return samples


def to_channels(image: npt.NDArray[np.uint8], in_channels: int) -> npt.NDArray[np.uint8]:
    """(H, W) or (H, W, 3) uint8 → (H, W, in_channels) uint8, as the predictor does."""
    from models.predictor import convert_channels

    converted = convert_channels(image, in_channels)
    return converted if converted.ndim == 3 else converted[..., None]


def build_transform(config: DataConfig, *, ignore_index: int) -> A.Compose:
    """Random crop with padding (mask padded with the ignore index), mild affine and contrast.

    Image and mask go through the same geometric transform; masks use nearest-neighbour.
    """
    import albumentations as A
    import cv2

    crop = config.crop_px
    steps: list[Any] = [
        A.Affine(
            scale=(0.9, 1.1),
            rotate=(-10, 10),
            translate_percent=(-0.05, 0.05),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
            p=0.7,
        ),
        A.PadIfNeeded(
            min_height=crop,
            min_width=crop,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
        ),
        A.RandomCrop(height=crop, width=crop),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]
    if config.horizontal_flip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps)


class SegmentationDataset:
    """A map-style dataset of augmented (image, mask) tensors for one network input format."""

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        transform: A.Compose,
    ) -> None:
        self.samples = samples
        self.in_channels = in_channels
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self.transform = transform

    def reseed(self, seed: int) -> None:
        """Restart the augmentation's random stream from ``seed`` (albumentations keeps its
        own generators: global seeds do not reach it)."""
        self.transform.set_random_seed(seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        sample = self.samples[index]
        out = self.transform(image=to_channels(sample.image, self.in_channels), mask=sample.mask)
        image = (out["image"].astype(np.float32) / 255.0 - self.mean) / self.std
        return (
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(np.ascontiguousarray(out["mask"])).long(),
        )


def seed_loader_worker(_worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: each worker process of each pass augments with its own
    stream, from the seed torch gives it (derived from ``torch.manual_seed``); without this,
    every worker would repeat the stream its copy of the dataset was pickled with."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, SegmentationDataset):
        info.dataset.reseed(info.seed % 2**32)
