"""Disk the machine uses: free space of its run directory, the model cache's bytes and budget.

Read at ``/status`` (and so ``/metrics``) time from the file system: the machine
process never opens the cache (its workers do, and would create its folders), it
only sums the files the cache installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from machine.models import cache
from machine.models.manager import budget_bytes_from_env


def disk(path: Path) -> dict[str, Any]:
    """Free and total bytes of the file system holding ``path`` (None when unreadable)."""
    try:
        found = shutil.disk_usage(path)
    except OSError:
        return {"path": str(path), "free_bytes": None, "total_bytes": None}
    return {"path": str(path), "free_bytes": found.free, "total_bytes": found.total}


def model_cache(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, Any]:
    """The model cache of ``EMP_MODEL_CACHE_DIR``: bytes used, budget; ``enabled`` False
    when the machine has none."""
    root = (os.environ if environ is None else environ).get("EMP_MODEL_CACHE_DIR")
    if not root:
        return {"enabled": False}
    try:
        budget: int | None = budget_bytes_from_env()
    except ValueError:  # a bad EMP_MODEL_CACHE_GB: the workers refuse to start and say so
        budget = None
    return {"enabled": True, "dir": root, "used_bytes": cache.used_bytes(root),
            "budget_bytes": budget}
