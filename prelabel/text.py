"""Rules on free text that people type (names, annotators, translations)."""

from __future__ import annotations

import unicodedata


def holds_control_characters(text: str) -> bool:
    """Whether ``text`` holds a control character (Unicode category Cc: NUL, newline, ...).

    A NUL fails PostgreSQL's text columns, and the others have no place in a name shown
    in lists, reports and file names.
    """
    return any(unicodedata.category(c) == "Cc" for c in text)
