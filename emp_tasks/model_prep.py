"""Cold start: a job's models onto the machine before the job starts, visibly.

Before ``emp_start`` (the job still ``assigned``), a task that
``prepares_models`` asks the machine's model manager (``machine.models``;
only when ``EMP_MODEL_CACHE_DIR`` is set) for every model of its class
(``requirements.models``) that the catalog knows. Progress goes to the job
record's ``preparing`` field and a ``job_preparing`` event (``emp_preparing``),
at most every ``EMP_PREPARING_REPORT_SECONDS`` (0.5) plus each change of model
or tier; a cancel is noticed at the next report. The models stay held (not
evictable) until the run ends. A failure to get them is a connector error:
retried or failed by its type like any other (a bad checksum: ``model``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from capability_router.env import env_float
from capability_router.errors import InvalidJob, JobCancelled
from capability_router.requirements import normalize_requirements
from emp_tasks import tracing
from emp_tasks.context import JobContext
from machine.connectors.base import ConnectorError
from machine.models import Preparing, manager_from_env


def job_models(requirements: Any, service: str) -> list[str]:
    """The models a job's requirements name for its service (its class's
    ``pos["models.<service>"]``); [] when they name none or cannot be read."""
    try:
        pos = normalize_requirements(json_requirements(requirements), service)["pos"]
    except InvalidJob:
        return []
    models = pos.get(f"models.{service}") or []
    return [models] if isinstance(models, str) else list(models)


def json_requirements(text: Any) -> dict[str, Any]:
    """A record's ``requirements`` text as a dict ({} when absent or unreadable)."""
    try:
        value = json.loads(text) if isinstance(text, (str, bytes)) else text
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class PreparingReporter:
    """Sends ``Preparing`` reports to the record, throttled; raises JobCancelled when
    the record refuses them (cancelled, or the attempt was taken away).

    :param span: the ``preparing`` span (tracing on): each change of model or tier is
        an event on it. Held here, since reports may come from the
        thread that downloads, outside the span's context.
    """

    def __init__(self, context: JobContext, every_seconds: float | None = None,
                 span: Any = None) -> None:
        self.context = context
        self.span = span
        self.every = every_seconds if every_seconds is not None else env_float(
            "EMP_PREPARING_REPORT_SECONDS", 0.5)
        self._last_at = float("-inf")
        self._last: Preparing | None = None

    def __call__(self, report: Preparing) -> None:
        now = time.monotonic()
        last = self._last
        changed = last is None or (last.model, last.tier) != (report.model, report.tier)
        finished = report.bytes_done >= report.bytes_total
        if not (changed or finished or now - self._last_at >= self.every):
            return
        if last is not None and last == report:
            return
        if self.span is not None and changed:  # "remote": downloading; "disk": on disk
            self.span.add_event(f"model {report.tier}", {
                "emp.model": report.model, "emp.model_bytes": report.bytes_total})
        self._last_at, self._last = now, report
        outcome = self.context.functions.preparing(self.context.job_id, self.context.attempt,
                                                   report.as_dict())
        if outcome != "ok":
            raise JobCancelled(self.context.job_id)


@contextmanager
def models_ready(task: Any, context: JobContext) -> Iterator[dict[str, Path]]:
    """The job's catalog models on disk and held while the block runs ({} when none)."""
    functions = context.functions
    manager = manager_from_env(functions.client)
    if manager is None:
        yield {}
        return
    requirements = functions.client.hget(functions.keys.job(context.job_id), "requirements")
    entries = manager.catalog_entries(job_models(requirements, task.service_name))
    if not entries:
        yield {}
        return
    span = tracing.current_span()
    if span is not None:
        span.set_attribute("emp.models", [entry.name for entry in entries])
    held = ExitStack()
    try:
        paths = held.enter_context(manager.ready(entries, PreparingReporter(context, span=span)))
    except ConnectorError as exc:  # a download, or the cache's folder (a disk error)
        held.close()
        from emp_tasks.connector_jobs import retry_or_fail

        raise retry_or_fail(task, exc) from None
    with held:
        yield paths
