"""Tests of prelabel.codecs: image, index-mask, confidence and COCO RLE codecs."""

from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import numpy.typing as npt
import pydantic
import pytest
from PIL import Image

from prelabel.codecs import (
    IMAGE_FORMATS,
    CocoRle,
    decode_confidence_png,
    decode_image,
    decode_index_png,
    decode_rle,
    encode_confidence_png,
    encode_image_png,
    encode_index_png,
    encode_rle,
    mask_to_rles,
    rles_to_mask,
)
from prelabel.errors import CodecError, ImageTooLarge

LIMIT = 1_000_000

# [[0, 1, 0], [1, 1, 0], [0, 0, 1]] read down the columns is 0 1 0 | 1 1 0 | 0 0 1,
# so the runs (zeros first) are [1, 1, 1, 2, 3, 1]. Compressed: runs 0..2 are
# stored as is ('1' = 48 + 1); from run 3 on, the difference to the run two
# places earlier: 2-1 = 1 -> '1', 3-1 = 2 -> '2', 1-2 = -1 -> 5-bit 0x1F, sign
# bit set, no continuation -> chr(48 + 31) = 'O'.
KNOWN_MASK = np.array([[0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=np.bool_)
KNOWN_RUNS = [1, 1, 1, 2, 3, 1]
KNOWN_COUNTS = "11112O"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _index_mask(seed: int = 0, high: int = 4) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, high, (64, 64), dtype=np.uint8)


def _rgb(seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


# --- decode_image ---------------------------------------------------------


def test_decode_image_keeps_greyscale_and_rgb() -> None:
    grey = _index_mask(high=256)
    rgb = _rgb()

    decoded_grey = decode_image(_png(Image.fromarray(grey)), max_pixels=LIMIT)
    decoded_rgb = decode_image(_png(Image.fromarray(rgb)), max_pixels=LIMIT)

    assert decoded_grey.dtype == np.uint8 and decoded_grey.shape == (64, 64)
    np.testing.assert_array_equal(decoded_grey, grey)
    assert decoded_rgb.dtype == np.uint8 and decoded_rgb.shape == (64, 64, 3)
    np.testing.assert_array_equal(decoded_rgb, rgb)


def test_decode_image_drops_alpha() -> None:
    rgb = _rgb()
    alpha = np.full((64, 64, 1), 7, dtype=np.uint8)
    rgba = Image.fromarray(np.concatenate([rgb, alpha], axis=2))
    grey = _index_mask(high=256)
    la = Image.fromarray(grey).convert("LA")

    decoded_rgba = decode_image(_png(rgba), max_pixels=LIMIT)
    decoded_la = decode_image(_png(la), max_pixels=LIMIT)

    np.testing.assert_array_equal(decoded_rgba, rgb)
    np.testing.assert_array_equal(decoded_la, grey)


def test_decode_image_palette_becomes_rgb_even_with_transparency() -> None:
    image = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.info["transparency"] = bytes([0, 255] + [255] * 254)

    decoded = decode_image(_png(image), max_pixels=LIMIT)

    assert decoded.shape == (2, 2, 3)
    assert decoded[0, 0].tolist() == [10, 20, 30]
    assert decoded[0, 1].tolist() == [200, 100, 50]


def test_decode_image_one_bit_becomes_0_or_255() -> None:
    bits = Image.fromarray(np.array([[True, False], [False, True]]))

    decoded = decode_image(_png(bits), max_pixels=LIMIT)

    assert decoded.tolist() == [[255, 0], [0, 255]]


def test_decode_image_16_bit_is_scaled_so_the_peak_is_255() -> None:
    wide = np.array([[0, 1000], [2000, 500]], dtype=np.uint16)
    narrow = np.array([[0, 10], [200, 255]], dtype=np.uint16)

    decoded_wide = decode_image(_png(Image.fromarray(wide)), max_pixels=LIMIT)
    decoded_narrow = decode_image(_png(Image.fromarray(narrow)), max_pixels=LIMIT)

    assert decoded_wide.dtype == np.uint8
    assert decoded_wide.tolist() == [[0, 128], [255, 64]]  # round(v * 255 / 2000)
    assert decoded_narrow.tolist() == [[0, 10], [200, 255]]


def test_decode_image_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (40, 30), (0, 255, 255, 0))  # pure red

    decoded = decode_image(_jpeg(cmyk), max_pixels=LIMIT)

    assert decoded.shape == (30, 40, 3)
    assert decoded[15, 20, 0] > 200 and decoded[15, 20, 1:].max() < 60


def test_decode_image_reads_camera_mpo_jpeg() -> None:
    frame = Image.new("RGB", (16, 8), (255, 0, 0))
    buffer = io.BytesIO()
    frame.save(buffer, format="MPO", save_all=True, append_images=[frame])

    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)

    assert decoded.shape == (8, 16, 3)
    assert decoded[4, 8, 0] > 240


