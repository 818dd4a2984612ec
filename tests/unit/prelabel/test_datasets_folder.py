"""The dataset folder contract: write, read back, and the errors for broken folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from prelabel.datasets import (
    DatasetItem,
    is_complete,
    list_items,
    read_schema,
    write_dataset,
)
from prelabel.errors import SchemaError, ValidationFailed
from prelabel.schema import LabelClass, LabelSchema

SCHEMA = LabelSchema(
    classes=[
        LabelClass(id=0, name="background", color="#000000"),
        LabelClass(id=1, name="cell", color="#ff0000", translations={"de": "Zelle"}),
        LabelClass(id=2, name="border", color="#00ff00"),
    ],
    ignore_index=255,
)


def _mask(seed: int) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 3, size=(64, 64), dtype=np.uint8)
    mask[:4, :4] = SCHEMA.ignore_index
    return mask


def _write_tiny(directory: Path) -> dict[str, npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(0)
    masks = {"gray": _mask(1), "rgb": _mask(2)}
    samples = [
        ("gray", rng.integers(0, 256, (64, 64), dtype=np.uint8), masks["gray"]),
        ("rgb", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), masks["rgb"]),
    ]
    assert write_dataset(directory, SCHEMA, samples) == 2
    return masks


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    masks = _write_tiny(tmp_path)
    Image.fromarray(np.zeros((32, 48), dtype=np.uint8)).save(tmp_path / "images" / "nomask.jpg")

    assert read_schema(tmp_path) == SCHEMA
    items = list_items(tmp_path)
    assert [item.stem for item in items] == ["gray", "nomask", "rgb"]
    assert items[1] == DatasetItem("nomask", tmp_path / "images" / "nomask.jpg", None)
    assert is_complete(tmp_path)
    for item, mode in ((items[0], "L"), (items[2], "RGB")):
        with Image.open(item.image_path) as image:
            assert image.mode == mode
    for item in (items[0], items[2]):
        assert item.mask_path is not None
        with Image.open(item.mask_path) as mask:
            assert mask.mode == "P"
            assert (mask.getpalette() or [])[:9] == [0, 0, 0, 255, 0, 0, 0, 255, 0]
            np.testing.assert_array_equal(np.asarray(mask), masks[item.stem])


def test_uint16_masks_are_16_bit_pngs(tmp_path: Path) -> None:
    schema = LabelSchema(classes=[LabelClass(id=0, name="a"), LabelClass(id=300, name="b")])
    mask = np.zeros((8, 8), dtype=np.uint16)
    mask[2:5, 2:5] = 300
    write_dataset(tmp_path, schema, [("x", np.zeros((8, 8), dtype=np.uint8), mask)])
    with Image.open(tmp_path / "masks" / "x.png") as png:
        assert png.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(png), mask)


def test_rewrite_replaces_earlier_files(tmp_path: Path) -> None:
    _write_tiny(tmp_path)
    image = np.zeros((8, 8), dtype=np.uint8)
    write_dataset(tmp_path, SCHEMA, [("only", image, image)])
    assert [item.stem for item in list_items(tmp_path)] == ["only"]


def test_bad_samples_leave_no_labels_yaml(tmp_path: Path) -> None:
    _write_tiny(tmp_path)
    bad_mask = np.full((8, 8), 7, dtype=np.uint8)
    with pytest.raises(SchemaError, match=r"\[7\]"):
        write_dataset(tmp_path, SCHEMA, [("a", np.zeros((8, 8), dtype=np.uint8), bad_mask)])
    assert not is_complete(tmp_path)
    with pytest.raises(ValueError, match="shape"):
        write_dataset(tmp_path, SCHEMA, [("a", np.zeros((8, 9), np.uint8), _mask(0))])
    with pytest.raises(ValueError, match="no samples"):
        write_dataset(tmp_path, SCHEMA, [])
    with pytest.raises(ValueError, match="stem"):
        write_dataset(tmp_path, SCHEMA, [("../a", np.zeros((8, 8), np.uint8), bad_mask * 0)])


def test_missing_labels_yaml(tmp_path: Path) -> None:
    _write_tiny(tmp_path)
    (tmp_path / "labels.yaml").unlink()
    assert not is_complete(tmp_path)
    with pytest.raises(SchemaError, match=r"labels\.yaml is missing"):
        read_schema(tmp_path)


def test_invalid_labels_yaml_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "labels.yaml").write_text("classes:\n  - {id: 0, name: bg, color: red}\n")
    with pytest.raises(SchemaError, match=r"(?s)labels\.yaml.*color") as info:
        read_schema(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_mask_without_image(tmp_path: Path) -> None:
    _write_tiny(tmp_path)
    (tmp_path / "images" / "rgb.png").unlink()
    with pytest.raises(ValidationFailed, match="'rgb'"):
        list_items(tmp_path)


def test_missing_or_empty_images_dir(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed, match="images is missing"):
        list_items(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(ValidationFailed, match="holds no"):
        list_items(tmp_path)
    assert not is_complete(tmp_path)


def test_duplicate_stems(tmp_path: Path) -> None:
    _write_tiny(tmp_path)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "images" / "gray.jpg")
    with pytest.raises(ValidationFailed, match="'gray' appears twice"):
        list_items(tmp_path)
