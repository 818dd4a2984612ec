"""The real datasets built offline: MNI152 tissue (nilearn) and Colin27/AAL (mricron-data)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from prelabel.datasets import (
    AAL_GROUP_SCHEMA,
    MNI_TISSUE_SCHEMA,
    DatasetItem,
    build_colin27_aal,
    build_mni_tissue,
    is_complete,
    list_items,
    prepare_dataset,
    read_schema,
    write_dataset,
)
from prelabel.datasets.catalog import dataset_folder
from prelabel.datasets.colin27 import (
    MRICRON_TEMPLATES_DIR,
    REGION_NAMES_FILE,
    aal_to_classes,
    class_id,
    group_region,
    read_region_names,
)
from prelabel.errors import ValidationFailed


def _require_aal() -> None:
    """Fail (never skip) without the atlas: ``make test`` installs it first."""
    if not (MRICRON_TEMPLATES_DIR / "aal.nii.gz").is_file():
        pytest.fail(
            f"no AAL atlas in {MRICRON_TEMPLATES_DIR}: the Debian package mricron-data is "
            f"missing; `make colin27-data` installs it (`make test` does so first)",
            pytrace=False,
        )


def _read(item: DatasetItem) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    assert item.mask_path is not None
    with Image.open(item.image_path) as image, Image.open(item.mask_path) as mask:
        assert mask.mode == "P"
        return np.asarray(image), np.asarray(mask)


def _check_pairs(directory: Path) -> dict[str, npt.NDArray[np.uint8]]:
    """Every item has a mask of its image's size, valid for the schema; stem -> mask."""
    schema = read_schema(directory)
    masks = {}
    for item in list_items(directory):
        image, mask = _read(item)
        assert image.dtype == np.uint8 and image.ndim == 2
        assert image.shape == mask.shape
        schema.validate_mask(mask)
        masks[item.stem] = mask
    return masks


@pytest.fixture(scope="module")
def mni_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mni_tissue(tmp_path_factory.mktemp("mni"), slice_step=20)


def test_mni_tissue(mni_dir: Path) -> None:
    assert read_schema(mni_dir) == MNI_TISSUE_SCHEMA
    masks = _check_pairs(mni_dir)
    assert {stem.split("_")[0] for stem in masks} == {"ax", "cor", "sag"}
    assert set(np.unique(np.concatenate([m.ravel() for m in masks.values()]))) == {0, 1, 2}
    mid = masks["ax_100"]
    assert (mid == 1).mean() > 0.05 and (mid == 2).mean() > 0.05


def test_prepare_dataset_skips_a_complete_folder(tmp_path: Path) -> None:
    image = np.zeros((4, 4), dtype=np.uint8)
    write_dataset(tmp_path, MNI_TISSUE_SCHEMA, [("only", image, image)])
    assert prepare_dataset("mni-tissue", tmp_path) == tmp_path
    assert [item.stem for item in list_items(tmp_path)] == ["only"]
    with pytest.raises(ValueError, match=r"'nope'.*colin27-aal.*mni-tissue"):
        prepare_dataset("nope", tmp_path)


def test_dataset_folder_builds_a_name_or_takes_an_existing_folder(tmp_path: Path) -> None:
    image = np.zeros((4, 4), dtype=np.uint8)
    built = tmp_path / "built"
    write_dataset(built, MNI_TISSUE_SCHEMA, [("only", image, image)])
    assert dataset_folder("mni-tissue", built) == built
    assert dataset_folder(str(built), tmp_path / "unused") == built
    assert not (tmp_path / "unused").exists()
    with pytest.raises(ValueError, match=r"'nope' is neither a folder nor one of .*mni-tissue"):
        dataset_folder("nope", tmp_path / "unused")


def test_builders_reject_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slice_step"):
        build_colin27_aal(tmp_path, slice_step=0)
    with pytest.raises(ValueError, match="min_foreground"):
        build_colin27_aal(tmp_path, min_foreground=1.5)


