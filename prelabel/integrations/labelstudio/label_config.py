"""The Label Studio label config: its ``<BrushLabels>`` tag, label mapping and project spec.

The ``<BrushLabels>`` tag (``from_name``/``to_name``), its ``<Label>`` values and
the task data key of the image it labels; the mapping of Label Studio label names
to a project's classes (name or translation); and the project spec made from the
config on first ``/setup``.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET

from PIL import ImageColor
from pydantic import BaseModel, ConfigDict, ValidationError

from prelabel.errors import SchemaError, ValidationFailed
from prelabel.projects import ProjectSpec, validation_messages
from prelabel.schema import LabelClass, LabelSchema

logger = logging.getLogger(__name__)

MAX_LABEL_CONFIG_CHARS = 1_000_000

_FALLBACK_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
_RGBA = re.compile(r"^rgba?\(\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*(,[^)]*)?\)$")


class LsLabel(BaseModel):
    """One ``<Label value=... background=...>`` of the ``<BrushLabels>`` tag."""

    model_config = ConfigDict(frozen=True)

    value: str
    background: str | None = None


class BrushConfig(BaseModel):
    """What prelabel needs from a Label Studio label config.

    ``from_name`` and ``to_name`` are the ``name``/``toName`` of the
    ``<BrushLabels>`` tag; ``data_key`` is the task data field of the image it
    labels (``$image`` -> ``image``); ``labels`` keep the config's order.
    """

    model_config = ConfigDict(frozen=True)

    from_name: str
    to_name: str
    data_key: str
    labels: list[LsLabel]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1].casefold()


def parse_label_config(config: str) -> BrushConfig:
    """Find the ``<BrushLabels>`` tag of a label config, its labels and its image.

    ElementTree resolves no external entities, and the bundled expat (>= 2.4.1)
    caps entity expansion, so an untrusted config cannot read files or blow up
    memory; its size is capped as well.

    Raises:
        ValidationFailed: not XML, too long, no ``<BrushLabels>`` with labels, or
            no ``<Image>`` tag that its ``toName`` names.
    """
    if len(config) > MAX_LABEL_CONFIG_CHARS:
        raise ValidationFailed(f"label config is over {MAX_LABEL_CONFIG_CHARS} characters")
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise ValidationFailed(f"the Label Studio label config is not valid XML: {exc}") from exc
    elements = list(root.iter())
    brushes = [e for e in elements if _local(e.tag) == "brushlabels"]
    if not brushes:
        raise ValidationFailed(
            "the Label Studio label config has no <BrushLabels> tag; prelabel answers "
            "semantic segmentation with brush masks"
        )
    if len(brushes) > 1:
        logger.warning("label config has %d <BrushLabels> tags; using the first", len(brushes))
    brush = brushes[0]
    from_name, to_name = brush.get("name", ""), brush.get("toName", "")
    labels = [
        LsLabel(value=label.get("value", ""), background=label.get("background"))
        for label in brush.iter()
        if _local(label.tag) == "label" and label.get("value", "").strip()
    ]
    if not from_name or not to_name or not labels:
        raise ValidationFailed(
            "<BrushLabels> needs name, toName and at least one <Label value=...>"
        )
    images = [e for e in elements if _local(e.tag) == "image" and e.get("name") == to_name]
    if not images or not images[0].get("value", "").startswith("$"):
        raise ValidationFailed(
            f'<BrushLabels toName={to_name!r}> names no <Image name={to_name!r} value="$...">'
        )
    return BrushConfig(
        from_name=from_name,
        to_name=to_name,
        data_key=images[0].get("value", "")[1:],
        labels=labels,
    )


class LabelMapping(BaseModel):
    """Label Studio label names to class ids, for one ``<BrushLabels>`` tag."""

    model_config = ConfigDict(frozen=True)

    from_name: str
    to_name: str
    data_key: str
    classes: dict[str, int]
    """Label value -> class id, in the config's order."""

    def label_of(self, class_id: int) -> str | None:
        """The first label (config order) that maps to ``class_id``, if any."""
        return next((label for label, cid in self.classes.items() if cid == class_id), None)


def map_labels(config: BrushConfig, schema: LabelSchema) -> LabelMapping:
    """Map every label of the config to a class by name or translation (case-insensitive).

    Raises:
        SchemaError: naming each label that matches no class, and the classes known.
    """
    classes: dict[str, int] = {}
    missing: list[str] = []
    for label in config.labels:
        try:
            classes[label.value] = schema.class_by_name(label.value).id
        except SchemaError:
            missing.append(label.value)
    if missing:
        known = ", ".join(
            f"{c.name!r}" + (f" ({', '.join(c.translations.values())})" if c.translations else "")
            for c in schema.classes
        )
        raise SchemaError(
            f"Label Studio label(s) {', '.join(repr(m) for m in missing)} of <BrushLabels "
            f"name={config.from_name!r}> match no class of the prelabel project; its classes "
            f"(with translations) are {known}. Rename the label, add a translation to a class, "
            f"or bind the Label Studio project to another prelabel project."
        )
    return LabelMapping(
        from_name=config.from_name,
        to_name=config.to_name,
        data_key=config.data_key,
        classes=classes,
    )


def _colour(value: str | None, index: int) -> str:
    fallback = _FALLBACK_COLOURS[index % len(_FALLBACK_COLOURS)]
    if not value:
        return fallback
    text = value.strip()
    match = _RGBA.match(text)
    try:
        rgb = (
            tuple(int(c) for c in match.groups()[:3])
            if match
            else ImageColor.getrgb(text[:7] if re.match(r"^#[0-9a-fA-F]{8}$", text) else text)[:3]
        )
    except ValueError:
        logger.debug("label colour %r not understood; using %s", value, fallback)
        return fallback
    if any(c > 255 for c in rgb):
        return fallback
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def project_spec_from_config(ls_project: str, config: BrushConfig) -> ProjectSpec:
    """The prelabel project made for a Label Studio project on its first ``/setup``.

    Named ``labelstudio-<id>``; one class per label, colours from the labels'
    ``background``. A label named "background" (any case) gets id 0 and the others
    1..n in config order; without one, id 0 is an added "background" class.

    Raises:
        SchemaError: The labels make no valid label schema (names alike but for case,
            over 200 characters, holding control characters).
    """
    background = next((x for x in config.labels if x.value.casefold() == "background"), None)
    try:
        classes = [
            LabelClass(
                id=0,
                name=background.value if background else "background",
                color=_colour(background.background, 0) if background else "#000000",
            )
        ]
        others = [x for x in config.labels if x is not background]
        for number, label in enumerate(others, start=1):
            classes.append(
                LabelClass(id=number, name=label.value, color=_colour(label.background, number))
            )
        return ProjectSpec(name=f"labelstudio-{ls_project}", classes=classes)
    except ValidationError as exc:
        raise SchemaError(
            f"the labels of <BrushLabels> make no valid label schema: {validation_messages(exc)}"
        ) from exc
