"""The monitor's pages: shells that their script fills from ``/emp/api`` and keeps live."""

from __future__ import annotations

import tornado.web

from capability_router.errors import JobNotFound
from emp_tasks import producer
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
    """A job's page; 404 saying so for an id no job has. Before, it answered 200 with the
    page's empty shell (disabled buttons), the 404 only in the browser's console."""

    template, tab, title = "emp_job.html", "jobs", "Job"

    @tornado.web.authenticated
    async def get(self, job_id: str) -> None:
        try:
            await self.blocking(producer.get_job, job_id, app=self.state.backend.celery)
        except JobNotFound:
            self.set_status(404)
            self.render("emp_job_missing.html", emp_tab=self.tab, title="No such job",
                        args=(job_id,))
            return
        await super().get(job_id)


class SubmitPage(Page):
    template, tab, title = "emp_submit.html", "submit", "Submit a job"


class PoolsPage(Page):
    template, tab, title = "emp_pools.html", "pools", "Pools"


class WebhooksPage(Page):
    template, tab, title = "emp_webhooks.html", "webhooks", "Webhooks"
