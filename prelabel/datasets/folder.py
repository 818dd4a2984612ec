"""The generic dataset folder: images, optional index masks and a label schema.

Layout (a public contract)::

    DIR/images/<stem>.png|.jpg|.jpeg   grayscale or RGB, any size
    DIR/masks/<stem>.png               index PNG with the same stem; optional per image
    DIR/labels.yaml                    the LabelSchema as YAML (classes, ignore_index, ...)

``labels.yaml`` is written last by :func:`write_dataset`, so a folder without it
counts as absent (a build that stopped half-way is not mistaken for a dataset).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydantic
import yaml
from PIL import Image

from prelabel.errors import SchemaError, ValidationFailed
from prelabel.schema import LabelSchema

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
MASKS_DIR = "masks"
SCHEMA_FILE = "labels.yaml"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_SUFFIX = ".png"


@dataclass(frozen=True)
class DatasetItem:
    """One image of a dataset folder and its mask, if it has one."""

    stem: str
    image_path: Path
    mask_path: Path | None


def read_schema(directory: Path) -> LabelSchema:
    """Read and validate ``directory/labels.yaml``.

    Args:
        directory: The dataset folder.

    Returns:
        The label schema.

    Raises:
        SchemaError: If labels.yaml is missing, is not YAML, or is not a valid
            schema; the message names the file (and carries pydantic's message).
    """
    path = directory / SCHEMA_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SchemaError(f"{path} is missing; a dataset folder needs a label schema") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SchemaError(f"{path} is not valid YAML: {exc}") from exc
    try:
        return LabelSchema.model_validate(data)
    except pydantic.ValidationError as exc:
        raise SchemaError(f"{path} is not a valid label schema: {exc}") from exc


def schema_to_yaml(schema: LabelSchema) -> str:
    """Serialise a label schema as the text of ``labels.yaml``.

    Args:
        schema: The label schema.

    Returns:
        YAML (UTF-8 text, unset fields left out) that :func:`read_schema` reads
        back as an equal schema.
    """
    return yaml.safe_dump(
        schema.model_dump(mode="json", exclude_none=True), allow_unicode=True, sort_keys=False
    )


def _files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Map each stem to its file in ``folder`` (suffixes matched case-insensitively)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in suffixes:
            logger.warning("ignoring %s: not one of %s", path, list(suffixes))
            continue
        if path.stem in found:
            raise ValidationFailed(
                f"stem {path.stem!r} appears twice in {folder}: "
                f"{found[path.stem].name} and {path.name}"
            )
        found[path.stem] = path
    return found


def list_items(directory: Path) -> list[DatasetItem]:
    """List the images of a dataset folder with their masks, sorted by stem.

    Args:
        directory: The dataset folder.

    Returns:
        One item per image; ``mask_path`` is None for an image without mask.

    Raises:
        ValidationFailed: If ``images/`` is missing or empty, if two images share
            a stem, or if a mask has no image (the stem is named).
    """
    images_dir = directory / IMAGES_DIR
    if not images_dir.is_dir():
        raise ValidationFailed(f"{images_dir} is missing; a dataset folder needs images")
    images = _files_by_stem(images_dir, IMAGE_SUFFIXES)
    if not images:
        raise ValidationFailed(f"{images_dir} holds no {'/'.join(IMAGE_SUFFIXES)} image")
    masks_dir = directory / MASKS_DIR
    masks = _files_by_stem(masks_dir, (MASK_SUFFIX,)) if masks_dir.is_dir() else {}
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise ValidationFailed(
            f"masks without an image in {images_dir}: stems {orphans[:10]}"
            + (f" and {len(orphans) - 10} more" if len(orphans) > 10 else "")
        )
    return [DatasetItem(stem, images[stem], masks.get(stem)) for stem in sorted(images)]


def is_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a finished dataset: labels.yaml and a non-empty images/."""
    images_dir = directory / IMAGES_DIR
    return (
        (directory / SCHEMA_FILE).is_file()
        and images_dir.is_dir()
        and any(p.suffix.lower() in IMAGE_SUFFIXES for p in images_dir.iterdir())
    )


def _check_stem(stem: str, seen: set[str]) -> None:
    if not stem or stem.startswith(".") or Path(stem).name != stem or stem in (".", ".."):
        raise ValueError(f"stem {stem!r} must be a plain file name without '/' or a leading '.'")
    if stem in seen:
        raise ValueError(f"stem {stem!r} appears twice; stems must be unique")
    seen.add(stem)


def _image_to_pil(stem: str, image: npt.NDArray[np.uint8]) -> Image.Image:
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(
            f"image {stem!r} must be uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(image))


def _mask_to_pil(
    stem: str, mask: npt.NDArray[np.integer], shape: tuple[int, int], schema: LabelSchema
) -> Image.Image:
    if mask.shape != shape:
        raise ValueError(f"mask {stem!r} has shape {mask.shape}, its image {shape}")
    schema.validate_mask(mask)
    if mask.dtype == np.uint8:
        pil = Image.frombytes("P", (shape[1], shape[0]), np.ascontiguousarray(mask).tobytes())
        pil.putpalette(schema.palette())
        return pil
    if mask.dtype == np.uint16:
        return Image.fromarray(np.ascontiguousarray(mask, dtype="<u2"))
    raise ValueError(f"mask {stem!r} must be uint8 or uint16, got {mask.dtype}")


def _clear_previous(directory: Path) -> None:
    """Remove labels.yaml first, then image and mask files of an earlier (partial) build."""
    (directory / SCHEMA_FILE).unlink(missing_ok=True)
    removed = 0
    for name, suffixes in ((IMAGES_DIR, IMAGE_SUFFIXES), (MASKS_DIR, (MASK_SUFFIX,))):
        folder = directory / name
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.is_file() and path.suffix.lower() in suffixes:
                path.unlink()
                removed += 1
    if removed:
        logger.info("removed %s image/mask files of an earlier build in %s", removed, directory)


def write_dataset(
    directory: Path,
    schema: LabelSchema,
    samples: Iterable[tuple[str, npt.NDArray[np.uint8], npt.NDArray[np.integer]]],
) -> int:
    """Write image/mask pairs and the schema as a dataset folder.

    Any earlier labels.yaml, image and mask files in ``directory`` are removed
    first; labels.yaml is written last, so the folder only counts as a dataset
    (:func:`is_complete`) once every pair is on disk.

    Args:
        directory: The dataset folder; created if needed.
        schema: The label schema, written to labels.yaml.
        samples: ``(stem, image, mask)`` triples. ``image`` is uint8, (H, W)
            grayscale or (H, W, 3) RGB, 0..255, written as PNG. ``mask`` is (H, W)
            uint8 or uint16 holding class ids of ``schema`` or its ignore index;
            uint8 masks are written as palette PNGs (mode "P", the schema's
            colours), uint16 masks as 16-bit PNGs (mode "I;16").

    Returns:
        The number of pairs written.

    Raises:
        ValueError: For an empty ``samples``, a bad or repeated stem, or an image
            or mask of the wrong dtype or shape.
        SchemaError: If a mask holds ids that are not in the schema.
    """
    _clear_previous(directory)
    seen: set[str] = set()
    for stem, image, mask in samples:
        _check_stem(stem, seen)
        image_pil = _image_to_pil(stem, image)
        mask_pil = _mask_to_pil(stem, mask, (image.shape[0], image.shape[1]), schema)
        image_pil.save(directory / IMAGES_DIR / f"{stem}.png")
        mask_pil.save(directory / MASKS_DIR / f"{stem}{MASK_SUFFIX}")
    if not seen:
        raise ValueError(f"no samples to write to {directory}; a dataset needs at least one")
    partial = directory / f".{SCHEMA_FILE}.partial"
    partial.write_text(schema_to_yaml(schema), encoding="utf-8")
    partial.replace(directory / SCHEMA_FILE)
    logger.info("wrote dataset %s: %s image/mask pairs", directory, len(seen))
    return len(seen)
