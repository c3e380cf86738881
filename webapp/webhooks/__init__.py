"""The webhook service (``emp webhooks``, port 3332): registrations and signed, durable delivery.

Reads the event log (Redis Streams) with a consumer group, files one
delivery per matching hook in a per-hook FIFO queue in Redis, and sends
each queue's head with retries, backoff and a disconnect/reconnect cycle
(``dispatcher.py``), signed the original's way and the Standard Webhooks
way (``signing.py``), only to addresses the SSRF guard allows
(``addresses.py``). Every delivery state lives in Redis, so a restarted
service resumes where it stopped. Tunables: ``config.py``.
"""

from __future__ import annotations

import logging

from flask import Flask

from webapp import outage
from webapp.auth import json_errors, warn_if_open
from webapp.serve import serve
from webapp.settings import WEBHOOK_PORT, WebSettings
from webapp.webhooks.config import WebhookConfig

logger = logging.getLogger(__name__)


def create_app(settings: WebSettings | None = None, start_delivery: bool = True,
               config: WebhookConfig | None = None) -> Flask:
    """Build the webhook app; ``settings`` and ``config`` (a WebhookConfig) default to
    the environment's. ``start_delivery=False`` serves the API without the delivery
    threads (tests of the API alone)."""
    from emp_tasks.connection import get_client
    from webapp.webhooks import metrics, routes
    from webapp.webhooks.service import DeliveryService

    settings = settings or WebSettings.from_env()
    config = config or WebhookConfig.from_env()
    app = Flask(__name__)
    app.config["EMP_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    client = get_client(settings.redis_url)
    delivery = DeliveryService(client, config)
    app.extensions["emp_webhooks"] = delivery
    app.register_blueprint(routes.bp)
    app.register_blueprint(metrics.blueprint)
    if start_delivery:
        delivery.start()

    json_errors(app, settings.max_body_bytes)
    outage.init_flask(app, client, delivery.outage)

    return app


def run(redis_url: str, host: str = "127.0.0.1", port: int = WEBHOOK_PORT) -> None:
    """Serve the webhook service under gunicorn until stopped."""
    settings = WebSettings.from_env(redis_url=redis_url)
    config = WebhookConfig.from_env()  # malformed EMP_WEBHOOK_* fail here, before serving
    logging.basicConfig(level=logging.INFO)
    warn_if_open(settings, "emp webhooks")
    if config.allow_private:
        logger.warning("EMP_WEBHOOK_ALLOW_PRIVATE is set: webhooks may reach private, "
                       "loopback and link-local addresses")
    serve(lambda: create_app(settings, config=config), host, port, settings.threads)
