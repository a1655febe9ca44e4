"""Checks of values that reach a boot entry, a unit or a shell line (pure)."""

from __future__ import annotations

import unicodedata


def control_character(text: str) -> str | None:
    """The first character of ``text`` that must not reach a boot entry, a unit or a shell
    line (control characters: newline, tab, NUL, ESC, ...; format and line/paragraph
    separators), shown as ``repr``; None if there is none."""
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            return repr(ch)
    return None


def is_int(value: object) -> bool:
    """An int and not a bool (JSON's ``true`` is not the number 1)."""
    return isinstance(value, int) and not isinstance(value, bool)
