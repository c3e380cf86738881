"""Where a submitted job goes: the pools router, when ``EMP_POOLS_FILE`` names a pools file.

Without it nothing changes: a job goes to the pool it names, else "default".
One router per process, broker and pools file (it caches pool state for a
second, see ``capability_router.routing``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from capability_router.jobspec import JobSpec
from capability_router.pools import POOLS_FILE_ENV, load_pools_file
from capability_router.routing import Router, SizeFields
from emp_tasks.connection import get_client

_routers: dict[tuple[int, str, str], Router] = {}


def router_for(app: Any) -> Router | None:
    """The app's router, or None when routing is off (``EMP_POOLS_FILE`` unset)."""
    path = os.environ.get(POOLS_FILE_ENV, "").strip()
    if not path:
        return None
    url = app.conf.broker_url
    key = (os.getpid(), url, path)
    router = _routers.get(key)
    if router is None:
        router = _routers[key] = Router(get_client(url), load_pools_file(path))
    return router


def place(app: Any, spec: JobSpec, features: Mapping[str, float] | None,
          size_fields: SizeFields | None = None) -> JobSpec:
    """Route the spec when routing is on (a job that names its pool keeps it)."""
    router = router_for(app)
    return spec if router is None else router.route(spec, features, size_fields)