def test_colin27_missing_package_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match=r"apt-get install mricron-data\); missing .*ch2"):
        build_colin27_aal(tmp_path / "out", templates_dir=tmp_path)
    assert not is_complete(tmp_path / "out")


def test_colin27_volumes_must_share_a_grid(tmp_path: Path) -> None:
    for name, shape in (("ch2.nii.gz", (4, 4, 4)), ("aal.nii.gz", (4, 4, 5))):
        volume = nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4))  # type: ignore[no-untyped-call]
        nib.save(volume, tmp_path / name)
    (tmp_path / "aal.nii.txt").write_text("1 Precentral_L 2001\r\n")
    with pytest.raises(ValidationFailed, match="not on the grid"):
        build_colin27_aal(tmp_path / "out", templates_dir=tmp_path)
    (tmp_path / "aal.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(ValidationFailed, match="cannot read"):
        build_colin27_aal(tmp_path / "out", templates_dir=tmp_path)


def test_midline_regions_split_by_world_x() -> None:
    atlas = np.array([3, 3, 0, 3, 1]).reshape(5, 1, 1)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[0, 3] = -2.0  # voxel i sits at x = i - 2 mm
    names = {1: "Precentral_L", 3: "Vermis_4_5"}
    classes = aal_to_classes(atlas, affine, names)
    cerebellum = group_region("Cerebelum_3_L")[0]
    left, right = class_id(cerebellum, "left"), class_id(cerebellum, "right")
    assert classes.ravel().tolist() == [left, left, 0, right, class_id(0, "left")]
    with pytest.raises(ValidationFailed, match="Mystery_L"):
        aal_to_classes(atlas, affine, {**names, 2: "Mystery_L"})


@pytest.fixture(scope="module")
def colin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_aal()
    return build_colin27_aal(tmp_path_factory.mktemp("colin"), slice_step=20)


def test_aal_grouping_covers_every_region() -> None:
    _require_aal()
    names = read_region_names(MRICRON_TEMPLATES_DIR / REGION_NAMES_FILE)
    assert len(names) == 116
    groups = {name: group_region(name) for name in names.values()}
    assert groups["Frontal_Sup_Orb_L"] == (0, "left")
    assert groups["Precuneus_R"][0] == groups["Angular_R"][0] != groups["Cuneus_R"][0]
    assert groups["Vermis_1_2"][1] is None
    assert {index for index, _ in groups.values()} == set(range(7))


def test_colin27_aal(colin_dir: Path) -> None:
    schema = read_schema(colin_dir)
    assert schema == AAL_GROUP_SCHEMA
    assert 12 <= len(schema.classes) <= 16
    masks = _check_pairs(colin_dir)
    frontal = [schema.class_by_name(f"{side} frontal lobe").id for side in ("left", "right")]
    assert any(
        stem.startswith("ax_") and all((mask == c).any() for c in frontal)
        for stem, mask in masks.items()
    )
    # Voxel x = 60 lies at -30 mm: left hemisphere only (odd class ids).
    assert set(np.unique(masks["sag_060"])) <= {0, *range(1, 15, 2)}


def test_photo_objects_is_deterministic_rgb_with_all_ten_kinds(tmp_path: Path) -> None:
    from prelabel.datasets.photo_objects import PHOTO_OBJECTS_SCHEMA, build_photo_objects

    first = build_photo_objects(tmp_path / "a", count=40, seed=3)
    again = build_photo_objects(tmp_path / "b", count=40, seed=3)
    items = list_items(first)
    assert len(items) == 40 and read_schema(first) == PHOTO_OBJECTS_SCHEMA
    kinds: set[int] = set()
    for item, twin in zip(items, list_items(again), strict=True):
        image = np.asarray(Image.open(item.image_path))
        assert image.shape == (128, 128, 3)
        assert item.image_path.read_bytes() == twin.image_path.read_bytes()
        assert item.mask_path is not None
        mask = np.asarray(Image.open(item.mask_path))
        assert 0 < np.count_nonzero(mask) < mask.size // 4  # small objects on a background
        kinds |= set(np.unique(mask).tolist())
    assert kinds == set(range(11))
