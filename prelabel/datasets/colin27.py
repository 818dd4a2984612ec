"""Colin27/AAL dataset: brain lobes per hemisphere on 2-D slices of the Colin27 T1.

Source: the Debian package ``mricron-data`` (``/usr/share/mricron/templates``):
``ch2.nii.gz`` (Colin27 T1 head, 181 x 217 x 181 voxels, 1 mm, uint8),
``aal.nii.gz`` (the AAL atlas on the same grid, 116 hand-drawn regions, 0 = none)
and ``aal.nii.txt`` (one region a line: ``<value> <name> <code>``, e.g.
``1 Precentral_L 2001``).

The 116 regions are grouped into 7 groups x 2 hemispheres = 14 classes (plus
background 0) by rules on their NAMES, never by a list of ids. A name's side is
its suffix (``_L`` left, ``_R`` right); the rest of the name (its base) must
match exactly one group's rule:

* frontal: ``Precentral``, ``Frontal_*``, ``Rolandic_Oper``, ``Supp_Motor_Area``,
  ``Olfactory``, ``Rectus``
* temporal: ``Heschl``, ``Temporal_*``
* parietal: ``Postcentral``, ``Parietal_*``, ``SupraMarginal``, ``Angular``,
  ``Precuneus``, ``Paracentral_Lobule``
* occipital: ``Calcarine``, ``Cuneus``, ``Lingual``, ``Occipital_*``, ``Fusiform``
  (AAL's own lobe code puts the fusiform gyrus with the occipital lobe)
* limbic: ``Cingulum_*``, ``Insula``, ``ParaHippocampal`` (cingulate, insular
  and parahippocampal cortex)
* deep grey matter: ``Caudate``, ``Putamen``, ``Pallidum``, ``Thalamus``,
  ``Hippocampus``, ``Amygdala``
* cerebellum: ``Cerebelum_*`` (AAL's spelling) and ``Vermis_*``

A region whose name has no side suffix (the eight ``Vermis_*`` regions) is split
at the midline, voxel by voxel: voxels with world x < 0 mm (RAS) go to the left
class of its group, x >= 0 mm to the right one. A name that matches no rule is an
error, so a new atlas version cannot silently drop a region.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from prelabel.datasets.folder import write_dataset
from prelabel.datasets.mni import (
    check_slicing_args,
    load_on_one_grid,
    scale_to_uint8,
    slice_volume,
)
from prelabel.errors import ValidationFailed
from prelabel.schema import LabelClass, LabelSchema

logger = logging.getLogger(__name__)

MRICRON_TEMPLATES_DIR = Path("/usr/share/mricron/templates")
T1_FILE = "ch2.nii.gz"
ATLAS_FILE = "aal.nii.gz"
REGION_NAMES_FILE = "aal.nii.txt"

Side = Literal["left", "right"]
SIDES: tuple[Side, ...] = ("left", "right")
_SIDE_SUFFIX: dict[str, Side] = {"_L": "left", "_R": "right"}

# Side-aware templates that avoid grammatical agreement with the group's gender.
_SIDE_TEMPLATES: dict[Side, dict[str, str]] = {
    "left": {
        "en": "left {}",
        "de": "{} (links)",
        "fr": "{} (côté gauche)",
        "es": "{} (lado izquierdo)",
        "pt": "{} (lado esquerdo)",
        "zh": "左{}",
        "ja": "左{}",
    },
    "right": {
        "en": "right {}",
        "de": "{} (rechts)",
        "fr": "{} (côté droit)",
        "es": "{} (lado derecho)",
        "pt": "{} (lado direito)",
        "zh": "右{}",
        "ja": "右{}",
    },
}


@dataclass(frozen=True)
class RegionGroup:
    """A group of AAL regions: its name rule, names per language and colours per side."""

    key: str
    rule: re.Pattern[str]
    names: Mapping[str, str]
    colors: Mapping[Side, str]


def _group(key: str, bases: str, names: dict[str, str], left: str, right: str) -> RegionGroup:
    return RegionGroup(key, re.compile(rf"(?:{bases})"), names, {"left": left, "right": right})


AAL_GROUPS: tuple[RegionGroup, ...] = (
    _group(
        "frontal",
        r"Precentral|Frontal_\w+|Rolandic_Oper|Supp_Motor_Area|Olfactory|Rectus",
        {
            "en": "frontal lobe",
            "de": "Frontallappen",
            "fr": "lobe frontal",
            "es": "lóbulo frontal",
            "pt": "lobo frontal",
            "zh": "额叶",
            "ja": "前頭葉",
        },
        "#1f77b4",
        "#aec7e8",
    ),
    _group(
        "temporal",
        r"Heschl|Temporal_\w+",
        {
            "en": "temporal lobe",
            "de": "Temporallappen",
            "fr": "lobe temporal",
            "es": "lóbulo temporal",
            "pt": "lobo temporal",
            "zh": "颞叶",
            "ja": "側頭葉",
        },
        "#ff7f0e",
        "#ffbb78",
    ),
    _group(
        "parietal",
        r"Postcentral|Parietal_\w+|SupraMarginal|Angular|Precuneus|Paracentral_Lobule",
        {
            "en": "parietal lobe",
            "de": "Parietallappen",
            "fr": "lobe pariétal",
            "es": "lóbulo parietal",
            "pt": "lobo parietal",
            "zh": "顶叶",
            "ja": "頭頂葉",
        },
        "#2ca02c",
        "#98df8a",
    ),
    _group(
        "occipital",
        r"Calcarine|Cuneus|Lingual|Occipital_\w+|Fusiform",
        {
            "en": "occipital lobe",
            "de": "Okzipitallappen",
            "fr": "lobe occipital",
            "es": "lóbulo occipital",
            "pt": "lobo occipital",
            "zh": "枕叶",
            "ja": "後頭葉",
        },
        "#d62728",
        "#ff9896",
    ),
    _group(
        "limbic",
        r"Cingulum_\w+|Insula|ParaHippocampal",
        {
            "en": "limbic and insular cortex",
            "de": "limbischer und insulärer Kortex",
            "fr": "cortex limbique et insulaire",
            "es": "corteza límbica e insular",
            "pt": "córtex límbico e insular",
            "zh": "边缘及岛叶皮质",
            "ja": "辺縁・島皮質",
        },
        "#9467bd",
        "#c5b0d5",
    ),
    _group(
        "deep_grey",
        r"Caudate|Putamen|Pallidum|Thalamus|Hippocampus|Amygdala",
        {
            "en": "deep grey matter",
            "de": "tiefe graue Substanz",
            "fr": "substance grise profonde",
            "es": "sustancia gris profunda",
            "pt": "substância cinzenta profunda",
            "zh": "深部灰质",
            "ja": "深部灰白質",
        },
        "#8c564b",
        "#c49c94",
    ),
    _group(
        "cerebellum",
        r"Cerebelum_\w+|Vermis_\w+",
        {
            "en": "cerebellum",
            "de": "Kleinhirn",
            "fr": "cervelet",
            "es": "cerebelo",
            "pt": "cerebelo",
            "zh": "小脑",
            "ja": "小脳",
        },
        "#e377c2",
        "#f7b6d2",
    ),
)
"""The region groups, in class-id order; each rule must match a region's whole base name."""


