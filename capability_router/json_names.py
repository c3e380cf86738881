"""A JSON object that names one member twice, refused while it is parsed.

Python's ``json`` keeps the last of two members of the same name without a
word, so ``{"steps": 1, "steps": 10000}`` ran 10,000 steps. RFC 7493 (I-JSON)
forbids the repeat. The REST API's strict parser, ``emp submit``, a worker's
``WORKER_PROFILE_JSON`` and ``WORKER_MODELS`` and ``emp simulate``'s traces pass
``unique_object`` as ``json.loads``' ``object_pairs_hook``.
"""

from __future__ import annotations

import json
from typing import Any

#: Characters of a repeated name quoted back.
QUOTE = 40


class NameRepeated(ValueError):
    """A JSON object names one member twice; the message names it."""


def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of ``pairs``; NameRepeated naming the first name given twice."""
    document = dict(pairs)
    if len(document) < len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise NameRepeated(f"name {json.dumps(name)[:QUOTE]} appears twice in one "
                                   "object (JSON names must be unique)")
            seen.add(name)
    return document
