"""The real datasets prelabel can build offline, by name."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

from prelabel.datasets.colin27 import build_colin27_aal
from prelabel.datasets.folder import is_complete
from prelabel.datasets.mni import build_mni_tissue
from prelabel.datasets.photo_objects import build_photo_objects

logger = logging.getLogger(__name__)

DATASET_BUILDERS: Mapping[str, Callable[[Path], Path]] = MappingProxyType(
    {
        "mni-tissue": build_mni_tissue,
        "colin27-aal": build_colin27_aal,
        "photo-objects": build_photo_objects,
    }
)
"""Dataset name -> builder writing that dataset folder (default arguments) and returning it."""


def prepare_dataset(name: str, out_dir: Path) -> Path:
    """Build a named dataset into ``out_dir`` unless a complete one is already there.

    Args:
        name: A key of DATASET_BUILDERS.
        out_dir: The dataset folder.

    Returns:
        ``out_dir``, a complete dataset folder.

    Raises:
        ValueError: If ``name`` is not a known dataset.
        ValidationFailed: If the dataset's source files are missing (from the builder).
    """
    try:
        builder = DATASET_BUILDERS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; choose from {sorted(DATASET_BUILDERS)}"
        ) from None
    if is_complete(out_dir):
        logger.info("dataset %s already complete in %s; not rebuilding", name, out_dir)
        return out_dir
    logger.info("building dataset %s into %s", name, out_dir)
    return builder(out_dir)


def dataset_folder(data: str, build_into: Path) -> Path:
    """The dataset a benchmark's ``--data`` names: a known dataset built, else a folder.

    Args:
        data: A key of DATASET_BUILDERS, or the path of a dataset folder.
        build_into: Where a named dataset is built (``prepare_dataset``'s ``out_dir``).

    Raises:
        ValueError: ``data`` is neither a known dataset nor an existing folder.
    """
    if data in DATASET_BUILDERS:
        return prepare_dataset(data, build_into)
    directory = Path(data)
    if not directory.is_dir():
        raise ValueError(
            f"--data {data!r} is neither a folder nor one of {sorted(DATASET_BUILDERS)}"
        )
    return directory
