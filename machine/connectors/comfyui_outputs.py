"""What a ComfyUI prompt's ``outputs`` hold, sorted by what the connector returns of them.

ComfyUI keeps each output node's UI dict (``{"ui": {kind: [items]}}`` in the node,
tuples sent as lists) under its node id, in ``/history`` and in ``executed``:

- files: items ``{filename, subfolder, type}``, whatever the kind (``images`` of
  SaveImage, PreviewImage and the animated/video savers, ``audio``, ``latents``,
  ``3d`` of SaveGLB, a custom node's ``gifs``): fetched with ``/view`` and stored;
- ``text``: strings (PreviewAny, "Preview as Text", and ``ui.PreviewText`` give
  ``{"text": ["..."]}``): returned inline;
- ``animated``: SaveAnimatedWEBP's and PreviewImage's ``[true]``/``[false]``
  beside their ``images``, a flag on those files: nothing to return;
- anything else (Preview3D's ``{"result": [model_file, camera_info, bg_image]}``,
  a custom node's own kind, a ``text`` item that is not a string): its items
  returned unchanged, and the connector logs them, so no output is dropped unsaid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Kinds that flag a node's files and carry no output of their own.
FLAG_KINDS = frozenset({"animated"})


@dataclass
class SortedOutputs:
    """One prompt's outputs: files to store, text to return, the rest to return as is."""

    #: ``(node_id, kind, item)`` per file, item as ComfyUI sent it.
    files: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: ``{node_id, kind: "text", text}`` per string.
    text: list[dict[str, Any]] = field(default_factory=list)
    #: ``{node_id, kind, value}`` per node and kind neither file nor text.
    other: list[dict[str, Any]] = field(default_factory=list)


def sort_outputs(outputs: Mapping[str, Any]) -> SortedOutputs:
    """Sort a history entry's ``outputs`` (node id -> {kind: items}), in their order."""
    result = SortedOutputs()
    for node_id, node_output in outputs.items():
        node_id = str(node_id)
        if not isinstance(node_output, Mapping):
            result.other.append({"node_id": node_id, "kind": None, "value": node_output})
            continue
        for kind, items in node_output.items():
            if kind in FLAG_KINDS:
                continue
            if not isinstance(items, list):
                result.other.append({"node_id": node_id, "kind": kind, "value": items})
                continue
            rest = []
            for item in items:
                if kind == "text" and isinstance(item, str):
                    result.text.append({"node_id": node_id, "kind": kind, "text": item})
                elif isinstance(item, dict) and item.get("filename"):
                    result.files.append((node_id, kind, item))
                else:
                    rest.append(item)
            if rest:
                result.other.append({"node_id": node_id, "kind": kind, "value": rest})
    return result
