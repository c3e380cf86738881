"""Versioned Redis Function libraries: the queue's, the webhooks' and the limits'.

Each Lua file declares ``local VERSION = '<release>'``; the source is loaded with
that line stamped ``'<release>-<digest of the text>'``, so any edit is a new
version. A process loads its library when a server holds another version, but
never over a newer release: machines of two releases run side by side during a
rolling upgrade, and an old one (re)starting used to put its library back over
the new one, which the new processes then loaded again, and so on. A release only
adds to a library (new functions, arguments appended), so an old process works
with a newer one; it is told so once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from importlib import resources
from typing import Any

import redis

from capability_router.cluster import is_cluster_client, primaries
from capability_router.errors import LibraryError

logger = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^local VERSION = '([^']+)'", re.M)

#: (library, newer version) pairs this process has reported.
_reported: set[tuple[str, str]] = set()


def stamped_source(package: str, resource: str) -> str:
    """The Lua source ``resource`` of ``package``, its VERSION stamped with a digest."""
    text = resources.files(package).joinpath(resource).read_text()
    match = VERSION_RE.search(text)
    if not match:
        raise LibraryError(f"{resource} declares no VERSION")
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    return text.replace(match[0], f"local VERSION = '{match[1]}-{digest}'", 1)


def source_version(source: str) -> str:
    """The stamped VERSION of a source."""
    return VERSION_RE.search(source)[1]


def release_number(version: str | None) -> int | None:
    """The release part of a stamped VERSION (``'16-<digest>'`` -> 16); None if none."""
    head = (version or "").partition("-")[0]
    return int(head) if head.isdigit() else None


def cluster_primaries(client: Any) -> list[Any]:
    """The masters of a cluster client; empty for a plain client."""
    return primaries(client) if is_cluster_client(client) else []


def loaded_versions(client: redis.Redis, function: str = "emp_version") -> list[str | None]:
    """What the keyless version ``function`` of a library answers on each master (one
    entry on a plain server; None where the library is missing).

    A keyless FCALL goes to any one node of a cluster, which says nothing of
    the master of the slot a later call needs: ask every master.

    On a cluster, ``FUNCTION LOAD`` goes to every master (redis-py's default
    for it) and replicas get it by replication, so a promoted replica has it.
    """
    targets = [{"target_nodes": node} for node in cluster_primaries(client)] or [{}]
    versions = []
    for target in targets:
        try:
            loaded = client.execute_command("FCALL_RO", function, 0, **target)
        except redis.ResponseError:
            loaded = None
        versions.append(loaded.decode() if isinstance(loaded, bytes) else loaded)
    return versions


def load_unless_newer(client: redis.Redis, source: str, version_function: str) -> bool:
    """Load ``source`` unless every master has its version, or some master has a newer
    release (left as it is, reported once); True if loaded."""
    mine = source_version(source)
    loaded = loaded_versions(client, version_function)
    if all(v == mine for v in loaded):
        return False
    newer = [v for v in loaded if (release_number(v) or 0) > (release_number(mine) or 0)]
    if newer:
        if (version_function, newer[0]) not in _reported:
            _reported.add((version_function, newer[0]))
            logger.warning("Redis has a newer function library (%s says %s) than this "
                           "process's (%s): left as it is; upgrade this machine",
                           version_function, newer[0], mine)
        return False
    try:
        client.function_load(source, replace=True)
    except redis.ResponseError as exc:
        raise LibraryError(f"cannot load a function library ({version_function}): {exc}") \
            from exc
    return True
