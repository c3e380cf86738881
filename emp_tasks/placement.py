"""Where a submitted job goes: the pools router, when ``EMP_POOLS_FILE`` names a pools file.

Without it nothing changes: a job goes to the pool it names, else "default".
One router per process, broker and pools file (it caches pool state for a
second, see ``capability_router.routing``). The file is re-read when it changes
(its modification time, size or inode), so an operator's edit routes the next
submit as ``/api/pools`` shows it; an edit that does not load (a bad field, the
file gone) changes nothing: the router keeps the last good file and logs the
error, naming the file and the field, once per version of the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from capability_router.jobspec import JobSpec
from capability_router.pools import POOLS_FILE_ENV, PoolsFileWatch
from capability_router.routing import Router, SizeFields
from emp_tasks.connection import get_client

#: (pid, broker, path) -> (the pools file watched, the router built from its last version).
_routers: dict[tuple[int, str, str], tuple[PoolsFileWatch, Router]] = {}


def router_for(app: Any) -> Router | None:
    """The app's router, or None when routing is off (``EMP_POOLS_FILE`` unset).

    Raises PoolsFileError only when no good version of the file was ever loaded.
    """
    path = os.environ.get(POOLS_FILE_ENV, "").strip()
    if not path:
        return None
    url = app.conf.broker_url
    key = (os.getpid(), url, path)
    held = _routers.get(key)
    watch = held[0] if held else PoolsFileWatch(path, "routing")
    pools_file = watch.current()
    if held is not None and held[1].pools_file is pools_file:
        return held[1]
    router = Router(get_client(url), pools_file)
    _routers[key] = (watch, router)
    return router


def place(app: Any, spec: JobSpec, features: Mapping[str, float] | None,
          size_fields: SizeFields | None = None) -> JobSpec:
    """Route the spec when routing is on (a job that names its pool keeps it)."""
    router = router_for(app)
    return spec if router is None else router.route(spec, features, size_fields)
