"""Turn ComfyUI's node and step messages into one job progress figure.

Percent = (nodes done + the current node's step fraction) / nodes in the
workflow. ComfyUI skips nodes no output needs and reports cached nodes in a
batch, so the figure can jump; it never goes backwards and stays below 100
until ``finish`` (the prompt is done and its files are stored): a workflow
served wholly from ComfyUI's cache lists every node as cached at once, and
its messages say so ("served from ComfyUI's cache" while its files are
stored, then "completed from ComfyUI's cache") rather than "started" at 99.
"""

from __future__ import annotations

import math
from typing import Any

from machine.connectors.base import Progress


class ProgressTracker:
    """The state of one prompt's execution as ComfyUI reports it."""

    def __init__(self, workflow: dict[str, Any]) -> None:
        self.classes = {str(node_id): (node or {}).get("class_type", "")
                        for node_id, node in workflow.items()}
        self.nodes_total = max(1, len(self.classes))
        self.done: set[str] = set()
        #: Nodes ComfyUI reported cached, and nodes it executed (or began to).
        self.from_cache: set[str] = set()
        self.ran: set[str] = set()
        self.current: str | None = None
        self.step = 0
        self.max_steps = 0
        self._percent = 0.0
        self.finished = False
        #: Prompts ComfyUI runs before this one (other clients' too); 0 once it started.
        self.queue_ahead = 0

    def waiting(self, ahead: int) -> None:
        """The prompt waits in ComfyUI's queue behind ``ahead`` others (0: it started)."""
        self.queue_ahead = max(0, int(ahead))

    def cached(self, nodes: list[Any]) -> None:
        self.from_cache.update(str(node) for node in nodes)
        self.done.update(str(node) for node in nodes)

    def executing(self, node: Any) -> None:
        """A node started; the one before it is done."""
        node = str(node)
        self.ran.add(node)
        if self.current is not None and self.current != node:
            self.done.add(self.current)
        if node != self.current:
            self.current, self.step, self.max_steps = node, 0, 0

    def progress(self, node: Any, value: Any, maximum: Any) -> None:
        """A node's step ``value`` of ``maximum``. A report whose figures are not finite
        numbers (a custom node's own ``send_sync``) is ignored: it failed the job before."""
        step, steps = _count(value), _count(maximum)
        if step is None or steps is None:
            return
        if node is not None and str(node) != self.current:
            self.executing(node)
        self.step, self.max_steps = step, steps

    def executed(self, node: Any) -> None:
        """A node's output (ComfyUI repeats a cached output node's earlier one)."""
        if str(node) not in self.from_cache:
            self.ran.add(str(node))
        self.done.add(str(node))

    @property
    def all_cached(self) -> bool:
        """ComfyUI executed nothing: every node it reported came from its cache.

        While the prompt runs that is known only once every node is cached;
        at the end, nodes no output needs are neither cached nor run.
        """
        if self.ran or not self.from_cache:
            return False
        return self.finished or self.from_cache >= set(self.classes)

    def finish(self) -> None:
        """The prompt is done and its outputs are stored: 100 percent."""
        self.finished = True
        if self.current is not None:
            self.done.add(self.current)
        self.current = None
        self.done.update(self.classes)

    @property
    def nodes_done(self) -> int:
        return len(self.done & set(self.classes))

    @property
    def percent(self) -> float:
        if self.finished:
            self._percent = 100.0
            return self._percent
        fraction = 0.0
        if self.current is not None and self.current not in self.done and self.max_steps:
            fraction = min(1.0, self.step / self.max_steps)
        current = min(99.0, 100.0 * (self.nodes_done + fraction) / self.nodes_total)
        self._percent = max(self._percent, current)
        return self._percent

    def report(self) -> Progress:
        """The progress to publish now, with node and step detail."""
        percent = self.percent
        node_class = self.classes.get(self.current or "", "")
        if self.current is None and self.queue_ahead and not self.finished:
            message = f"waiting in ComfyUI's queue: {ahead_text(self.queue_ahead)}"
        elif self.current is None and self.all_cached:
            message = ("completed from ComfyUI's cache" if self.finished
                       else "served from ComfyUI's cache")
        elif self.current is None:
            cached = len(self.from_cache & set(self.classes))
            message = ("completed" if self.finished else
                       f"started: {cached} of {self.nodes_total} nodes from ComfyUI's cache"
                       if cached else "started")
        elif self.max_steps:
            message = f"{node_class or 'node'} #{self.current}: step {self.step}/{self.max_steps}"
        else:
            message = f"{node_class or 'node'} #{self.current}"
        return Progress(round(percent, 2), message, {
            "node": self.current, "node_class": node_class or None, "step": self.step,
            "max_steps": self.max_steps, "nodes_done": self.nodes_done,
            "nodes_total": self.nodes_total, "queue_ahead": self.queue_ahead,
            "nodes_cached": len(self.from_cache & set(self.classes)),
            "from_cache": self.all_cached,
        })


def ahead_text(count: int) -> str:
    """``1 prompt ahead``, ``3 prompts ahead``."""
    return f"{count} prompt{'' if count == 1 else 's'} ahead"


def _count(value: Any) -> int | None:
    """A step figure as a whole number (0 for none, a fraction rounded down); None for a
    value that is no finite number ("3", NaN, a list)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return max(0, int(value))
