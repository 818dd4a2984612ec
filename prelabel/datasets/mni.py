"""MNI152 tissue dataset: grey and white matter on 2-D slices of the MNI152 2009 template.

Source: the MNI ICBM152 2009 (nonlinear, symmetric) T1 template and its grey-
and white-matter probability maps, shipped with the nilearn wheel as
``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``
(197 x 233 x 189 voxels, 1 mm, RAS). The files are located on disk without
importing nilearn and read with nibabel.

Each voxel gets the class with the highest probability among background
(``1 - gm - wm``, clipped to 0..1), grey matter and white matter; ties go to the
lower class id. The volume is sliced along all three axes.

This module also holds the slicing and intensity helpers shared with the
Colin27/AAL builder (:mod:`prelabel.datasets.colin27`).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.filebasedimages import ImageFileError

from prelabel.datasets.folder import write_dataset
from prelabel.errors import ValidationFailed
from prelabel.schema import LabelClass, LabelSchema

logger = logging.getLogger(__name__)

MNI_FILE_TEMPLATE = "mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"

# (stem prefix, voxel axis) for a RAS volume: x runs left->right, y
# posterior->anterior, z inferior->superior.
SLICE_AXES: tuple[tuple[str, int], ...] = (("sag", 0), ("cor", 1), ("ax", 2))

MNI_TISSUE_SCHEMA = LabelSchema(
    classes=[
        LabelClass(
            id=0,
            name="background",
            color="#000000",
            translations={
                "de": "Hintergrund",
                "fr": "arrière-plan",
                "es": "fondo",
                "pt": "fundo",
                "zh": "背景",
                "ja": "背景",
            },
        ),
        LabelClass(
            id=1,
            name="grey matter",
            color="#f28e2b",
            translations={
                "de": "Graue Substanz",
                "fr": "substance grise",
                "es": "sustancia gris",
                "pt": "substância cinzenta",
                "zh": "灰质",
                "ja": "灰白質",
            },
        ),
        LabelClass(
            id=2,
            name="white matter",
            color="#4e79a7",
            translations={
                "de": "Weiße Substanz",
                "fr": "substance blanche",
                "es": "sustancia blanca",
                "pt": "substância branca",
                "zh": "白质",
                "ja": "白質",
            },
        ),
    ],
    background_id=0,
)
"""Schema of the MNI tissue dataset: 0 background, 1 grey matter, 2 white matter."""


def check_slicing_args(slice_step: int, min_foreground: float) -> None:
    """Reject a ``slice_step`` below 1 or a ``min_foreground`` outside [0, 1)."""
    if slice_step < 1:
        raise ValueError(f"slice_step must be an int >= 1, got {slice_step!r}")
    if not 0.0 <= min_foreground < 1.0:
        raise ValueError(f"min_foreground must be in [0, 1), got {min_foreground!r}")


def load_on_one_grid(
    paths: Sequence[Path],
) -> tuple[list[npt.NDArray[np.number]], npt.NDArray[np.float64]]:
    """Read NIfTI volumes that must share one voxel grid, reoriented to RAS.

    Args:
        paths: ``.nii`` or ``.nii.gz`` files; every one must exist.

    Returns:
        One voxel array (X, Y, Z) per path, in the file's dtype (scaled only if
        its header asks for it), all of the same shape; and their shared RAS
        4x4 voxel-to-world (mm) affine.

    Raises:
        ValidationFailed: If a file is not a readable NIfTI volume, or a volume's
            shape or affine differs from the first one's.
    """
    volumes: list[npt.NDArray[np.number]] = []
    first_affine = np.eye(4)
    for path in paths:
        try:
            # nibabel's reorientation helpers carry no annotations.
            image = nib.as_closest_canonical(nib.load(path))  # type: ignore[no-untyped-call]
            data = np.asanyarray(image.dataobj)
        except (ImageFileError, OSError, EOFError) as exc:
            raise ValidationFailed(f"cannot read the NIfTI volume {path}: {exc}") from exc
        affine = np.asarray(image.affine, dtype=np.float64)
        if not volumes:
            first_affine = affine
        elif data.shape != volumes[0].shape or not np.allclose(affine, first_affine, atol=1e-4):
            raise ValidationFailed(
                f"{path} (shape {data.shape}) is not on the grid of {paths[0]} "
                f"(shape {volumes[0].shape}); their shapes or affines differ"
            )
        volumes.append(data)
    return volumes, first_affine


def scale_to_uint8(
    volume: npt.NDArray[np.number], percentile: float = 99.5
) -> npt.NDArray[np.uint8]:
    """Map intensities to 0..255, saturating at a high percentile of the whole volume.

    Args:
        volume: Any-shape intensity array (e.g. a T1 volume X, Y, Z), values >= 0.
        percentile: Intensities at or above this percentile of the volume map to 255,
            so a few bright voxels do not darken the rest.

    Returns:
        A uint8 array of the same shape, 0..255.
    """
    data = np.asarray(volume, dtype=np.float32)
    top = float(np.percentile(data, percentile))
    low = float(data.min())
    if top <= low:
        return np.zeros(data.shape, dtype=np.uint8)
    scaled = (data - low) * (255.0 / (top - low))
    result: npt.NDArray[np.uint8] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return result


def slice_volume(
    image: npt.NDArray[np.uint8],
    labels: npt.NDArray[np.uint8],
    *,
    slice_step: int,
    min_foreground: float,
    background_id: int = 0,
) -> Iterator[tuple[str, npt.NDArray[np.uint8], npt.NDArray[np.uint8]]]:
    """Cut a RAS volume and its label volume into upright 2-D slices along all three axes.

    Slices are rotated with ``np.rot90`` so that, as in the usual RAS display,
    superior is up in sagittal and coronal slices, anterior is up in axial ones,
    and the subject's right is on the image's right (neurological convention).

    Args:
        image: RAS intensity volume (X, Y, Z), uint8 0..255.
        labels: RAS class-id volume of the same shape, uint8.
        slice_step: Keep every ``slice_step``-th slice along each axis, from index 0.
        min_foreground: Skip slices whose share of non-background pixels is below this.
        background_id: The class id that does not count as foreground.

    Yields:
        ``(stem, image, mask)``: stems like ``ax_090``, ``cor_100``, ``sag_045``
        (axis prefix and voxel index); image and mask are (H, W) uint8 of equal shape.
    """
    if image.shape != labels.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be equal 3-D")
    for prefix, axis in SLICE_AXES:
        for index in range(0, image.shape[axis], slice_step):
            # Basic indexing gives a view; np.take copies and is slow on Fortran-ordered data.
            where = (slice(None),) * axis + (index,)
            mask = np.rot90(labels[where])
            if np.count_nonzero(mask != background_id) < min_foreground * mask.size:
                continue
            picture = np.rot90(image[where])
            yield f"{prefix}_{index:03d}", np.ascontiguousarray(picture), np.ascontiguousarray(mask)


def _nilearn_data_dir() -> Path:
    """nilearn's shipped data folder, found without importing nilearn."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValidationFailed(
            "the MNI tissue dataset needs the nilearn package: pip install 'prelabel[demo]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def mni_tissue_labels(
    gm: npt.NDArray[np.number], wm: npt.NDArray[np.number]
) -> npt.NDArray[np.uint8]:
    """Label each voxel with its most probable tissue.

    Args:
        gm: Grey-matter probability volume (X, Y, Z); rescaled to 0..1 by its maximum.
        wm: White-matter probability volume, same shape; rescaled the same way.

    Returns:
        A uint8 volume (X, Y, Z): 0 background, 1 grey matter, 2 white matter; the
        argmax over (clip(1 - gm - wm, 0, 1), gm, wm), ties to the lower id.
    """
    gm_p = np.asarray(gm, dtype=np.float32) / max(float(np.max(gm)), 1e-6)
    wm_p = np.asarray(wm, dtype=np.float32) / max(float(np.max(wm)), 1e-6)
    background = np.clip(1.0 - gm_p - wm_p, 0.0, 1.0)
    labels: npt.NDArray[np.uint8] = np.argmax(np.stack([background, gm_p, wm_p]), axis=0).astype(
        np.uint8
    )
    return labels


