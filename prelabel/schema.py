"""Label schema: the classes of a project, their colours, translations and ignore index."""

from __future__ import annotations

import re
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prelabel.errors import SchemaError

_HEX_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")

MAX_CLASS_ID = 65534
"""Class ids must fit a uint16 index mask; 65535 stays free for an ignore index."""

ClassId = Annotated[int, Field(ge=0, le=MAX_CLASS_ID)]

_MAX_KEY_DIGITS = 5
"""No class id or ignore index has more than five digits (65535), leading zeros aside."""


def class_id_in_key(key: str) -> int | None:
    """The number a class key spells in ASCII decimal digits (``"7"``, ``"007"``), or None
    when ``key`` is not such digits (a class name, ``"1 "``, ``"²"``, ``"\u0661"``).

    Class ids arrive as text: JSON object keys, URL path segments. Every reader of them
    uses this one rule, so what is an id does not depend on the route. The number may
    still name no class: the caller checks it against its schema.

    Raises:
        SchemaError: more digits than any id or ignore index has (past 65535).
    """
    if not (key.isascii() and key.isdigit()):
        return None
    digits = key.lstrip("0") or "0"
    if len(digits) > _MAX_KEY_DIGITS:
        shown = f"{digits[:20]}... ({len(digits)} digits)" if len(digits) > 20 else digits
        raise SchemaError(f"class id {shown} is not in the schema: ids are at most 65535")
    return int(digits)


class LabelClass(BaseModel):
    """One class of a label schema.

    ``color`` is ``#rrggbb`` (a ``[r, g, b]`` list is accepted and normalised).
    ``translations`` maps a language code (``de``, ``pt-BR``) to the class name
    in that language, for annotators who do not work in English.
    """

    model_config = ConfigDict(frozen=True)

    id: ClassId
    name: Annotated[str, Field(min_length=1, max_length=200)]
    color: str = "#000000"
    translations: dict[str, str] = Field(default_factory=dict)

    @field_validator("color", mode="before")
    @classmethod
    def _normalise_color(cls, value: object) -> str:
        if isinstance(value, list | tuple):
            if len(value) != 3 or not all(
                isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value
            ):
                raise ValueError(f"color {value!r} must be three ints in 0..255")
            return "#{:02x}{:02x}{:02x}".format(*value)
        if not isinstance(value, str) or not _HEX_COLOR.match(value):
            raise ValueError(f"color {value!r} must be '#rrggbb' or [r, g, b]")
        return value.lower()

    @field_validator("translations")
    @classmethod
    def _check_languages(cls, value: dict[str, str]) -> dict[str, str]:
        for code, name in value.items():
            if not _LANGUAGE_CODE.match(code):
                raise ValueError(f"translation key {code!r} is not a language code like 'de'")
            if not name.strip():
                raise ValueError(f"translation for {code!r} is empty")
        return value

    @property
    def rgb(self) -> tuple[int, int, int]:
        """The colour as an ``(r, g, b)`` tuple of ints in 0..255."""
        return (int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16))

    def name_in(self, language: str | None) -> str:
        """The class name in ``language``, falling back to the base language, then English."""
        if language:
            for code in (language, language.replace("_", "-").split("-")[0]):
                if code in self.translations:
                    return self.translations[code]
        return self.name


class LabelSchema(BaseModel):
    """The classes of a project.

    ``ignore_index`` marks pixels that carry no label (unlabelled, ambiguous);
    they are excluded from training losses and from draft-vs-correction metrics.
    ``background_id`` is the class of an empty draft; by default the class named
    "background", else class 0, else the lowest id.
    """

    model_config = ConfigDict(frozen=True)

    classes: Annotated[list[LabelClass], Field(min_length=1, max_length=MAX_CLASS_ID + 1)]
    ignore_index: Annotated[int, Field(ge=0, le=65535)] = 255
    background_id: ClassId | None = None

    @model_validator(mode="after")
    def _check_consistency(self) -> LabelSchema:
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"class ids must be unique, got {sorted(ids)}")
        names = [c.name.casefold() for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique (case-insensitive)")
        if self.ignore_index in ids:
            raise ValueError(f"ignore_index {self.ignore_index} is also a class id; choose another")
        if self.background_id is not None and self.background_id not in ids:
            raise ValueError(f"background_id {self.background_id} is not a class id {ids}")
        return self

    @property
    def class_ids(self) -> list[int]:
        """Class ids in ascending order."""
        return sorted(c.id for c in self.classes)

    @property
    def num_classes(self) -> int:
        """Number of output channels a network needs: the highest class id plus one."""
        return max(self.class_ids) + 1

    @property
    def background(self) -> int:
        """The class id that fills an empty draft."""
        if self.background_id is not None:
            return self.background_id
        for label_class in self.classes:
            if label_class.name.casefold() == "background":
                return label_class.id
        return 0 if 0 in self.class_ids else self.class_ids[0]

    @property
    def mask_dtype(self) -> type[np.uint8] | type[np.uint16]:
        """uint8 when every class id and the ignore index fit, else uint16."""
        return np.uint8 if max(self.num_classes - 1, self.ignore_index) <= 255 else np.uint16

    def class_by_id(self, class_id: int) -> LabelClass:
        """The class with ``class_id``; raises SchemaError if there is none."""
        for label_class in self.classes:
            if label_class.id == class_id:
                return label_class
        raise SchemaError(f"class id {class_id} is not in the schema {self.class_ids}")

    def class_by_name(self, name: str) -> LabelClass:
        """The class whose name or any translation equals ``name`` (case-insensitive)."""
        wanted = name.strip().casefold()
        for label_class in self.classes:
            candidates = [label_class.name, *label_class.translations.values()]
            if any(c.casefold() == wanted for c in candidates):
                return label_class
        known = sorted(c.name for c in self.classes)
        raise SchemaError(f"label {name!r} matches no class of the schema {known}")

    def validate_mask(self, mask: npt.NDArray[np.integer]) -> None:
        """Check that a (H, W) index mask uses only class ids and the ignore index.

        Raises:
            SchemaError: naming the unknown values found.
        """
        if mask.ndim != 2:
            raise SchemaError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
        allowed = np.array([*self.class_ids, self.ignore_index])
        unknown = np.setdiff1d(np.unique(mask), allowed)
        if unknown.size:
            raise SchemaError(
                f"mask holds class ids {unknown[:10].tolist()} not in the schema "
                f"{self.class_ids} (ignore index {self.ignore_index})"
            )

    def palette(self) -> list[int]:
        """A 768-entry PNG palette: each class id's colour, grey for the ignore index."""
        palette = [0] * 768
        for label_class in self.classes:
            if label_class.id < 256:
                palette[label_class.id * 3 : label_class.id * 3 + 3] = label_class.rgb
        if self.ignore_index < 256:
            palette[self.ignore_index * 3 : self.ignore_index * 3 + 3] = [128, 128, 128]
        return palette
