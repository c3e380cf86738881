"""The node output cache of the ComfyUI test double, as stock ComfyUI 0.8 keeps it.

ComfyUI (execution.py ``CacheSet``, comfy_execution/caching.py) keys a node's
output on its input signature (class, inputs, and its ancestors' signatures)
and, at the start of each prompt it executes, calls ``set_prompt`` with that
prompt's nodes and then ``clean_unused``. What survives depends on its mode:

- classic (the default, ``HierarchicalCache``): only entries whose signature a
  node of the new prompt has. An identical workflow is served from cache only
  right after itself; after a different prompt, the nodes it does not share
  run again;
- ``--cache-lru N`` (``LRUCache``): entries used in recent prompts, evicting
  the least recently used generations while more than N are held (the
  current prompt's are never evicted);
- ``--cache-none`` (``NullCache``): nothing; every node runs every time.

A prompt rejected by ``/prompt`` validation never reaches the executor, so it
changes nothing; one that fails or is interrupted has already replaced it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class OutputCache:
    """Signature -> the node's UI output (None for a node without one).

    :param lru: ComfyUI's ``--cache-lru N`` (N > 0): keep up to N across prompts.
    :param none: ComfyUI's ``--cache-none``: keep nothing.
    """

    def __init__(self, lru: int = 0, none: bool = False) -> None:
        if lru < 0:
            raise ValueError(f"cache_lru must be 0 (off) or a positive size, not {lru}")
        if lru and none:
            raise ValueError("cache_lru and cache_none exclude each other, as in ComfyUI")
        self.lru, self.none = lru, none
        self._entries: dict[str, Any] = {}
        self._used: dict[str, int] = {}  # LRU: signature -> generation it was last used in
        self._generation = self._min_generation = 0

    def set_prompt(self, signatures: Iterable[str]) -> None:
        """A new prompt starts executing: ``set_prompt`` then ``clean_unused``."""
        wanted = set(signatures)
        if self.none:
            return
        if not self.lru:
            self._entries = {s: v for s, v in self._entries.items() if s in wanted}
            return
        self._generation += 1
        for signature in wanted:
            self._used[signature] = self._generation
        while len(self._entries) > self.lru and self._min_generation < self._generation:
            self._min_generation += 1
            for signature in [s for s in self._entries
                              if self._used[s] < self._min_generation]:
                del self._entries[signature], self._used[signature]

    def __contains__(self, signature: str) -> bool:
        return signature in self._entries

    def __getitem__(self, signature: str) -> Any:
        if self.lru:
            self._used[signature] = self._generation
        return self._entries[signature]

    def __setitem__(self, signature: str, ui: Any) -> None:
        if self.none:
            return
        if self.lru:
            self._used[signature] = self._generation
        self._entries[signature] = ui