def class_id(group_index: int, side: Side) -> int:
    """The class id of a group (index into AAL_GROUPS) on one side: 1, 2 for the first, ..."""
    return 1 + 2 * group_index + SIDES.index(side)


def _build_schema() -> LabelSchema:
    classes = [LabelClass(id=0, name="background", color="#000000")]
    for index, group in enumerate(AAL_GROUPS):
        for side in SIDES:
            templates = _SIDE_TEMPLATES[side]
            translations = {
                lang: templates[lang].format(name) for lang, name in group.names.items()
            }
            classes.append(
                LabelClass(
                    id=class_id(index, side),
                    name=translations.pop("en"),
                    color=group.colors[side],
                    translations=translations,
                )
            )
    return LabelSchema(classes=classes, background_id=0)


AAL_GROUP_SCHEMA = _build_schema()
"""Schema of the Colin27/AAL dataset: 0 background, then each group left and right."""


def group_region(name: str) -> tuple[int, Side | None]:
    """The group of an AAL region and its side, from the region's name alone.

    Args:
        name: An AAL region name such as ``Frontal_Sup_Orb_L`` or ``Vermis_4_5``.

    Returns:
        The index of the group in AAL_GROUPS, and the side from the name's
        ``_L``/``_R`` suffix, or None for a midline region (decided per voxel).

    Raises:
        ValidationFailed: If the name matches no group's rule.
    """
    side = _SIDE_SUFFIX.get(name[-2:])
    base = name[:-2] if side else name
    for index, group in enumerate(AAL_GROUPS):
        if group.rule.fullmatch(base):
            return index, side
    raise ValidationFailed(
        f"AAL region {name!r} matches no group rule ({[g.key for g in AAL_GROUPS]}); "
        "extend the rules in prelabel/datasets/colin27.py"
    )


