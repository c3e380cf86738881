"""Bearer-token authentication shared by the API, its WebSockets and the webhook service.

A token maps to a customer id (that customer's jobs only) or to an admin
(everything). With no token configured the services run open, and say so.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import current_app, g, jsonify, request

from webapp.query import single
from webapp.settings import WebSettings

logger = logging.getLogger(__name__)

OPEN_WARNING = (
    "NO API TOKENS CONFIGURED: anyone who can reach this port can submit, read and "
    "cancel every job. Set EMP_API_TOKENS and/or EMP_ADMIN_TOKENS."
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an admin, or one customer."""

    customer_id: str | None = None
    admin: bool = False

    def may_see(self, job_customer: str | None) -> bool:
        return self.admin or (job_customer or None) == self.customer_id

    @property
    def id_scope(self) -> str | None:
        """The customer whose job ids this caller names and sees (``webapp.job_ids``);
        None for an admin, who names jobs by their stored ids."""
        return None if self.admin else self.customer_id


def _find(settings: WebSettings, token: str) -> Principal | None:
    # compare_digest on every candidate: no early exit that leaks which prefix matched
    found: Principal | None = None
    for admin in settings.admin_tokens:
        if hmac.compare_digest(admin.encode(), token.encode()):
            found = Principal(admin=True)
    for candidate, customer in settings.customer_tokens.items():
        if hmac.compare_digest(candidate.encode(), token.encode()):
            found = Principal(customer_id=customer)
    return found


def authenticate(settings: WebSettings, authorization: str | None,
                 query_token: str | None = None) -> Principal | None:
    """The principal of a request's ``Authorization: Bearer`` header (or ``?token=``
    for WebSocket clients that cannot set headers); None when refused."""
    if settings.open:
        return Principal(admin=True)
    token = query_token
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        token = value.strip()
    if not token:
        return None
    return _find(settings, token)


def error(status: int, message: str, **extra: Any) -> Any:
    """The JSON error body every endpoint uses: ``{success: false, error}``."""
    response = jsonify({"success": False, "error": message, **extra})
    response.status_code = status
    return response


def json_errors(app: Any, max_body_bytes: int) -> None:
    """Every error of ``app`` as ``{success: false, error}``; unexpected ones logged."""
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # noqa: ANN202 - Flask response
        if exc.code == 413:
            return error(413, f"request body over the {max_body_bytes}-byte limit")
        response = error(exc.code or 500, exc.description or exc.name)
        for name, value in exc.get_headers():  # Allow on a 405, WWW-Authenticate, ...
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # noqa: ANN202 - Flask response
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal error")


def require_auth(admin: bool = False) -> Callable:
    """Route decorator: 401 without a valid token, 403 when ``admin`` is needed."""

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            settings: WebSettings = current_app.config["EMP_SETTINGS"]
            principal = authenticate(settings, request.headers.get("Authorization"),
                                     single("token"))
            if principal is None:
                response = error(401, "missing or invalid bearer token")
                response.headers["WWW-Authenticate"] = 'Bearer realm="emp"'
                return response
            if admin and not principal.admin:
                return error(403, "this endpoint needs an admin token")
            g.principal = principal
            return view(*args, **kwargs)

        return wrapper

    return decorate


def metrics_guard(view: Callable) -> Callable:
    """Route decorator of ``/metrics``: an admin route (401/403), unless the operator
    opened it to scrapers on purpose (``EMP_METRICS_PUBLIC=1``, the monitor's name)."""
    guarded = require_auth(admin=True)(view)

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_app.config["EMP_SETTINGS"].metrics_public:
            return view(*args, **kwargs)
        return guarded(*args, **kwargs)

    return wrapper


def warn_if_open(settings: WebSettings, service: str) -> None:
    if settings.open:
        banner = "!" * len(OPEN_WARNING)
        logger.warning("%s\n%s: %s\n%s", banner, service, OPEN_WARNING, banner)
