"""Diagnosis only: a process started with this directory on PYTHONPATH and
``EMP_MEMTRACE_DIR`` set writes, every 30 s, a row of its RSS and the sizes of
the monitor's in-memory structures to ``sizes.jsonl`` there, and (unless
``EMP_MEMTRACE_FRAMES=0``) runs under tracemalloc and dumps a snapshot
(``snap-<seconds>.pickle``). ``bench/trace_monitor.py`` starts the production
day with only the monitor so, and compares two snapshots.

Python imports ``sitecustomize`` at start from the path; without the
variable this module does nothing. The structures are found by walking the
heap (``gc.get_objects``) and read through private attributes of Flower,
Celery and the event hub: a tool to find what grows, not an interface.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("EMP_MEMTRACE_DIR")
INTERVAL_SECONDS = 30.0

if _DIR:
    import gc
    import json
    import threading
    import time
    import tracemalloc
    from typing import Any

    _FRAMES = int(os.environ.get("EMP_MEMTRACE_FRAMES", "4"))
    if _FRAMES:
        tracemalloc.start(_FRAMES)

    def _rss_kb() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def _sizes(monitor: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if monitor is not None:
            state = monitor.events.state
            out["flower_tasks"] = len(state.tasks)
            out["flower_taskheap"] = len(state._taskheap)
            out["flower_workers"] = len(state.workers)
            engine = getattr(state, "search_engine", None)
            if engine is not None:
                out["search_docs"] = len(engine.documents)
                out["search_kwargs_postings"] = len(engine.kwargs_postings)
            hub = monitor.emp.hub
            subscriptions = list(hub._subscriptions)
            out["hub_subscriptions"] = len(subscriptions)
            out["hub_by_job"] = len(hub._by_job)
            out["hub_queues"] = [s.queue.qsize() for s in subscriptions]
            out["ioloop_ready"] = len(getattr(monitor.io_loop.asyncio_loop, "_ready", ()))
        objects = gc.get_objects()
        out["sse_outboxes"] = [o.outbox.qsize() for o in objects
                               if type(o).__name__ == "StreamSink"]
        out["gc_objects"] = len(objects)
        return out

    def _run() -> None:
        started = time.monotonic()
        monitor = None
        while True:
            time.sleep(INTERVAL_SECONDS)
            if monitor is None:
                monitor = next((o for o in gc.get_objects()
                                if type(o).__name__ == "EmpMonitor"), None)
            row: dict[str, Any] = {"t": round(time.monotonic() - started),
                                   "wall": time.time(), "rss_kb": _rss_kb()}
            try:
                row.update(_sizes(monitor))
            except Exception as exc:  # noqa: BLE001 - a diagnosis row, never the process
                row["sizes_error"] = repr(exc)
            if _FRAMES:
                current, peak = tracemalloc.get_traced_memory()
                row.update(traced_mb=round(current / 2**20, 1),
                           traced_peak_mb=round(peak / 2**20, 1),
                           tracemalloc_own_mb=round(tracemalloc.get_tracemalloc_memory()
                                                    / 2**20, 1))
                tracemalloc.take_snapshot().dump(
                    os.path.join(_DIR, f"snap-{row['t']:04d}.pickle"))
            with open(os.path.join(_DIR, "sizes.jsonl"), "a") as out:
                out.write(json.dumps(row) + "\n")

    threading.Thread(target=_run, name="emp-memtrace", daemon=True).start()
