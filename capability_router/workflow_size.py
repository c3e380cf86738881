"""A ComfyUI workflow's size, read from its graph, for the duration model.

A ComfyUI job's payload is a workflow in API format (``{node_id: {class_type,
inputs}}``): its steps, image size and frame count sit in sampler and latent
nodes, not at the payload's top level where ``duration_features`` are looked
up. This reads them out as the flat fields the comfyui job type declares
(``steps``, ``width``, ``height``, ``frames``), so the router predicts a
ComfyUI job by its size as it does a simulation job. A payload without a
workflow graph (the simulator's traces) is taken as flat already.

What is read, from inputs that are plain numbers (a link to another node's
output is not a number and is skipped):

- ``steps``: summed over the nodes that take ``steps`` (KSampler, BasicScheduler,
  a refiner's second sampler); a KSamplerAdvanced counts only the steps it runs
  (``end_at_step`` - ``start_at_step``).
- ``width`` x ``height``: the largest area among the nodes that take both (the
  empty latent, or an upscale after it).
- ``frames``: that node's ``length`` (or ``video_frames``, ``frames``) times its
  ``batch_size``, 1 when it has none: four images in a batch are four frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: The comfyui job type's size features: one unit is one step of one 1024x1024 image.
COMFYUI_FEATURES = {"steps": 1, "width": 1024, "height": 1024, "frames": 1}

#: Inputs that name a latent's frame count, by node family (first present wins).
FRAME_INPUTS = ("length", "video_frames", "frames")

#: Workflow fields of a comfyui payload (``prompt`` is the ComfyUI API's own name).
GRAPH_FIELDS = ("workflow", "prompt")


def comfyui_size_fields(payload: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The payload's size fields read from its workflow graph (the payload if it has none)."""
    graph = _graph(payload)
    if graph is None:
        return payload or {}
    steps = 0.0
    area: tuple[float, float, float] | None = None  # (width * height, width, height)
    frames = None
    for node in graph.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if not isinstance(inputs, Mapping):
            continue
        steps += _steps(inputs)
        width, height = _number(inputs.get("width")), _number(inputs.get("height"))
        if width and height and (area is None or width * height > area[0]):
            area = (width * height, width, height)
            length = next((n for n in map(_number, map(inputs.get, FRAME_INPUTS)) if n), 1.0)
            frames = length * (_number(inputs.get("batch_size")) or 1.0)
    fields: dict[str, float] = {}
    if steps > 0:
        fields["steps"] = steps
    if area is not None:
        fields.update(width=area[1], height=area[2], frames=frames or 1.0)
    return fields


def _graph(payload: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    for name in GRAPH_FIELDS:
        graph = (payload or {}).get(name)
        if isinstance(graph, Mapping) and graph:
            return graph
    return None


def _steps(inputs: Mapping[str, Any]) -> float:
    steps = _number(inputs.get("steps"))
    if not steps:
        return 0.0
    start = _number(inputs.get("start_at_step")) or 0.0
    end = _number(inputs.get("end_at_step"))
    return max(0.0, min(steps, end if end is not None else steps) - start)


def _number(value: Any) -> float | None:
    """A finite, non-negative plain number; None for links, text and anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value) if not isinstance(value, int) or value < 10**300 else math.inf
    return value if math.isfinite(value) and value >= 0 else None
