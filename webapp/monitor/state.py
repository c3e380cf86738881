"""What the monitor's handlers share: Redis, the producer-side Celery app, the event hub."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from emp_tasks import defaults
from webapp.api.events import EventHub
from webapp.backend import Backend
from webapp.outage import Outage, WriteRefusals

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")


def _digest(directory: str) -> str:
    """A short digest of the static files, so browsers reload them after an upgrade."""
    sha = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as source:
            sha.update(source.read())
    return sha.hexdigest()[:10]


@dataclass
class MonitorState:
    """One per monitor process; handlers reach it as ``self.state``."""

    backend: Backend
    hub: EventHub
    url_prefix: str = ""
    version: str = field(default_factory=lambda: _digest(STATIC_DIR))
    outage: Outage = field(default_factory=lambda: Outage("emp monitor"))
    #: Writes Redis refused (full, read-only), logged once a minute.
    refusals: WriteRefusals = field(default_factory=lambda: WriteRefusals("emp monitor"))
    #: ``/metrics`` open to anyone although the monitor has auth (``EMP_METRICS_PUBLIC=1``).
    metrics_public: bool = field(default_factory=lambda: defaults.env_flag("EMP_METRICS_PUBLIC"))

    def static_url(self, name: str) -> str:
        return f"{self.url_prefix}/emp/static/{name}?v={self.version}"
