"""The one JSON parser of every input path: REST bodies, socket messages, the monitor's submit.

Python's ``json.loads`` accepts more than JSON: ``NaN`` and ``Infinity``, and
numbers too large for a float, which it turns into infinity (``1e999``); a
record holding one is written back as a bare ``Infinity``, which no JSON
reader takes, and a worker's arithmetic on it raises OverflowError. Deep
nesting exhausts the interpreter's stack (RecursionError). This parser
refuses all of these, and documents over a size limit, with a
``JsonRefused`` whose message names the problem.

A lone surrogate (``"\\ud800"``, half of a UTF-16 pair) is valid JSON syntax
but no Unicode character: it cannot be encoded as UTF-8, so every later
encoding of the job (its idempotency fingerprint, a worker's request, a log
line) fails on it. RFC 7493 (I-JSON) forbids it; it is refused naming the field.
I-JSON also forbids a name twice in one object, which Python's parser takes
silently, keeping the last (``{"service_required": "echo", "service_required":
"text"}`` ran a text job); that is refused naming the name.
"""

from __future__ import annotations

import json
import re
import sys
from itertools import accumulate
from typing import Any

from capability_router.json_names import unique_object
from webapp.settings import MAX_BODY_BYTES

#: Deepest nesting of arrays and objects accepted (a ComfyUI workflow needs under 10).
MAX_DEPTH = 64
#: Longest number quoted back in a refusal, characters.
_QUOTE = 40
#: A JSON string literal (the unrolled form: linear, whatever the input).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
#: What may hold a surrogate: an escaped one, or one in a str already decoded.
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class JsonRefused(ValueError):
    """A document the parser refuses; the message says what is wrong with it."""


def _quoted(text: str) -> str:
    return text if len(text) <= _QUOTE else f"{text[:_QUOTE]}... ({len(text)} characters)"


def _no_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not JSON (JSON numbers are finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JsonRefused(f"number {_quoted(text)} is too large (it overflows a float)")
    return value


#: Digits of the largest float (1.8e308): an integer with more is beyond any float.
_FLOAT_DIGITS = len(str(int(sys.float_info.max)))


def _bounded_int(text: str) -> int:
    # Longer ones are refused unconverted: int() of over 4,300 digits raised Python's own
    # advice ("use sys.set_int_max_str_digits()") as the refusal.
    digits = len(text.lstrip("-"))
    if digits > _FLOAT_DIGITS or (digits == _FLOAT_DIGITS
                                  and abs(int(text)) > sys.float_info.max):
        raise JsonRefused(f"integer {_quoted(text)} is too large (beyond any float)")
    return int(text)


def depth(text: str) -> int:
    """How deeply arrays and objects nest in ``text`` (brackets inside strings do not count)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    steps = (1 if c in "[{" else -1 for c in brackets)
    return max(accumulate(steps), default=0)


def lone_surrogate(value: Any, path: str = "") -> str | None:
    """Where ``value`` holds a lone surrogate, as ``field: lone surrogate ...``; None when
    it holds none (pairs were joined by the parser)."""
    if isinstance(value, str):
        found = _SURROGATE.search(value)
        if found is None:
            return None
        shown = found.group().encode("unicode_escape").decode()
        return f"{path or 'the document'}: lone surrogate {shown} (no Unicode character)"
    if isinstance(value, dict):
        for key, item in value.items():
            where = (lone_surrogate(key, f"{path or 'the document'} (a key)")
                     or lone_surrogate(item, f"{path}.{key}" if path else key))
            if where:
                return where
    if isinstance(value, list):
        for index, item in enumerate(value):
            where = lone_surrogate(item, f"{path}.{index}" if path else str(index))
            if where:
                return where
    return None


def loads(data: str | bytes, max_bytes: int = MAX_BODY_BYTES,
          max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document strictly; JsonRefused naming the problem otherwise.

    ``max_bytes`` bounds the document's encoded size, ``max_depth`` its nesting.
    """
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise JsonRefused(f"document over the {max_bytes}-byte limit ({size} bytes)")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRefused(f"not UTF-8: {exc}") from None
    nesting = depth(data)
    if nesting > max_depth:
        raise JsonRefused(f"nested deeper than {max_depth} levels ({nesting})")
    try:
        document = json.loads(data, parse_constant=_no_constant, parse_float=_finite_float,
                              parse_int=_bounded_int, object_pairs_hook=unique_object)
    except JsonRefused:
        raise
    except (ValueError, RecursionError) as exc:
        raise JsonRefused(str(exc)) from None
    where = lone_surrogate(document) if _MAYBE_SURROGATE.search(data) else None
    if where:
        raise JsonRefused(where)
    return document
