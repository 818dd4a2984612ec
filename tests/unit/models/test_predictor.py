"""OnnxPredictor on hand-built ONNX graphs: no torch, exact expectations."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.predictor import (
    INPUT_NAME,
    LUMINANCE_WEIGHTS,
    OUTPUT_NAME,
    OnnxPredictor,
    PredictorSpec,
    convert_channels,
    padded_size,
    postprocess,
    preprocess,
)
from prelabel.errors import ModelNotFound, ValidationFailed

GREY = PredictorSpec(in_channels=1, stride=8, mean=(0.5,), std=(0.25,), classes=2)
RGB = PredictorSpec(
    in_channels=3, stride=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 0.125), classes=2
)


def write_conv_model(
    path: Path, weights: np.ndarray, spec: PredictorSpec | None, **extra_metadata: str
) -> Path:
    """A 1x1 convolution ``(classes, in_channels)`` as the network, with prelabel metadata."""
    classes, in_channels = weights.shape
    kernel = numpy_helper.from_array(
        weights.reshape(classes, in_channels, 1, 1).astype(np.float32), "kernel"
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", [INPUT_NAME, "kernel"], [OUTPUT_NAME])],
        "conv",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.FLOAT, ["n", in_channels, "h", "w"]
            )
        ],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["n", classes, "h", "w"])],
        initializer=[kernel],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {**(spec.to_metadata() if spec else {}), **extra_metadata}
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def sign_predictor(tmp_path: Path) -> OnnxPredictor:
    """Class 0 where the normalised pixel is positive (> 127.5), else class 1."""
    path = write_conv_model(tmp_path / "sign.onnx", np.array([[1.0], [-1.0]]), GREY)
    return OnnxPredictor.from_path(path, threads=1)


def test_importing_the_predictor_does_not_import_torch() -> None:
    code = "import sys, models.predictor; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_spec_round_trips_through_metadata() -> None:
    assert PredictorSpec.from_metadata(RGB.to_metadata()) == RGB


def test_rgb_becomes_luminance_for_a_grey_network() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 100, 50
    tensor = preprocess(image, GREY)
    luminance = np.rint(np.dot([200, 100, 50], LUMINANCE_WEIGHTS)) / 255
    assert tensor.shape == (1, 1, 16, 16)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, 0, :8, :8], (luminance - 0.5) / 0.25, rtol=1e-6)


@pytest.mark.parametrize("shape", [(16, 24), (16, 24, 1)])
def test_grey_is_repeated_for_an_rgb_network(shape: tuple[int, ...]) -> None:
    image = np.full(shape, 51, dtype=np.uint8)
    tensor = preprocess(image, RGB)
    assert tensor.shape == (1, 3, 16, 24)
    expected = (0.2 - np.array(RGB.mean)) / np.array(RGB.std)
    np.testing.assert_allclose(tensor[0, :, 0, 0], expected, rtol=1e-6)


def test_convert_channels_returns_uint8_hwc() -> None:
    rgb = np.array([[[255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    grey = convert_channels(rgb, 1)
    assert grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[..., 0], [[255, 76]])
    assert convert_channels(grey[..., 0], 3).shape == (1, 2, 3)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        convert_channels(rgb, 2)


def test_padding_reflects_bottom_and_right() -> None:
    image = np.arange(20 * 13, dtype=np.uint8).reshape(20, 13)
    tensor = preprocess(image, GREY)[0, 0]
    assert tensor.shape == (24, 16)
    expected = np.pad(image.astype(np.float32) / 255, ((0, 4), (0, 3)), mode="reflect")
    np.testing.assert_allclose(tensor, (expected - 0.5) / 0.25, rtol=1e-5, atol=1e-6)


def test_tiny_images_pad_from_the_edge_to_twice_the_stride() -> None:
    assert padded_size(1, 2, 8) == (16, 16)
    assert padded_size(17, 24, 8) == (24, 24)
    tensor = preprocess(np.array([[0, 255]], dtype=np.uint8), GREY)[0, 0]
    assert tensor.shape == (16, 16)
    assert np.all(tensor[:, 0] == -2.0)
    assert np.all(tensor[:, 1:] == 2.0)


@pytest.mark.parametrize(
    ("image", "error"),
    [
        (np.zeros((8, 8, 4), dtype=np.uint8), ValueError),
        (np.zeros((8,), dtype=np.uint8), ValueError),
        (np.zeros((0, 8), dtype=np.uint8), ValueError),
        (np.zeros((8, 8), dtype=np.float32), TypeError),
    ],
)
def test_bad_images_are_rejected(image: np.ndarray, error: type[Exception]) -> None:
    with pytest.raises(error, match=r"uint8|shape"):
        preprocess(image, GREY)


def test_postprocess_is_stable_for_huge_logits() -> None:
    logits = np.array([[[1e4, 0.0]], [[0.0, 0.0]], [[-1e4, 0.0]]], dtype=np.float32)
    prediction = postprocess(logits, 1, 2)
    np.testing.assert_array_equal(prediction.mask, [[0, 0]])
    np.testing.assert_allclose(prediction.confidence, [[1.0, 1 / 3]], rtol=1e-6)


def test_postprocess_matches_softmax_and_crops() -> None:
    logits = np.random.default_rng(0).normal(size=(4, 9, 7)).astype(np.float32)
    prediction = postprocess(logits, 5, 6)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    np.testing.assert_array_equal(prediction.mask, probabilities.argmax(axis=0)[:5, :6])
    np.testing.assert_allclose(prediction.confidence, probabilities.max(axis=0)[:5, :6], rtol=1e-5)


def test_many_classes_give_a_uint16_mask() -> None:
    logits = np.zeros((300, 2, 2), dtype=np.float32)
    logits[299] = 1.0
    assert postprocess(logits, 2, 2).mask.dtype == np.uint16
    assert postprocess(logits, 2, 2).mask.max() == 299


def test_predict_gives_the_expected_mask(sign_predictor: OnnxPredictor) -> None:
    image = np.zeros((37, 21), dtype=np.uint8)
    image[:, 10:] = 255
    prediction = sign_predictor.predict(image)
    assert prediction.mask.shape == (37, 21)
    assert np.all(prediction.mask[:, :10] == 1)
    assert np.all(prediction.mask[:, 10:] == 0)
    # logits are +-2, so the winner has probability 1 / (1 + e^-4)
    np.testing.assert_allclose(prediction.confidence, 1 / (1 + np.exp(-4.0)), rtol=1e-5)


def test_predict_batch_keeps_order_across_sizes(sign_predictor: OnnxPredictor) -> None:
    rng = np.random.default_rng(0)
    shapes = [(30, 30), (17, 40), (30, 30), (5, 5), (30, 30, 3), (31, 29)]
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in shapes]
    batched = sign_predictor.predict_batch(images, max_batch=2)
    for image, prediction in zip(images, batched, strict=True):
        single = sign_predictor.predict(image)
        np.testing.assert_array_equal(prediction.mask, single.mask)
        np.testing.assert_allclose(prediction.confidence, single.confidence)
    assert sign_predictor.predict_batch([]) == []


def test_concurrent_predictions_agree(sign_predictor: OnnxPredictor) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 48), dtype=np.uint8) for _ in range(8)]
    serial = [sign_predictor.predict(image).mask for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda image: sign_predictor.predict(image).mask, images))
    for expected, got in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(expected, got)


def test_missing_metadata_is_not_a_prelabel_model(tmp_path: Path) -> None:
    path = write_conv_model(tmp_path / "bare.onnx", np.eye(2)[:, :1], None)
    with pytest.raises(
        ValidationFailed,
        match=re.escape("not a prelabel ONNX model: missing metadata prelabel.in_channels"),
    ):
        OnnxPredictor.from_path(path)


def test_malformed_metadata_is_rejected(tmp_path: Path) -> None:
    metadata = {"prelabel.mean": "[0.5, 0.5]"}
    path = write_conv_model(tmp_path / "bad.onnx", np.eye(2)[:, :1], GREY, **metadata)
    with pytest.raises(ValidationFailed, match="mean"):
        OnnxPredictor.from_path(path)


def test_wrong_class_count_is_caught_at_run_time(tmp_path: Path) -> None:
    spec = PredictorSpec(in_channels=1, stride=8, mean=(0.5,), std=(0.25,), classes=5)
    path = write_conv_model(tmp_path / "liar.onnx", np.eye(2)[:, :1], spec)
    with pytest.raises(ValidationFailed, match="expected"):
        OnnxPredictor.from_path(path).predict(np.zeros((8, 8), dtype=np.uint8))


def test_from_bytes_matches_from_path(tmp_path: Path) -> None:
    path = write_conv_model(tmp_path / "sign.onnx", np.array([[1.0], [-1.0]]), GREY)
    image = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    from_bytes = OnnxPredictor.from_bytes(path.read_bytes(), threads=1)
    assert from_bytes.spec == GREY
    np.testing.assert_array_equal(
        from_bytes.predict(image).mask, OnnxPredictor.from_path(path).predict(image).mask
    )
    with pytest.raises(ValidationFailed, match="not an ONNX model"):
        OnnxPredictor.from_bytes(b"garbage")


def test_missing_file_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        OnnxPredictor.from_path(tmp_path / "nope.onnx")


def test_bad_arguments_list_what_is_allowed(sign_predictor: OnnxPredictor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="threads"):
        OnnxPredictor.from_path(tmp_path / "x.onnx", threads=-1)
    with pytest.raises(ValueError, match="max_batch"):
        sign_predictor.predict_batch([], max_batch=0)
