"""Where a ComfyUI server's models are: on disk, and loaded in the card's memory (LRU).

ComfyUI does not say which models it holds in VRAM, so the connector infers
it: the model files its last prompts loaded (their loader nodes' inputs),
most recent first, as many as fit the card's memory (``gpu_memory_gb``,
default: the server's VRAM from ``/system_stats``; none with ``--cpu``) at
``model_size_gb`` each (default 6.5). Everything else ``/object_info`` lists
is on disk. Models are reported under every alias
(``comfyui_models.model_aliases``), so a job naming any of them finds it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from capability_router.residency import Placement
from machine.connectors.comfyui_models import MODEL_LOADERS, model_aliases
from machine.connectors.model_cache import GpuModelCache

#: Seconds a listing of the server's model files is reused.
LISTING_SECONDS = 60.0

_INPUT_OF_LOADER = dict(MODEL_LOADERS)


def workflow_models(workflow: dict[str, Any]) -> list[str]:
    """The model files a workflow's loader nodes load, in node order."""
    found = []
    for node in workflow.values():
        if not isinstance(node, dict):
            continue
        name = (node.get("inputs") or {}).get(_INPUT_OF_LOADER.get(node.get("class_type"), ""))
        if isinstance(name, str) and name:
            found.append(name)
    return list(dict.fromkeys(found))


class ComfyUIResidency:
    """LRU of the model files a ComfyUI server ran, within its card's memory.

    :param list_files: returns the model files the server lists (``/object_info``).
    :param vram_gb: returns the card's memory in GB (0: no GPU).
    :param gpu_memory_gb: the card's memory for models; None asks ``vram_gb``.
    :param model_size_gb: memory one model takes.
    """

    def __init__(self, list_files: Callable[[], Iterable[str]], vram_gb: Callable[[], float],
                 gpu_memory_gb: float | None = None, model_size_gb: float = 6.5) -> None:
        self._list_files, self._vram_gb = list_files, vram_gb
        self.gpu_memory_gb, self.model_size_gb = gpu_memory_gb, float(model_size_gb)
        self._cache: GpuModelCache | None = None
        self._listed_at = float("-inf")
        self._lock = threading.Lock()

    def _ensure(self) -> GpuModelCache | None:
        if self._cache is None:
            memory = self.gpu_memory_gb if self.gpu_memory_gb is not None else self._vram_gb()
            if not memory or memory <= 0:
                return None
            self._cache = GpuModelCache(memory, default_size_gb=self.model_size_gb)
        if time.monotonic() - self._listed_at > LISTING_SECONDS:
            self._cache.disk = set(self._list_files()) | set(self._cache.gpu)
            self._listed_at = time.monotonic()
        return self._cache

    def ran(self, workflow: dict[str, Any]) -> None:
        """A prompt of ``workflow`` ran: its models are the most recently used in the card."""
        with self._lock:
            cache = self._ensure()
            if cache is not None:
                cache.touch(workflow_models(workflow))

    def residency(self) -> dict[str, Placement]:
        """``{model alias: Placement}`` for every listed or recently run model."""
        with self._lock:
            cache = self._ensure()
            if cache is None:
                return {name: Placement("disk") for f in self._list_files()
                        for name in model_aliases(f)}
            files = cache.residency()
        out: dict[str, Placement] = {}
        for tier in ("disk", "ram", "gpu"):  # warmer tiers win an alias two files share
            for name, place in files.items():
                if place.tier == tier:
                    out.update({alias: place for alias in model_aliases(name)})
        return out