def test_image_formats_are_pil_format_names() -> None:
    Image.init()

    assert set(IMAGE_FORMATS) <= set(Image.OPEN)


def test_decode_image_rejects_bytes_that_are_not_an_image() -> None:
    junk = np.random.default_rng(1).bytes(500)

    with pytest.raises(CodecError, match="not a readable image in a supported format"):
        decode_image(junk, max_pixels=LIMIT)
    with pytest.raises(CodecError):
        decode_image(b"", max_pixels=LIMIT)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_image_rejects_truncated_file(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_rgb()).save(buffer, format=fmt)
    data = buffer.getvalue()

    with pytest.raises(CodecError, match="truncated or corrupt") as caught:
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)

    assert not isinstance(caught.value, ImageTooLarge)
    assert isinstance(caught.value.__cause__, OSError)


def test_decode_image_over_the_limit_names_size_and_limit() -> None:
    data = _png(Image.fromarray(_rgb()))

    with pytest.raises(ImageTooLarge, match=r"64x64 = 4096 pixels, over the limit of 4095"):
        decode_image(data, max_pixels=4095)
    assert decode_image(data, max_pixels=4096).shape == (64, 64, 3)


def test_decode_image_checks_size_before_decoding_pixels() -> None:
    data = _png(Image.fromarray(_rgb()))
    truncated = data[: len(data) // 2]  # header intact, pixels missing

    with pytest.raises(ImageTooLarge):
        decode_image(truncated, max_pixels=100)


@pytest.mark.parametrize("pil_limit", [1000, 3000])
def test_decode_image_turns_pil_bomb_check_into_image_too_large(
    monkeypatch: pytest.MonkeyPatch, pil_limit: int
) -> None:
    # 4096 pixels: over 2x 1000 raises PIL's error, between 3000 and 6000 its warning.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    data = _png(Image.fromarray(_rgb()))

    with pytest.raises(ImageTooLarge, match="too large to decode"):
        decode_image(data, max_pixels=LIMIT)


def test_decode_image_rejects_non_positive_limit() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(_png(Image.fromarray(_rgb())), max_pixels=0)


def test_decode_image_rejects_formats_outside_the_allow_list() -> None:
    buffer = io.BytesIO()
    Image.fromarray(_rgb()).save(buffer, format="PPM")

    with pytest.raises(CodecError, match="supported format"):
        decode_image(buffer.getvalue(), max_pixels=LIMIT)


# --- encode_image_png -----------------------------------------------------


def test_encode_image_png_round_trips() -> None:
    grey = _index_mask(high=256)
    rgb = _rgb()

    assert Image.open(io.BytesIO(encode_image_png(rgb))).mode == "RGB"
    np.testing.assert_array_equal(decode_image(encode_image_png(rgb), max_pixels=LIMIT), rgb)
    np.testing.assert_array_equal(decode_image(encode_image_png(grey), max_pixels=LIMIT), grey)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 4), dtype=np.uint8),
        np.zeros((4, 4), dtype=np.uint16),
        np.zeros((4,), dtype=np.uint8),
        np.zeros((0, 4), dtype=np.uint8),
    ],
)
def test_encode_image_png_rejects_bad_arrays(array: npt.NDArray[np.uint8]) -> None:
    with pytest.raises(ValueError, match="shape"):
        encode_image_png(array)


# --- index PNGs -----------------------------------------------------------


