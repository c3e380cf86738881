"""Run ``emp intelligence`` in this process until SIGTERM or SIGINT (what the CLI calls).

The service itself is ``capability_router.prediction.service``; this module
only wires the Redis client, the pools file and the signals. A clean stop
gives the leader lease up, so a standby instance leads at its next tick.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from capability_router.pools import POOLS_FILE_ENV, PoolsFileWatch
from capability_router.prediction.service import IntelligenceService, IntelligenceSettings
from emp_tasks.connection import get_client

logger = logging.getLogger("emp.intelligence")


def run_intelligence(redis_url: str, interval_seconds: float | None = None,
                     lease_seconds: float | None = None, instance: str | None = None) -> None:
    """Build the service from the environment (EmpError names a bad setting) and run it."""
    settings = IntelligenceSettings.from_env(interval_seconds=interval_seconds,
                                             lease_seconds=lease_seconds, instance=instance)
    path = os.environ.get(POOLS_FILE_ENV, "").strip()
    # Re-read at each tick it changed; PoolsFileError here: refused before anything runs.
    watch = PoolsFileWatch(path, "emp intelligence") if path else None
    pools_file = watch.current() if watch else None
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    service = IntelligenceService(get_client(redis_url), pools_file, settings, watch)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logger.info("intelligence: signal %d, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service.run(stop)