def build_mni_tissue(out_dir: Path, *, slice_step: int = 2, min_foreground: float = 0.05) -> Path:
    """Build the MNI152 grey/white-matter dataset folder.

    Args:
        out_dir: The dataset folder to write (see :mod:`prelabel.datasets.folder`).
        slice_step: Keep every ``slice_step``-th slice along each axis.
        min_foreground: Skip slices with less than this share of grey + white matter.

    Returns:
        ``out_dir``, holding images (T1, uint8, scaled to the volume's 99.5th
        percentile), palette masks (0 background, 1 grey, 2 white matter) and labels.yaml.

    Raises:
        ValueError: For a ``slice_step`` below 1 or a ``min_foreground`` outside [0, 1).
        ValidationFailed: If nilearn or its template files are missing, or the
            three volumes are not on one grid.
    """
    check_slicing_args(slice_step, min_foreground)
    data_dir = _nilearn_data_dir()
    paths = [data_dir / MNI_FILE_TEMPLATE.format(kind=kind) for kind in ("t1", "gm", "wm")]
    for path in paths:
        if not path.is_file():
            raise ValidationFailed(f"the MNI tissue dataset needs nilearn's {path}; it is missing")
    (t1_raw, gm, wm), _ = load_on_one_grid(paths)
    labels = mni_tissue_labels(gm, wm)
    t1 = scale_to_uint8(t1_raw)
    slices = slice_volume(t1, labels, slice_step=slice_step, min_foreground=min_foreground)
    count = write_dataset(out_dir, MNI_TISSUE_SCHEMA, slices)
    logger.info("built mni-tissue in %s: %s slices (step %s)", out_dir, count, slice_step)
    return out_dir
