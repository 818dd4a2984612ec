"""Label Studio core: label config, label mapping, brush RLE, correction withdrawal."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from prelabel.corrections import correction_history, submit_correction, withdraw_correction
from prelabel.database import transaction
from prelabel.errors import CodecError, CorrectionNotFound, SchemaError, ValidationFailed
from prelabel.images import find_image_by_sha256
from prelabel.integrations.labelstudio import (
    BrushConfig,
    LabelMapping,
    LsResult,
    LsUser,
    annotation_mask,
    annotator_name,
    decode_brush,
    draft_regions,
    encode_brush,
    ls_project_key,
    map_labels,
    parse_label_config,
    project_spec_from_config,
)
from prelabel.schema import LabelSchema
from prelabel.workspace import Workspace
from tests.shapes_project import project_with_image
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

CONFIG = """
<View>
  <Image name="img" value="$picture" zoom="true"/>
  <BrushLabels name="tag" toName="img">
    <Label value="Scheibe" background="#FF0000"/>
    <Label value="square" background="rgba(0, 255, 0, 0.7)"/>
  </BrushLabels>
</View>
"""
SCHEMA = LabelSchema.model_validate({"classes": SHAPES_CLASSES})


def test_parse_label_config_finds_brush_tag_labels_and_image_key() -> None:
    config = parse_label_config(CONFIG)
    assert (config.from_name, config.to_name, config.data_key) == ("tag", "img", "picture")
    assert [(label.value, label.background) for label in config.labels] == [
        ("Scheibe", "#FF0000"),
        ("square", "rgba(0, 255, 0, 0.7)"),
    ]


@pytest.mark.parametrize(
    "config, fragment",
    [
        ("<View><Image", "not valid XML"),
        ('<View><Image name="i" value="$i"/></View>', "no <BrushLabels>"),
        (
            '<View><BrushLabels name="t" toName="x"><Label value="a"/></BrushLabels></View>',
            "names no",
        ),
        ('<View><Image name="i" value="$i"/><BrushLabels name="t" toName="i"/></View>', "at least"),
    ],
)
def test_parse_label_config_rejects_unusable_configs(config: str, fragment: str) -> None:
    with pytest.raises(ValidationFailed, match=fragment):
        parse_label_config(config)


def test_labels_map_by_name_or_translation_and_unknown_labels_are_named() -> None:
    mapping = map_labels(parse_label_config(CONFIG), SCHEMA)
    assert mapping.classes == {"Scheibe": 1, "square": 2}
    assert mapping.label_of(1) == "Scheibe" and mapping.label_of(0) is None
    unknown = CONFIG.replace('value="square"', 'value="triangle"')
    with pytest.raises(SchemaError, match=r"'triangle'.*'background'.*'disk' \(Scheibe\)"):
        map_labels(parse_label_config(unknown), SCHEMA)


def test_project_spec_from_config_adds_background_and_keeps_order_and_colours() -> None:
    spec = project_spec_from_config("7", parse_label_config(CONFIG))
    assert spec.name == "labelstudio-7"
    assert [(c.id, c.name, c.color) for c in spec.classes] == [
        (0, "background", "#000000"),
        (1, "Scheibe", "#ff0000"),
        (2, "square", "#00ff00"),
    ]
    with_background = BrushConfig.model_validate(
        {
            "from_name": "t",
            "to_name": "i",
            "data_key": "i",
            "labels": [{"value": "road", "background": "red"}, {"value": "Background"}],
        }
    )
    classes = project_spec_from_config("8", with_background).classes
    assert [(c.id, c.name, c.color) for c in classes] == [
        (0, "Background", "#1f77b4"),
        (1, "road", "#ff0000"),
    ]


def test_ls_project_key_takes_the_id_part() -> None:
    assert ls_project_key("12.1700000000") == "12" and ls_project_key(3) == "3"
    with pytest.raises(ValidationFailed):
        ls_project_key("../etc")


def test_brush_round_trip_matches_the_sdk_codec() -> None:
    _, mask = shapes_sample(3)
    binary = mask == 1
    rle = encode_brush(binary)
    assert rle == brush.mask2rle((binary * 255).astype(np.uint8))
    assert (decode_brush(rle, height=64, width=64) == binary).all()
    sdk = brush.decode_rle(rle).reshape(64, 64, 4)[:, :, 3] > 0
    assert (sdk == binary).all()


def test_decode_brush_checks_size_and_corruption() -> None:
    rle = encode_brush(np.ones((8, 8), dtype=bool))
    with pytest.raises(CodecError, match="8x16x4"):
        decode_brush(rle, height=8, width=16)
    with pytest.raises(CodecError):
        decode_brush(rle[:6], height=8, width=8)
    with pytest.raises(CodecError):
        decode_brush([300, 1, 2, 3], height=8, width=8)


def test_draft_regions_and_annotation_mask_are_inverse() -> None:
    _, mask = shapes_sample(5)
    confidence = np.where(mask == 1, 0.9, 0.6).astype(np.float32)
    mapping = LabelMapping(
        from_name="tag", to_name="img", data_key="picture", classes={"Scheibe": 1, "square": 2}
    )
    regions = draft_regions(mask, confidence, mapping=mapping, background_id=0, region_prefix="d")
    assert [(r.id, r.value.brushlabels, r.score) for r in regions] == [
        ("d-1", ["Scheibe"], pytest.approx(0.9)),
        ("d-2", ["square"], pytest.approx(0.6)),
    ]
    results = [LsResult.model_validate(r.model_dump()) for r in regions]
    rebuilt = annotation_mask(results, mapping=mapping, schema=SCHEMA, height=64, width=64)
    assert (rebuilt == mask).all()
    with pytest.raises(ValidationFailed, match="64x64"):
        annotation_mask(results, mapping=mapping, schema=SCHEMA, height=32, width=64)


def test_annotator_name() -> None:
    assert annotator_name(LsUser(id=3, email="ana@example.org"), "x") == "ana@example.org"
    assert annotator_name(LsUser(id=3), "x") == "labelstudio:3"
    assert annotator_name(4, "x") == "labelstudio:4"
    assert annotator_name("bo", "x") == "bo"
    assert annotator_name(None, "fallback") == "fallback"


def _correct(workspace: Workspace, project, image, value: int, who: str) -> str:
    with transaction(workspace.sessions) as session:
        mask = np.full((image.height, image.width), value, dtype=np.uint8)
        return submit_correction(
            session, workspace.blobs, project=project, image=image, mask=mask, annotator=who
        ).id


def test_withdraw_correction_restores_the_previous_one_skipping_withdrawn(
    workspace: Workspace,
) -> None:
    image_bytes = png_bytes(shapes_sample(0)[0])
    project, image = project_with_image(workspace, "w")
    first, second, third = (_correct(workspace, project, image, v, f"u{v}") for v in (0, 1, 2))

    def current() -> str | None:
        with workspace.sessions() as session:
            return next((c.id for c in correction_history(session, image) if c.is_current), None)

    with transaction(workspace.sessions) as session:
        withdraw_correction(
            session, second, reason="deleted", actor="test"
        )  # not current: nothing moves
    assert current() == third
    with transaction(workspace.sessions) as session:
        withdrawn = withdraw_correction(session, third, reason="deleted", actor="test")
    assert not withdrawn.is_current
    assert current() == first  # skips the withdrawn second
    with transaction(workspace.sessions) as session:
        withdraw_correction(session, third, reason="again", actor="test")  # idempotent
        withdraw_correction(session, first, reason="deleted", actor="test")
    assert current() is None
    fourth = _correct(workspace, project, image, 1, "u4")
    assert current() == fourth
    with transaction(workspace.sessions) as session:
        with pytest.raises(CorrectionNotFound):
            withdraw_correction(session, "nope", reason="x", actor="test")
        found = find_image_by_sha256(session, project.id, hashlib.sha256(image_bytes).hexdigest())
        assert found is not None and found.id == image.id and found.has_correction
        assert find_image_by_sha256(session, project.id, "0" * 64) is None
