"""Multipart forms: a field a route reads once must come once, and only fields it takes."""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import FormData, UploadFile

from prelabel.errors import ValidationFailed


def single_parts(form: FormData, names: Collection[str]) -> dict[str, str | UploadFile]:
    """The one part of each field of ``names`` that ``form`` holds (absent fields left out).

    Starlette keeps the last of repeated parts, so a second ``mask`` (or ``decision``)
    would silently replace the first: a repeated field is refused instead. So is a field
    not in ``names``: a typo (``annotater``) would otherwise be dropped without a word,
    as an unknown query parameter would (``service.request_guards``).

    Raises:
        ValidationFailed: A field sent more than once, naming it and how often it came;
            a field not in ``names``, naming it and the fields taken.
    """
    unknown = sorted(set(form.keys()) - set(names))
    if unknown:
        raise ValidationFailed(
            f"unknown multipart field(s) {', '.join(map(repr, unknown))}; "
            f"this form takes: {', '.join(names)}"
        )
    parts: dict[str, str | UploadFile] = {}
    for name in names:
        values = form.getlist(name)
        if len(values) > 1:
            raise ValidationFailed(
                f"multipart field {name!r} repeated: send one {name} part, got {len(values)}"
            )
        if values:
            parts[name] = values[0]
    return parts
