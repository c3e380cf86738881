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

from capability_router.jobspec import JobSpec
from capability_router.pools import (
    POOLS_FILE_ENV,
    PoolsFile,
    PoolsFileWatch,
    unknown_services_warning,
)
from capability_router.routing import Router, SizeFields
from emp_tasks.connection import get_client

logger = logging.getLogger(__name__)

#: (pid, broker, path) -> (the pools file watched, the router built from its last version).
_routers: dict[tuple[int, str, str], tuple[PoolsFileWatch, Router]] = {}


def router_for(app: Any) -> Router | None:
    """The app's router, or None when routing is off (``EMP_POOLS_FILE`` unset).

    Raises PoolsFileError only when no good version of the file was ever loaded.
    """
    held = _watched_router(app)
    return held[1] if held else None


def pools_file_in_force(app: Any) -> tuple[PoolsFile | None, str | None]:
    """The pools file routing uses in this process, and why the file as it is now on disk
    was refused (None when it is the one in force): what ``/api/pools`` shows, so that it
    never says something routing does not do. (None, None) when routing is off."""
    held = _watched_router(app)
    return (held[1].pools_file, held[0].refusal) if held else (None, None)


def _watched_router(app: Any) -> tuple[PoolsFileWatch, Router] | None:
    path = os.environ.get(POOLS_FILE_ENV, "").strip()
    if not path:
        return None
    url = app.conf.broker_url
    key = (os.getpid(), url, path)
    held = _routers.get(key)
    watch = held[0] if held else PoolsFileWatch(path, "routing")
    pools_file = watch.current()
    if held is not None and held[1].pools_file is pools_file:
        return held
    _warn_unknown_services(app, pools_file)  # a new version of the file: once each
    _routers[key] = (watch, Router(get_client(url), pools_file))
    return _routers[key]


#: Unknown-service warnings already said by this process, or by the one it was forked
#: from: ``emp api``'s master says the warning at its start (``unknown_services_unsaid``),
#: so its gunicorn workers do not say it again, each at its first routing.
_said: set[str] = set()


def _unsaid(warning: str | None) -> str | None:
    """``warning`` the first time it is due (recorded as said); None when there is none
    or it was said already."""
    if warning is None or warning in _said:
        return None
    _said.add(warning)
    return warning


def unknown_services_unsaid(app: Any, pools_file: PoolsFile) -> str | None:
    """``unknown_services_warning`` of ``pools_file`` for the job types of ``app``, the
    first time it is due in this process (and the processes it forks after); None when the
    file names no unknown service, or the same warning was said already."""
    from emp_tasks.producer import services

    return _unsaid(unknown_services_warning(pools_file, services(app)))


def unknown_services_at_start(broker_url: str, pools_file: PoolsFile) -> str | None:
    """``unknown_services_unsaid`` for ``emp api``'s master, before gunicorn forks its
    workers: they inherit it as said. The job types are looked up in a forked child, as
    importing the app's task modules imports urllib3 (the HTTP connectors), which each
    gevent worker must patch before it is imported (else gevent warns it is not patched,
    and an HTTPS call in a worker would block its loop)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: look, write, leave without running the parent's exit hooks
        # (one that fails says nothing: the workers then fail at the same imports, saying why)
        status = 1
        try:
            os.close(read_end)
            from emp_tasks.app import create_app
            from emp_tasks.producer import services

            warning = unknown_services_warning(pools_file, services(create_app(broker_url)))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write((warning or "").encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        warning = pipe.read().decode()
    os.waitpid(pid, 0)
    return _unsaid(warning or None)


def _warn_unknown_services(app: Any, pools_file: PoolsFile) -> None:
    """Log services the file routing uses names that no job type of ``app`` has (a typo,
    such a pool gets no job): once per wording, so once for a file and again for an edit
    that names other unknown services, not once per process that routes."""
    warning = unknown_services_unsaid(app, pools_file)
    if warning:
        logger.warning("routing: %s", warning)


def place(app: Any, spec: JobSpec, features: Mapping[str, float] | None,
          size_fields: SizeFields | None = None) -> JobSpec:
    """Route the spec when routing is on (a job that names its pool keeps it)."""
    router = router_for(app)
    return spec if router is None else router.route(spec, features, size_fields)