def test_index_png_uint8_with_palette_is_a_palette_png() -> None:
    mask = _index_mask()
    mask[0, 0] = 1
    palette = [0] * 768
    palette[3:6] = [255, 0, 0]  # class 1 is red

    data = encode_index_png(mask, palette)

    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "P"
        palette_read = image.getpalette()
        assert palette_read is not None and palette_read[3:6] == [255, 0, 0]
        assert image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    decoded = decode_index_png(data, max_pixels=LIMIT)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, mask)  # indices, not colours


def test_index_png_uint8_without_palette_is_greyscale() -> None:
    mask = _index_mask()
    mask[0, 0] = 255

    data = encode_index_png(mask)

    assert Image.open(io.BytesIO(data)).mode == "L"
    np.testing.assert_array_equal(decode_index_png(data, max_pixels=LIMIT), mask)


@pytest.mark.parametrize("palette", [None, [0] * 768])
def test_index_png_uint16_keeps_ids_over_255(palette: list[int] | None) -> None:
    mask = _index_mask().astype(np.uint16) * 300
    mask[0, 0] = 65535

    data = encode_index_png(mask, palette)

    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = decode_index_png(data, max_pixels=LIMIT)
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, mask)
    assert int(decoded.max()) == 65535


def test_decode_index_png_reads_one_bit_as_0_and_1() -> None:
    bits = Image.fromarray(np.array([[True, False], [False, True]]))

    assert decode_index_png(_png(bits), max_pixels=LIMIT).tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4), dtype=np.int32),
        np.zeros((4, 4), dtype=np.int64),
        np.zeros((4, 4, 1), dtype=np.uint8),
        np.zeros((4, 0), dtype=np.uint8),
    ],
)
def test_encode_index_png_rejects_bad_arrays(array: npt.NDArray[np.uint8]) -> None:
    with pytest.raises(ValueError, match="shape"):
        encode_index_png(array)


@pytest.mark.parametrize("palette", [[0] * 767, [0] * 767 + [256], [0] * 767 + [-1]])
def test_encode_index_png_rejects_bad_palette(palette: list[int]) -> None:
    with pytest.raises(ValueError, match="palette must be 768 ints"):
        encode_index_png(_index_mask(), palette)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA"])
def test_decode_index_png_rejects_colour_masks(mode: str) -> None:
    data = _png(Image.fromarray(_rgb()).convert(mode))

    with pytest.raises(CodecError, match="single-channel index PNG"):
        decode_index_png(data, max_pixels=LIMIT)


def test_decode_index_png_rejects_lossy_formats() -> None:
    with pytest.raises(CodecError, match=r"not a readable mask PNG in a supported format \(PNG\)"):
        decode_index_png(_jpeg(Image.fromarray(_index_mask())), max_pixels=LIMIT)


