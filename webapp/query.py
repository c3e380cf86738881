"""Query parameters that take one value: a repeated one is refused, naming it.

``request.args.get`` takes the first of ``?token=a&token=b`` and drops the
rest without a word; a caller then acts on a value it did not mean (another
token, another resume id). Every parameter of the API takes one value.
"""

from __future__ import annotations

from flask import request
from werkzeug.exceptions import BadRequest


def repeated(name: str, times: int) -> str:
    """Why a query parameter given ``times`` times is refused (every one takes one value)."""
    return f"{name}: given {times} times; send it once (it takes one value)"


def single(name: str) -> str | None:
    """The request's query parameter ``name`` (None when absent); BadRequest (400, the
    message naming it) when given more than once."""
    given = request.args.getlist(name)
    if len(given) > 1:
        raise BadRequest(repeated(name, len(given)))
    return given[0] if given else None
