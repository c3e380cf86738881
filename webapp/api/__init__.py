"""The API server (``emp api``, port 3331): REST, OpenAPI and WebSockets.

An app factory in Flask's manner: settings in, blueprints registered, the
shared backend and the event fan-out attached to the app.
"""

from __future__ import annotations

import logging
import threading

import redis
from flask import Flask

from capability_router.eviction import warn_if_evicting
from capability_router.functions import ensure_library
from webapp import outage
from webapp.auth import json_errors, warn_if_open
from webapp.backend import Backend
from webapp.serve import serve
from webapp.settings import API_PORT, WebSettings

logger = logging.getLogger(__name__)


def _start_machine_reaper(client: redis.Redis, api_outage: outage.Outage) -> None:
    """Mark silent machines gone and requeue their jobs even when no machine is left
    to do it (machines reap each other too; exactly one reaper wins each machine).
    Its failures for want of Redis are the API's outage (one line for the process)."""
    from machine.reaper import reap_periodically
    from machine.settings import MachineSettings

    machine = MachineSettings.from_env()
    threading.Thread(target=reap_periodically, name="emp-machine-reaper", daemon=True,
                     args=(client, machine.stale_seconds, machine.report_seconds,
                           threading.Event()),
                     kwargs={"outage": api_outage}).start()


def create_app(settings: WebSettings | None = None, reap_machines: bool = True) -> Flask:
    """Build the API app; ``settings`` default to the environment's. The app also
    runs the machine reaper unless ``reap_machines`` is False."""
    from webapp.api import (
        cors,
        events,
        jobs,
        limits,
        metrics,
        models,
        openapi,
        pools,
        sockets,
        system,
    )

    settings = settings or WebSettings.from_env()
    app = Flask(__name__)
    app.config["EMP_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # A socket message is bounded like a body: a larger one closes the socket (1009).
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": settings.ws_ping_seconds,
                                         "max_message_size": settings.max_body_bytes}
    app.json.sort_keys = False
    app.extensions["emp"] = Backend.connect(settings.redis_url)
    try:
        ensure_library(app.extensions["emp"].redis)
        limits.ensure_library(app.extensions["emp"].redis)
        warn_if_evicting(app.extensions["emp"].redis, "emp api")
    except redis.RedisError as exc:  # Redis not up yet: /health says so; the first call
        # loads it. One line: the outage is logged as such once a request meets it.
        logger.warning("could not load the function library at start (%s: %s)",
                       type(exc).__name__, exc)
    app.extensions["emp_events"] = events.EventHub(settings.redis_url)
    app.extensions["emp_limits"] = limits.Limits(app.extensions["emp"].redis,
                                                 settings.default_limits,
                                                 settings.customer_limits)
    api_outage = outage.Outage("emp api")
    if reap_machines:
        _start_machine_reaper(app.extensions["emp"].redis, api_outage)
    for blueprint in (jobs.blueprint, system.blueprint, models.blueprint, openapi.blueprint,
                      pools.blueprint):
        app.register_blueprint(blueprint)
    sockets.init_app(app)

    json_errors(app, settings.max_body_bytes)
    cors.init_app(app, settings.cors_origins)
    outage.init_flask(app, app.extensions["emp"].redis, api_outage)
    metrics.init_app(app)  # last: its timer goes before the gate's hook

    return app


def run(redis_url: str, host: str = "127.0.0.1", port: int = API_PORT) -> None:
    """Serve the API under gunicorn until stopped."""
    settings = WebSettings.from_env(redis_url=redis_url)
    logging.basicConfig(level=logging.INFO)
    warn_if_open(settings, "emp api")
    from webapp.api import metrics

    with metrics.multiprocess_dir():  # one scrape sums every worker's figures
        serve(lambda: create_app(settings), host, port, settings.threads,
              processes=settings.api_processes, connections=settings.api_connections,
              hooks={"child_exit": metrics.child_exit})