def test_decode_index_png_rejects_junk_truncation_and_size() -> None:
    data = encode_index_png(_index_mask())

    with pytest.raises(CodecError, match="not a readable mask PNG"):
        decode_index_png(np.random.default_rng(2).bytes(300), max_pixels=LIMIT)
    with pytest.raises(CodecError, match="truncated or corrupt"):
        decode_index_png(data[: len(data) // 2], max_pixels=LIMIT)
    with pytest.raises(ImageTooLarge, match="64x64"):
        decode_index_png(data, max_pixels=64 * 63)


# --- confidence PNGs ------------------------------------------------------


def test_confidence_round_trip_is_within_one_level() -> None:
    confidence = np.random.default_rng(3).random((64, 64), dtype=np.float32)
    confidence[0, :3] = [0.0, 1.0, 0.5]

    data = encode_confidence_png(confidence)
    decoded = decode_confidence_png(data)

    assert Image.open(io.BytesIO(data)).mode == "L"
    assert decoded.dtype == np.float32 and decoded.shape == (64, 64)
    assert float(np.abs(decoded - confidence).max()) <= 1 / 255
    assert decoded[0, 0] == 0.0 and decoded[0, 1] == 1.0


def test_confidence_png_is_exact_and_as_compact_as_pillows_filters() -> None:
    # A draft's confidence: sure inside regions, lower along a boundary. OpenCV's cheap
    # filters (GREY_PNG_FLAGS) must stay within 10% of the bytes of Pillow trying all five
    # filters per row with the same zlib level and strategy (README, "Draft benchmark").
    rows, cols = np.mgrid[0:256, 0:256]
    distance = np.abs(np.hypot(rows - 128, cols - 128) - 60)
    confidence = (1 - 0.5 * np.exp(-(distance**2) / 50)).astype(np.float32)
    levels = np.rint(confidence * 255).astype(np.uint8)
    all_filters = io.BytesIO()
    Image.fromarray(levels).save(
        all_filters, format="PNG", compress_level=1, compress_type=zlib.Z_RLE
    )
    unfiltered = cv2.imencode(".png", levels, [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE])

    data = encode_confidence_png(confidence)

    assert len(data) <= 1.10 * len(all_filters.getvalue())
    assert len(data) < len(unfiltered[1])
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == "L"
    assert np.array_equal(np.asarray(decoded), levels)


def test_confidence_is_clipped_and_nan_rejected() -> None:
    clipped = decode_confidence_png(encode_confidence_png(np.array([[-0.5, 1.5]], np.float32)))

    assert clipped.tolist() == [[0.0, 1.0]]
    with pytest.raises(ValueError, match="NaN"):
        encode_confidence_png(np.array([[np.nan]], dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        encode_confidence_png(np.zeros((2, 2), dtype=np.uint8))


def test_decode_confidence_png_rejects_other_images() -> None:
    with pytest.raises(CodecError, match="8-bit greyscale"):
        decode_confidence_png(_png(Image.fromarray(_rgb())))
    with pytest.raises(CodecError):
        decode_confidence_png(b"not a png")
    with pytest.raises(ImageTooLarge):
        decode_confidence_png(encode_confidence_png(np.zeros((8, 8))), max_pixels=63)


# --- COCO RLE -------------------------------------------------------------


def test_encode_rle_known_answer() -> None:
    rle = encode_rle(KNOWN_MASK)

    assert rle == CocoRle(size=[3, 3], counts=KNOWN_COUNTS)


def test_decode_rle_known_answer_compressed_and_uncompressed() -> None:
    compressed = decode_rle({"size": [3, 3], "counts": KNOWN_COUNTS})
    uncompressed = decode_rle({"size": [3, 3], "counts": KNOWN_RUNS}, size=(3, 3))

    assert compressed.dtype == np.bool_ and compressed.flags.c_contiguous
    np.testing.assert_array_equal(compressed, KNOWN_MASK)
    np.testing.assert_array_equal(uncompressed, KNOWN_MASK)


def test_rle_multi_chunk_runs() -> None:
    # 4096 = 4 * 32**2: chunks 0, 0, 4 -> 'P' (48 + 0x20), 'P', '4'.
    ones = np.ones((64, 64), dtype=np.bool_)

    assert encode_rle(ones).counts == "0PP4"
    assert encode_rle(~ones).counts == "PP4"
    np.testing.assert_array_equal(decode_rle(CocoRle(size=[64, 64], counts="0PP4")), ones)


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    binary = rng.random((64, 48)) < rng.uniform(0.05, 0.95)

    rle = encode_rle(binary)

    assert rle.size == [64, 48]
    np.testing.assert_array_equal(decode_rle(rle, size=(64, 48)), binary)
    np.testing.assert_array_equal(decode_rle(rle.model_dump(mode="json")), binary)


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ("!!!!", "only '0'..'o' are allowed"),
        ("zzzz", "only '0'..'o' are allowed"),
        ("1111", "cover 5 pixels, expected 3x3 = 9"),
        ("11113O", "more than the 9 pixels"),
        ("P", "end in the middle of a run"),
        ("PPPPPPPP0", "too long"),
        ("111N", "negative length"),
        ("", "cover 0 pixels"),
    ],
)
def test_decode_rle_rejects_malformed_strings(counts: str, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_rle({"size": [3, 3], "counts": counts})


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [3, 3]}, r"lacks the keys \['counts'\]"),
        ({"counts": KNOWN_COUNTS}, r"lacks the keys \['size'\]"),
        ({"size": [3], "counts": KNOWN_COUNTS}, "two positive ints"),
        ({"size": [0, 3], "counts": KNOWN_COUNTS}, "two positive ints"),
        ({"size": [3, "3"], "counts": KNOWN_COUNTS}, "two positive ints"),
        ({"size": [3, True], "counts": KNOWN_COUNTS}, "two positive ints"),
        ({"size": "3x3", "counts": KNOWN_COUNTS}, "two positive ints"),
        ({"size": [3, 3], "counts": 11112}, "string or a list of ints, got int"),
        ({"size": [3, 3], "counts": None}, "string or a list of ints"),
        ({"size": [3, 3], "counts": [1, 1, 1, 2, 5, -1]}, "runs must be non-negative"),
        ({"size": [3, 3], "counts": [1, 1, 1, 2, 3, 1.0]}, "runs must be non-negative ints"),
        ({"size": [3, 3], "counts": [1, 1, 1, 2, 3, True]}, "runs must be non-negative ints"),
        ({"size": [3, 3], "counts": [1, 1, 1, 2, 3, 2]}, "cover 10 pixels"),
        ([3, 3], "must be a mapping"),
    ],
)
def test_decode_rle_rejects_malformed_rles(rle: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_rle(rle)  # type: ignore[arg-type]


def test_decode_rle_rejects_unexpected_size() -> None:
    with pytest.raises(CodecError, match="size 3x3 does not match the expected 4x3"):
        decode_rle(CocoRle(size=[3, 3], counts=KNOWN_COUNTS), size=(4, 3))
    with pytest.raises(ValueError, match="two positive ints"):
        decode_rle(CocoRle(size=[3, 3], counts=KNOWN_COUNTS), size=(3, 0))


def test_coco_rle_model_validates_size() -> None:
    with pytest.raises(pydantic.ValidationError):
        CocoRle(size=[3], counts="")
    with pytest.raises(pydantic.ValidationError):
        CocoRle(size=[3, 0], counts="")
    with pytest.raises(pydantic.ValidationError):
        CocoRle.model_validate({"size": ["3", 3], "counts": ""})


def test_encode_rle_rejects_non_bool() -> None:
    with pytest.raises(ValueError, match="bool"):
        encode_rle(np.zeros((3, 3), dtype=np.uint8))


# --- per-class RLEs -------------------------------------------------------


@pytest.mark.parametrize("top_id", [2, 300])
def test_mask_to_rles_and_back(top_id: int) -> None:
    base = _index_mask()
    mask: npt.NDArray[np.uint8] | npt.NDArray[np.uint16] = (
        base.astype(np.uint16) if top_id > 255 else base
    )
    mask[mask == 2] = top_id
    mask[mask == 3] = 255  # ignore index: not a class

    rles = mask_to_rles(mask, [0, 1, top_id, 7])

    assert list(rles) == [0, 1, top_id]  # 7 is absent
    rebuilt = rles_to_mask(rles, size=(64, 64), fill=255, dtype=mask.dtype.type)
    assert rebuilt.dtype == mask.dtype
    np.testing.assert_array_equal(rebuilt, mask)


def test_rles_to_mask_fills_uncovered_pixels() -> None:
    rles = {4: {"size": [3, 3], "counts": KNOWN_RUNS}}

    mask = rles_to_mask(rles, size=(3, 3), fill=9, dtype=np.uint8)

    assert mask.tolist() == [[9, 4, 9], [4, 4, 9], [9, 9, 4]]


def test_rles_to_mask_rejects_overlap_naming_both_classes() -> None:
    first = np.zeros((64, 64), dtype=np.bool_)
    second = np.zeros((64, 64), dtype=np.bool_)
    first[10:20, 10:20] = True
    second[19:30, 17:20] = True  # overlaps on row 19, columns 17..19: 3 pixels

    rles = {1: encode_rle(first), 2: encode_rle(second)}

    with pytest.raises(CodecError, match="classes 1 and 2 overlap on 3 pixels"):
        rles_to_mask(rles, size=(64, 64), fill=0, dtype=np.uint8)


def test_rles_to_mask_rejects_wrong_size_and_bad_ids() -> None:
    rle = encode_rle(KNOWN_MASK)

    with pytest.raises(CodecError, match="does not match the expected 4x4"):
        rles_to_mask({1: rle}, size=(4, 4), fill=0, dtype=np.uint8)
    with pytest.raises(ValueError, match="class id 300"):
        rles_to_mask({300: rle}, size=(3, 3), fill=0, dtype=np.uint8)
    with pytest.raises(ValueError, match="fill 256"):
        rles_to_mask({1: rle}, size=(3, 3), fill=256, dtype=np.uint8)
