"""Whole numbers read from text a client or a server sent: ASCII digits alone.

``str.isdigit()`` takes '²' (the byte 0xB2 read as Latin-1), which ``int()``
refuses with a ValueError; ``int()`` itself takes '٣' (Arabic-Indic 3), '1_0',
'+5' and ' 5 ', and refuses more than 4,300 digits with Python's own advice.
Query parameters, headers and fields read as whole numbers are checked here
first, each with a bound on its digits.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+")
_SIGNED = re.compile(r"-?[0-9]+")


def is_whole(text: str, signed: bool = False) -> bool:
    """Whether ``text`` is ASCII digits, after one leading '-' when ``signed``."""
    return (_SIGNED if signed else _DIGITS).fullmatch(text) is not None


def whole_number(text: str, max_digits: int, signed: bool = False) -> int | None:
    """``text`` as an int when it is 1 to ``max_digits`` ASCII digits (after one leading
    '-' when ``signed``); None otherwise."""
    if not is_whole(text, signed) or len(text.removeprefix("-")) > max_digits:
        return None
    return int(text)
