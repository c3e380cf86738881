"""The monitor pages' JSON reads and actions, under ``/emp/api/``.

Reads are GETs; actions are POSTs, refused in read-only mode. Each answers
``{"success": true, ...}`` or an HTTP error with ``{"success": false,
"error": "<what is wrong>"}``; a refused action changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

import prometheus_client
import tornado.web
from flower.views.monitor import Metrics as FlowerMetrics
from tornado.ioloop import IOLoop

from capability_router.env import SettingError, flag_value
from capability_router.errors import JobNotFound
from capability_router.keys import DEFAULT_NAMESPACE, check_namespace
from capability_router.pool_metrics import UnknownWindow, parse_window, pool_series
from capability_router.pool_view import known_pools, pools_view
from emp_tasks import producer
from webapp.api.validation import Invalid
from webapp.monitor import jobs, metrics
from webapp.monitor.handlers import ActionHandler, JsonHandler, MonitorHandler
from webapp.monitor.machines import machines_view, page_view
from webapp.monitor.queue import queue_summary
from webapp.monitor.webhooks import reconnect, webhooks_view
from webapp.query import repeated


def single_argument(handler: tornado.web.RequestHandler, name: str,
                    default: str | None = None) -> str | None:
    """Query parameter ``name`` (``default`` when absent). Given more than once, a 400 in
    the REST API's words (``webapp.query.repeated``): Tornado's ``get_query_argument``
    takes the last (``?status=pending&status=failed`` listed the failed jobs alone)."""
    given = handler.get_query_arguments(name)
    if len(given) > 1:
        raise tornado.web.HTTPError(400, repeated(name, len(given)))
    return given[0] if given else default


class MachinesData(JsonHandler):
    """Every machine and worker (scripts); ``?view=page``: what the Machines page shows,
    with an ETag that stays the same while the fleet does (``machines.page_view``)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        view = single_argument(self, "view", "full")
        if view not in ("full", "page"):
            raise tornado.web.HTTPError(400, f"view must be 'full' or 'page', not {view!r}")
        machines = await self.blocking(machines_view, self.state.backend.redis)
        if view == "page":
            self.send({"success": True, **page_view(machines)})
            return
        self.send({"success": True, "machines": machines, "at": int(time.time() * 1000)})