def read_region_names(path: Path) -> dict[int, str]:
    """Parse an AAL names file (``<value> <name> <code>`` per line, CRLF allowed).

    Args:
        path: The ``aal.nii.txt`` file.

    Returns:
        Atlas voxel value -> region name, e.g. ``{1: "Precentral_L", ...}``.

    Raises:
        ValidationFailed: If a non-empty line does not start with an int and a name.
    """
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[0].isdigit():
            raise ValidationFailed(f"{path}:{number}: expected '<value> <name> ...', got {line!r}")
        names[int(fields[0])] = fields[1]
    return names


def aal_to_classes(
    atlas: npt.NDArray[np.integer],
    affine: npt.NDArray[np.float64],
    names: Mapping[int, str],
) -> npt.NDArray[np.uint8]:
    """Map an AAL region volume to group classes (see the module docstring).

    Args:
        atlas: RAS volume (X, Y, Z) of AAL values, 0 = no region.
        affine: The volume's 4x4 voxel-to-world (mm) affine, used for the midline split.
        names: Atlas value -> region name, as from :func:`read_region_names`.

    Returns:
        A uint8 volume (X, Y, Z) of class ids of AAL_GROUP_SCHEMA (0 background).

    Raises:
        ValidationFailed: If the atlas holds a value with no name, or a name
            matches no group rule.
    """
    if not np.issubdtype(atlas.dtype, np.integer):
        raise ValidationFailed(f"an AAL atlas holds integer values, got {atlas.dtype}")
    values = np.unique(atlas)
    unnamed = [int(v) for v in values if v != 0 and int(v) not in names]
    if unnamed:
        raise ValidationFailed(f"the atlas holds values without a region name: {unnamed[:10]}")
    size = max([int(values.max()), *names]) + 1
    left_lut = np.zeros(size, dtype=np.uint8)
    right_lut = np.zeros(size, dtype=np.uint8)
    for value, name in names.items():
        if value == 0:  # 0 is "no region" in every AAL release, whatever its line says
            continue
        index, side = group_region(name)
        left_lut[value] = class_id(index, side or "left")
        right_lut[value] = class_id(index, side or "right")
    classes: npt.NDArray[np.uint8] = right_lut[atlas]
    midline = np.nonzero(left_lut[atlas] != classes)
    if midline[0].size:
        voxels = np.stack([*midline, np.ones_like(midline[0])]).astype(np.float64)
        world_x = affine[0] @ voxels
        classes[midline] = np.where(world_x < 0, left_lut[atlas[midline]], classes[midline])
    return classes


def build_colin27_aal(
    out_dir: Path,
    *,
    slice_step: int = 1,
    min_foreground: float = 0.05,
    templates_dir: Path = MRICRON_TEMPLATES_DIR,
) -> Path:
    """Build the Colin27/AAL lobes-by-hemisphere dataset folder.

    Args:
        out_dir: The dataset folder to write (see :mod:`prelabel.datasets.folder`).
        slice_step: Keep every ``slice_step``-th slice along each axis.
        min_foreground: Skip slices with less than this share of AAL-labelled pixels.
        templates_dir: Where mricron-data keeps ch2.nii.gz, aal.nii.gz and aal.nii.txt.

    Returns:
        ``out_dir``, holding images (Colin27 T1, uint8, scaled to the volume's
        99.5th percentile), palette masks (AAL_GROUP_SCHEMA ids) and labels.yaml.

    Raises:
        ValueError: For a ``slice_step`` below 1 or a ``min_foreground`` outside [0, 1).
        ValidationFailed: If a source file is missing, the two volumes are not on
            one grid, or a region cannot be grouped.
    """
    check_slicing_args(slice_step, min_foreground)
    paths = [templates_dir / name for name in (T1_FILE, ATLAS_FILE, REGION_NAMES_FILE)]
    for path in paths:
        if not path.is_file():
            raise ValidationFailed(
                "Colin27/AAL needs the Debian package mricron-data "
                f"(apt-get install mricron-data); missing {path}"
            )
    names = read_region_names(paths[2])
    (t1_raw, atlas), affine = load_on_one_grid(paths[:2])
    labels = aal_to_classes(np.asarray(atlas), affine, names)
    slices = slice_volume(
        scale_to_uint8(t1_raw), labels, slice_step=slice_step, min_foreground=min_foreground
    )
    count = write_dataset(out_dir, AAL_GROUP_SCHEMA, slices)
    logger.info("built colin27-aal in %s: %s slices (step %s)", out_dir, count, slice_step)
    return out_dir
