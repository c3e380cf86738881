"""The monitor's pages: shells that their script fills from ``/emp/api`` and keeps live."""

from __future__ import annotations

import tornado.web

from webapp.monitor.handlers import MonitorHandler


class Page(MonitorHandler):
    """A page named by its template; ``tab`` marks it in the navigation bar."""

    template = ""
    tab = ""
    title = ""

    @tornado.web.authenticated
    async def get(self, *args: str) -> None:
        self.render(self.template, emp_tab=self.tab, title=self.title, args=args)


class MachinesPage(Page):
    template, tab, title = "emp_machines.html", "machines", "Machines"


class QueuePage(Page):
    template, tab, title = "emp_queue.html", "queue", "Queue"


class JobsPage(Page):
    template, tab, title = "emp_jobs.html", "jobs", "Jobs"


class JobPage(Page):
    template, tab, title = "emp_job.html", "jobs", "Job"


class SubmitPage(Page):
    template, tab, title = "emp_submit.html", "submit", "Submit a job"


class PoolsPage(Page):
    template, tab, title = "emp_pools.html", "pools", "Pools"


class WebhooksPage(Page):
    template, tab, title = "emp_webhooks.html", "webhooks", "Webhooks"
