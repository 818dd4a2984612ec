"""Tiled inference: the same draft as the whole image, in bounded pieces, without seams."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.predictor import INPUT_NAME, OUTPUT_NAME, OnnxPredictor, PredictorSpec
from models.tiling import Tiling, predict_tiled
from tests.unit.models.test_predictor import GREY, write_conv_model

NO_TILING = Tiling(tile_px=4096, overlap_px=0)


def _blur_model(path: Path, spec: PredictorSpec, radius: int = 3) -> Path:
    """Logits ±8 x (mean of a (2r+1)² window of the normalised image): context matters."""
    size = 2 * radius + 1
    kernel = np.full((1, 1, size, size), 1.0 / size**2, np.float32)
    weights = np.concatenate([kernel * 8, kernel * -8])
    graph = helper.make_graph(
        [helper.make_node("Conv", [INPUT_NAME, "kernel"], [OUTPUT_NAME], pads=[radius] * 4)],
        "blur",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["n", 1, "h", "w"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", 2, "h", "w"])],
        initializer=[numpy_helper.from_array(weights, "kernel")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in spec.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.normal(size=(height // 16 + 2, width // 16 + 2))
    up = np.kron(smooth, np.ones((16, 16)))[:height, :width]
    return np.clip(127.5 + 60 * up + rng.normal(scale=20, size=up.shape), 0, 255).astype(np.uint8)


def test_a_pixelwise_network_gives_exactly_the_whole_image_draft(tmp_path: Path) -> None:
    path = write_conv_model(tmp_path / "sign.onnx", np.array([[1.0], [-1.0]]), GREY)
    image = _image(700, 530)
    whole = OnnxPredictor.from_path(path, threads=1, tiling=NO_TILING).predict(image)
    tiled = OnnxPredictor.from_path(path, threads=1, tiling=Tiling(128, 32)).predict(image)
    assert np.array_equal(tiled.mask, whole.mask)
    np.testing.assert_allclose(tiled.confidence, whole.confidence, atol=1e-5)


def test_with_context_tiles_agree_with_the_whole_image_beyond_99_5_percent(
    tmp_path: Path,
) -> None:
    path = _blur_model(tmp_path / "blur.onnx", GREY)
    image = _image(1024, 1024, seed=3)  # 256-px tiles meet edge to edge without overlap
    whole = OnnxPredictor.from_path(path, threads=1, tiling=NO_TILING).predict(image)
    tiled = OnnxPredictor.from_path(path, threads=1, tiling=Tiling(256, 64)).predict(image)
    agreement = float((tiled.mask == whole.mask).mean())
    assert agreement >= 0.995, agreement
    no_blend = OnnxPredictor.from_path(path, threads=1, tiling=Tiling(256, 0)).predict(image)
    assert float((no_blend.mask == whole.mask).mean()) < agreement  # blending removes seams


def test_tiles_never_exceed_the_tile_size_and_cover_every_pixel() -> None:
    seen: list[tuple[int, int]] = []
    covered = np.zeros((1000, 777), np.int32)

    def run_tile(tile: np.ndarray) -> np.ndarray:
        seen.append(tile.shape[:2])
        return np.stack([tile.astype(np.float32), 255 - tile.astype(np.float32)])

    image = np.zeros((1000, 777), np.uint8)
    image[::7] = 200
    tiling = Tiling(tile_px=256, overlap_px=48)
    mask, confidence = predict_tiled(image, run_tile, tiling)
    rows, cols = tiling.span(1000), tiling.span(777)
    for y0 in rows.starts:
        for x0 in cols.starts:
            covered[y0 : y0 + rows.side, x0 : x0 + cols.side] += 1
    assert set(seen) == {(rows.side, cols.side)} and covered.min() >= 1
    assert max(rows.side, cols.side) <= 256
    assert len(seen) == len(rows.starts) * len(cols.starts)
    assert np.array_equal(mask, (image < 128).astype(np.intp))
    assert confidence.shape == image.shape and float(confidence.min()) > 0.5


def test_small_images_are_not_tiled(tmp_path: Path) -> None:
    assert not Tiling(512, 64).applies(512, 300)
    assert Tiling(512, 64).applies(513, 10)
    with pytest.raises(ValueError, match="overlap_px"):
        Tiling(256, 200)


def test_a_side_takes_the_fewest_tiles_each_as_short_as_that_allows() -> None:
    tiling = Tiling(tile_px=1024, overlap_px=128)
    # Three tiles of 1024 would draft 2.3x the pixels of a 2048² image; three of 768, 1.3x.
    assert tiling.span(2048, align=32).side == 768
    assert tiling.span(2048, align=32).starts == (0, 640, 1280)
    assert tiling.span(8192, align=32).side == 1024
    for length in range(1025, 9000, 7):
        for align in (1, 32):
            span = tiling.span(length, align)
            overlaps = [a + span.side - b for a, b in itertools.pairwise(span.starts)]
            assert span.side <= 1024 and (align == 1 or span.side % align == 0)
            assert span.starts[0] == 0 and span.starts[-1] + span.side == length
            assert min(overlaps) >= 128, (length, align, span)
            fewer = len(span.starts) - 1  # one tile less cannot cover the side with overlap
            assert fewer * 1024 - (fewer - 1) * 128 < length, (length, span)
