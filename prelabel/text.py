"""Rules on free text that people type (names, annotators, translations)."""

from __future__ import annotations

import unicodedata


def holds_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character (Unicode category Cc: NUL, newline, ...).

    A NUL fails PostgreSQL's text columns, and the others have no place in a name shown
    in lists, reports and file names.
    """
    return any(unicodedata.category(c) == "Cc" for c in text)


def storable(text: str) -> str:
    """``text`` as a text column can hold it: a NUL written out as ``\\x00``.

    For messages the system records (a failed job's or event's error, often an
    exception's words), which must be stored whatever they quote; the database refuses
    a raw NUL (``prelabel.database.refuse_nul_text``).
    """
    return text.replace("\x00", "\\x00")