class QueueData(JsonHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        summary = await self.blocking(queue_summary, self.state.backend.redis)
        self.send({"success": True, **summary, "at": int(time.time() * 1000)})


def _known_pools(client: object) -> list[str]:
    return known_pools(client, metrics.pools_file())


def _pools_page(client: object) -> dict[str, Any]:
    """The pools (``known_pools``' list and order: the file's, then default, then the
    others used by name), and why each pool's jobs wait when they do (``waiting_reason``
    of the view ``/api/pools`` shows); both from one read of that view."""
    rows = pools_view(client, metrics.pools_file(), every_used=True)
    configured = [row["name"] for row in rows if row["configured"]]
    used = sorted((row["name"] for row in rows if not row["configured"]),
                  key=lambda name: (name != DEFAULT_NAMESPACE, name))
    waiting = {row["name"]: row["waiting_reason"] for row in rows if row["waiting_reason"]}
    return {"pools": configured + used, "waiting": waiting}


class PoolsData(JsonHandler):
    """The pools the Pools page offers: the pools file's, then every pool ever used; and
    ``waiting``, pool -> why its unfinished jobs wait (no live worker serves it)."""

    @tornado.web.authenticated
    async def get(self) -> None:
        pools = await self.blocking(_pools_page, self.state.backend.redis)
        self.send({"success": True, **pools})


class PoolMetricsData(JsonHandler):
    """One pool's series, as ``/api/pools/<name>/metrics`` serves them."""

    @tornado.web.authenticated
    async def get(self, pool: str) -> None:
        window = single_argument(self, "window", "1h") or ""
        try:
            check_namespace(pool)
            parse_window(window)
        except (ValueError, UnknownWindow) as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        client = self.state.backend.redis
        known = await self.blocking(_known_pools, client)
        if pool not in known:
            raise tornado.web.HTTPError(404, f"no pool {pool!r}: known pools are "
                                             f"{', '.join(known)}")
        series = await self.blocking(pool_series, client, pool, window)
        self.send({"success": True, **series})


class JobsData(JsonHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        args = {name: single_argument(self, name) for name in self.request.query_arguments}
        try:
            query = jobs.parse_query(args)
        except jobs.BadQuery as exc:
            raise tornado.web.HTTPError(400, str(exc)) from None
        page = await self.blocking(jobs.list_jobs, self.state.backend.redis, query)
        self.send({"success": True, **page})


class SubmitJob(ActionHandler):
    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.body_json()
        try:
            job_id, pool, warnings = await self.blocking(jobs.submit, body, self.state.backend)
        except Invalid as exc:
            raise tornado.web.HTTPError(exc.status, str(exc)) from None
        # ``warnings`` as POST /api/jobs's 201: only when there are some.
        self.send({"success": True, "job_id": job_id, "pool": pool,
                   **({"warnings": warnings} if warnings else {})}, 201)


class JobData(JsonHandler):
    @tornado.web.authenticated
    async def get(self, job_id: str) -> None:
        try:
            detail = await self.blocking(jobs.job_detail, self.state.backend.celery, job_id,
                                         self.state.backend.redis)
        except JobNotFound:
            raise tornado.web.HTTPError(404, f"no job {job_id!r}") from None
        self.send({"success": True, **detail})


def query_flag(handler: tornado.web.RequestHandler, name: str) -> bool:
    """Query parameter ``name`` as on/off, in the words an on/off setting takes
    (``env.flag_value``: ``?terminate=maybe`` silently meant off), off when absent or
    empty; another word is a 400 naming the parameter and the words. Given more than
    once, a 400 (``single_argument``): Tornado took the last of
    ``?terminate=no&terminate=yes``."""
    try:
        return flag_value(name, single_argument(handler, name) or "")
    except SettingError as exc:
        raise tornado.web.HTTPError(400, str(exc)) from None


class JobAction(ActionHandler):
    """``POST /emp/api/jobs/<id>/<cancel|retry|requeue>``; 409 naming the status if refused."""

    @tornado.web.authenticated
    async def post(self, job_id: str, action: str) -> None:
        do = {"cancel": jobs.cancel, "retry": jobs.retry, "requeue": jobs.requeue}[action]
        kwargs = {}
        if action == "cancel":
            kwargs["terminate"] = query_flag(self, "terminate")
        try:
            # a cancel stores REVOKED in the result backend, which only that app has
            app = self.state.backend.cancelling if action == "cancel" else self.state.backend.celery
            status = await self.blocking(do, app, job_id, **kwargs)
        except JobNotFound:
            raise tornado.web.HTTPError(404, f"no job {job_id!r}") from None
        except jobs.Refused as exc:
            raise tornado.web.HTTPError(409, str(exc)) from None
        self.send({"success": True, "job_id": job_id, "status": str(status)})


class Services(JsonHandler):
    """The job types the submit form offers."""

    @tornado.web.authenticated
    async def get(self) -> None:
        names = await self.blocking(lambda: sorted(producer.services(self.state.backend.celery)))
        self.send({"success": True, "services": names})


class WebhooksData(JsonHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        view = await self.blocking(webhooks_view, self.state.backend.redis)
        self.send({"success": True, **view})


class ReconnectWebhook(ActionHandler):
    @tornado.web.authenticated
    async def post(self, hook_id: str) -> None:
        if not await self.blocking(reconnect, self.state.backend.redis, hook_id):
            raise tornado.web.HTTPError(404, f"no webhook {hook_id!r}")
        self.send({"success": True, "webhook_id": hook_id})


class Metrics(MonitorHandler, FlowerMetrics):
    """Flower's ``/metrics`` (its Celery figures and the queue's), behind the monitor's auth.

    Flower serves it open whatever its auth options; queue depths, customers' classes
    and worker counts are not for anyone who can reach the port. A scraper sends the
    basic-auth credentials, or the operator opens it on purpose (``EMP_METRICS_PUBLIC=1``).
    An OAuth login cannot be followed by a scraper: it gets 403, not a redirect.

    The exposition is built on the executor, as the monitor's other Redis reads are: the
    queue collector reads Redis, and on the event loop a slow Redis (up to the collector's
    5 s timeout) stalled every page, action and live stream of the monitor per scrape.
    """

    async def get(self) -> None:
        if not self.state.metrics_public and not self.current_user:  # basic auth: 401
            raise tornado.web.HTTPError(403, "metrics need the monitor's login (or set "
                                             "EMP_METRICS_PUBLIC=1 for scrapers)")
        self.application.purge_offline_worker_metrics()  # reads Flower's state: on the loop
        text = await IOLoop.current().run_in_executor(None, prometheus_client.generate_latest)
        self.write(text)
        self.set_header("Content-Type", "text/plain")  # as Flower's


class Health(JsonHandler):
    """Open, like Flower's ``/healthcheck``: the process answers and Redis does."""

    async def get(self) -> None:
        await self.blocking(self.state.backend.redis.ping)
        self.send({"status": "ok", "service": "emp-monitor"})
