"""Follow one job's events until it ends, with a progress bar."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from capability_router.cluster import block_ms
from capability_router.keys import Keys
from capability_router.states import TERMINAL_EVENTS, JobEvent, JobStatus
from emp_tasks.connection import get_client

#: Milliseconds each read of the job's events blocks (within the client's socket timeout).
BLOCK = block_ms(1000)
#: Seconds a job may wait for a worker before ``follow_job`` asks ``on_pending``.
PENDING_NOTE_SECONDS = 2.0


def follow_job(url: str, namespace: str, job_id: str, timeout: float = 600.0,
               console: Console | None = None,
               on_pending: Callable[[], str | None] | None = None,
               pending_after: float = PENDING_NOTE_SECONDS) -> tuple[str, dict[str, Any]]:
    """Show a progress bar for the job; returns (final status, last event data), or
    ("timeout", {}) once ``timeout`` seconds have passed (wall time: counting only the
    reads that found nothing, a job reporting progress never timed out).

    :param on_pending: asked once, when no worker has taken the job ``pending_after``
        seconds in; the text it returns, if any, is printed above the bar (why the job
        may wait: ``emp submit``'s note on what no live worker has)."""
    client = get_client(url)
    key = Keys(namespace).job_events(job_id)
    last_id = "0-0"
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               TimeElapsedColumn())
    started = time.monotonic()
    deadline = started + timeout
    taken = False
    with Progress(*columns, console=console or Console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"{job_id[:8]} pending", total=100)
        while (left := deadline - time.monotonic()) > 0:
            if on_pending is not None and not taken and \
                    time.monotonic() - started >= pending_after:
                note, on_pending = on_pending(), None
                if note:
                    bar.console.print(note, markup=False, highlight=False, soft_wrap=True)
            block = max(1, min(BLOCK, int(left * 1000)))
            reply = client.xread({key: last_id}, block=block, count=100)
            if not reply:
                continue
            for entry_id, fields in reply[0][1]:
                last_id = entry_id
                event, data = fields["event"], json.loads(fields["data"])
                taken = taken or event in (JobEvent.ASSIGNED, JobEvent.STARTED)
                if event == JobEvent.PROGRESS:
                    bar.update(task, completed=data.get("progress", 0),
                               description=f"{job_id[:8]} {data.get('message', 'running')}")
                elif event in (JobEvent.ASSIGNED, JobEvent.STARTED, JobEvent.RETRYING,
                               JobEvent.REQUEUED, JobEvent.REPLACED):
                    bar.update(task, description=f"{job_id[:8]} {event.replace('job_', '')}")
                elif event in TERMINAL_EVENTS:
                    status = TERMINAL_EVENTS[JobEvent(event)]
                    if status == JobStatus.COMPLETED:
                        bar.update(task, completed=100)
                    bar.update(task, description=f"{job_id[:8]} {status.value}")
                    return status.value, data
    return "timeout", {}
