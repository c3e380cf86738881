"""The machine's Prometheus metrics: ``/status`` read again, as series.

``MachineCollector`` calls the same ``status()`` the ``/status`` route answers
with, at every scrape, so the two never disagree and nothing is kept twice.
Counters are the figures that only grow while the machine runs (restarts, jobs,
downloads, log shipping); the rest are gauges. Labels are the machine's program
names (its plan: a few per GPU), job outcomes and shipping results: nothing per
job, model or request. Series (``program`` is ``simulation-0``, ``comfyui-server-0``...):

* ``emp_machine_uptime_seconds``
* ``emp_machine_program_up{program,role}``: 1 while supervisor has it RUNNING.
* ``emp_machine_program_restarts_total{program}``: its process started again
  (crash and respawn, revive, ``/restart``).
* ``emp_machine_worker_registered{program}``: its current process registered in Redis.
* ``emp_machine_service_healthy{program}``: a registered worker's service passes its
  health check (0: ComfyUI unreachable or restarting; the worker claims nothing).
* ``emp_machine_worker_running_jobs{program}``: jobs the worker holds now.
* ``emp_machine_jobs_total{program,outcome}``: job attempts the worker ran, completed,
  failed or cancelled (a retried job counts each attempt).
* ``emp_machine_model_cache_bytes``, ``emp_machine_model_cache_budget_bytes``: with a
  model cache (``EMP_MODEL_CACHE_DIR``).
* ``emp_machine_model_downloads_total{outcome}`` (completed, failed),
  ``emp_machine_model_download_bytes_total``, ``emp_machine_model_download_seconds_total``.
* ``emp_machine_log_records_total{result}``: log shipping, records shipped, dropped
  (queue full), rejected (by the receiver); ``emp_machine_log_shipping_failures_total``.
* ``emp_machine_supervisor_output_dropped_bytes_total``: supervisord's own output
  the machine could not write.
* ``emp_machine_run_dir_free_bytes``, ``emp_machine_run_dir_size_bytes``: the file system
  of the run directory (logs, counters).

A scrape while supervisord does not answer fails like ``/status`` does (503):
Prometheus records the target down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from machine.counters import JOB_OUTCOMES

SHIPPING_RESULTS = ("shipped", "dropped", "rejected")


def _gauge(name: str, doc: str, value: float | None = None,
           labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels) if labels else None)
    if value is not None and not labels:
        family.add_metric([], value)
    return family


def _counter(name: str, doc: str, value: float | None = None,
             labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels) if labels else None)
    if value is not None and not labels:
        family.add_metric([], value)
    return family


def _programs(status: dict[str, Any]) -> Iterator[Metric]:
    views = [*status["workers"], *status["services"]]
    up = _gauge("emp_machine_program_up", "1 while supervisor has the program RUNNING.",
                labels=("program", "role"))
    restarts = _counter("emp_machine_program_restarts", "Times the program's process was "
                        "started again since the machine started.", labels=("program",))
    for view in views:
        up.add_metric([view["name"], view["role"]], 1 if view["state"] == "RUNNING" else 0)
        restarts.add_metric([view["name"]], view.get("restarts", 0))
    registered = _gauge("emp_machine_worker_registered",
                        "1 when the worker's current process registered in Redis.",
                        labels=("program",))
    healthy = _gauge("emp_machine_service_healthy", "1 when a registered worker's service "
                     "passes its health check; 0: it claims nothing.", labels=("program",))
    running = _gauge("emp_machine_worker_running_jobs", "Jobs the worker holds now.",
                     labels=("program",))
    jobs = _counter("emp_machine_jobs", "Job attempts the worker ran, by outcome.",
                    labels=("program", "outcome"))
    for view in status["workers"]:
        name = view["name"]
        registered.add_metric([name], 1 if view.get("registered") else 0)
        if view.get("registered"):
            healthy.add_metric([name], 0 if view.get("status") == "service_unhealthy" else 1)
        running.add_metric([name], len(view.get("jobs") or []))
        for outcome in JOB_OUTCOMES:
            jobs.add_metric([name, outcome], (view.get("job_counts") or {}).get(outcome, 0))
    yield from (up, restarts, registered, healthy, running, jobs)


def _models(models: dict[str, Any]) -> Iterator[Metric]:
    if models.get("enabled"):
        yield _gauge("emp_machine_model_cache_bytes", "Bytes of the model files in the "
                     "machine's cache.", models.get("used_bytes") or 0)
        if models.get("budget_bytes") is not None:
            yield _gauge("emp_machine_model_cache_budget_bytes",
                         "The model cache's byte budget.", models["budget_bytes"])
    downloads = models.get("downloads") or {}
    count = _counter("emp_machine_model_downloads", "Model downloads run on the machine, "
                     "by outcome.", labels=("outcome",))
    for outcome in ("completed", "failed"):
        count.add_metric([outcome], downloads.get(outcome, 0))
    yield count
    yield _counter("emp_machine_model_download_bytes", "Bytes model downloads fetched.",
                   downloads.get("bytes", 0))
    yield _counter("emp_machine_model_download_seconds", "Seconds spent in model downloads.",
                   downloads.get("seconds", 0))


def _logs(status: dict[str, Any]) -> Iterator[Metric]:
    shipping = status.get("log_shipping") or {}
    records = _counter("emp_machine_log_records", "Log records of the machine's processes "
                       "by shipping result: shipped, dropped (queue full), rejected.",
                       labels=("result",))
    for result in SHIPPING_RESULTS:
        records.add_metric([result], shipping.get(result) or 0)
    yield records
    yield _counter("emp_machine_log_shipping_failures", "Failed sends to the log receiver.",
                   shipping.get("failures") or 0)
    yield _counter("emp_machine_supervisor_output_dropped_bytes", "Bytes of supervisord's "
                   "output the machine could not write.",
                   (status.get("supervisor") or {}).get("log_dropped_bytes") or 0)


def _disk(disk: dict[str, Any]) -> Iterator[Metric]:
    if disk.get("free_bytes") is not None:
        yield _gauge("emp_machine_run_dir_free_bytes", "Free bytes of the run directory's "
                     "file system.", disk["free_bytes"])
        yield _gauge("emp_machine_run_dir_size_bytes", "Size of the run directory's file "
                     "system, bytes.", disk["total_bytes"])


class MachineCollector:
    """Series made from ``status()`` at every scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        yield _gauge("emp_machine_uptime_seconds", "Seconds since the machine started.",
                     status["uptime_seconds"])
        yield from _programs(status)
        yield from _models(status.get("models") or {})
        yield from _logs(status)
        yield from _disk(status.get("disk") or {})


def registry(status: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry of the machine's series only (apps built in one process do not collide)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(MachineCollector(status))
    return found
