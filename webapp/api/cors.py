"""Opt-in CORS for the REST API (``EMP_CORS_ORIGINS``), on flask-cors.

Without it a browser app served from another origin cannot call the API at
all: the browser refuses every answer, and the preflight a bearer token
needs. Only listed origins get CORS headers; the default (empty) sends none,
as before. Credentials (cookies) are never allowed: the API authenticates
by bearer token, which needs none, and ``*`` with credentials is forbidden.
WebSockets are not subject to CORS (``webapp.api.sockets``).
"""

from __future__ import annotations

import re

from flask import Flask
from flask_cors import CORS

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
#: Request headers a browser app may send.
ALLOW_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"]
#: Response headers (beyond the CORS-safelisted ones) a browser app may read.
EXPOSE_HEADERS = ["Retry-After", "Idempotent-Replayed", "WWW-Authenticate"]
#: Seconds a browser may cache a preflight's answer.
MAX_AGE = 600


def _exact(origin: str) -> str | re.Pattern[str]:
    """``origin`` as flask-cors matches it exactly. flask-cors reads a string holding
    brackets as a regular expression, where an IPv6 host's ``[::1]`` is a character
    class: that origin would never match (and ``http://1`` would)."""
    if "[" not in origin:
        return origin
    return re.compile(re.escape(origin) + r"\Z", re.IGNORECASE)


def init_app(app: Flask, origins: list[str]) -> None:
    """CORS headers on ``app``'s answers to ``origins`` (``["*"]``: any); none when empty."""
    if not origins:
        return
    CORS(app, origins="*" if origins == ["*"] else [_exact(origin) for origin in origins],
         send_wildcard=origins == ["*"],
         methods=METHODS, allow_headers=ALLOW_HEADERS, expose_headers=EXPOSE_HEADERS,
         supports_credentials=False, max_age=MAX_AGE, vary_header=True)
