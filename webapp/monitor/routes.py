"""The monitor's URL table: pages, their JSON and actions, the live stream, static files."""

from __future__ import annotations

from typing import Any

from tornado.web import RedirectHandler, StaticFileHandler, url

from webapp.monitor import api, pages
from webapp.monitor.live import EventStream
from webapp.monitor.state import STATIC_DIR

JOB_ID = r"([^/]+)"


def handlers() -> list[Any]:
    """Routes added in front of Flower's, which keeps its own pages and API."""
    return [
        url(r"/machines", pages.MachinesPage, name="emp_machines"),
        url(r"/queue", pages.QueuePage, name="emp_queue"),
        url(r"/jobs", pages.JobsPage, name="emp_jobs"),
        url(rf"/jobs/{JOB_ID}", pages.JobPage, name="emp_job"),
        url(r"/submit", pages.SubmitPage, name="emp_submit"),
        url(r"/webhooks", pages.WebhooksPage, name="emp_webhooks"),
        url(r"/pools", pages.PoolsPage, name="emp_pools"),
        # Flower's broker page counts list lengths; this transport's queue is the Queue view.
        url(r"/broker", RedirectHandler, {"url": "queue"}),
        (r"/emp/api/machines", api.MachinesData),
        (r"/emp/api/queue", api.QueueData),
        (r"/emp/api/jobs", api.JobsData),
        (r"/emp/api/submit", api.SubmitJob),
        (rf"/emp/api/jobs/{JOB_ID}", api.JobData),
        (rf"/emp/api/jobs/{JOB_ID}/(cancel|retry|requeue)", api.JobAction),
        (r"/emp/api/services", api.Services),
        (r"/emp/api/pools", api.PoolsData),
        (r"/emp/api/pools/([^/]+)/metrics", api.PoolMetricsData),
        (r"/emp/api/webhooks", api.WebhooksData),
        (r"/emp/api/webhooks/([^/]+)/reconnect", api.ReconnectWebhook),
        (r"/emp/events", EventStream),
        (r"/metrics", api.Metrics),  # in front of Flower's, which ignores its auth options
        # url(), not a tuple: Flower's --url_prefix rewrite keeps only a url()'s kwargs.
        url(r"/emp/static/(.*)", StaticFileHandler, {"path": STATIC_DIR}),
    ]


def root_handlers() -> list[Any]:
    """Routes that stay at the root under ``--url_prefix``: a supervisor or load balancer
    checks the process's port directly."""
    return [(r"/health", api.Health)]
