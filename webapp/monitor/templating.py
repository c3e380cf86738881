"""Templates of the monitor layered over Flower's.

A name is looked up in the monitor's own directory first, then in Flower's,
so Flower's pages pick up the monitor's ``navbar.html`` (which adds the GPU
queue views) and the monitor's pages extend Flower's ``base.html``. The
prefix ``flower/`` always means Flower's own file.
"""

from __future__ import annotations

import os

import flower
from tornado import template

FLOWER_TEMPLATES = os.path.join(os.path.dirname(flower.__file__), "templates")
OWN_TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
FLOWER_PREFIX = "flower/"


class LayeredLoader(template.Loader):
    """A tornado template loader over two directories: ours, then Flower's."""

    def __init__(self, own: str = OWN_TEMPLATES, fallback: str = FLOWER_TEMPLATES,
                 **kwargs: object) -> None:
        super().__init__(own, **kwargs)
        self.fallback = fallback

    def resolve_path(self, name: str, parent_path: str | None = None) -> str:
        return name  # every name is flat: no relative lookups

    def path_of(self, name: str) -> str:
        """The file a template name stands for."""
        if name.startswith(FLOWER_PREFIX):
            return os.path.join(self.fallback, name[len(FLOWER_PREFIX):])
        own = os.path.join(self.root, name)
        return own if os.path.isfile(own) else os.path.join(self.fallback, name)

    def _create_template(self, name: str) -> template.Template:
        with open(self.path_of(name), "rb") as source:
            return template.Template(source.read(), name=name, loader=self)
