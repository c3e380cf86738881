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

import logging
import os
from collections.abc import Mapping
from typing import Any

from capability_router.errors import PoolsFileError
from capability_router.jobspec import JobSpec
from capability_router.pools import POOLS_FILE_ENV, load_pools_file
from capability_router.routing import Router, SizeFields
from emp_tasks.connection import get_client

logger = logging.getLogger(__name__)

#: (pid, broker, path) -> (the file's version the router was built from, or refused at; router).
_routers: dict[tuple[int, str, str], tuple[tuple[int, ...] | None, Router]] = {}


def _version(path: str) -> tuple[int, ...] | None:
    """What changes when the file is edited or replaced; None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)


def router_for(app: Any) -> Router | None:
    """The app's router, or None when routing is off (``EMP_POOLS_FILE`` unset).

    Raises PoolsFileError only when no good version of the file was ever loaded.
    """
    path = os.environ.get(POOLS_FILE_ENV, "").strip()
    if not path:
        return None
    url = app.conf.broker_url
    key = (os.getpid(), url, path)
    version = _version(path)
    held = _routers.get(key)
    if held is not None and held[0] == version and version is not None:
        return held[1]
    try:
        router = Router(get_client(url), load_pools_file(path))
    except PoolsFileError as exc:
        if held is None:
            raise
        if held[0] != version:  # say it once per version of the broken file
            logger.error("pools file change refused, routing by the last good version: %s",
                         exc)
            _routers[key] = (version, held[1])
        return held[1]
    _routers[key] = (version, router)
    return router


def place(app: Any, spec: JobSpec, features: Mapping[str, float] | None,
          size_fields: SizeFields | None = None) -> JobSpec:
    """Route the spec when routing is on (a job that names its pool keeps it)."""
    router = router_for(app)
    return spec if router is None else router.route(spec, features, size_fields)
