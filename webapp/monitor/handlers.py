"""The base of every monitor handler: Flower's authentication, JSON and blocking calls.

Every page, JSON read, action and the live stream derives from Flower's own
``BaseHandler`` and is wrapped in ``tornado.web.authenticated``, so Flower's
options (``--basic_auth``, ``--auth`` with an OAuth provider) guard them
exactly as they guard Flower's pages; ``--read_only`` refuses the actions.
Redis and Celery calls block, so they run on Flower's thread pool; one that
cannot reach Redis answers 503 with ``Retry-After``, logged once per outage; while
one is known, one call at a time probes Redis and the others answer 503 at once.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import tornado.web
from flower.views import BaseHandler
from tornado.ioloop import IOLoop

from webapp import strict_json
from webapp.bodies import coding_refused
from webapp.monitor.state import MonitorState
from webapp.outage import (
    REASON,
    REFUSING,
    RETRY_AFTER_SECONDS,
    UNAVAILABLE,
    Outage,
    log_failure,
)

T = TypeVar("T")
#: JSON answers this long or longer are gzipped for a client that accepts it.
GZIP_MIN_BYTES = 1024
#: Seconds between two looks, while a call waits on Redis, at whether another found it down.
OUTAGE_LOOK_SECONDS = 0.25
#: What Flower's BaseHandler grants every origin under ``FLOWER_UNAUTHENTICATED_API``.
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Allow-Headers",
                "Access-Control-Allow-Methods")


class RedisUnavailable(tornado.web.HTTPError):
    """A request that could not reach Redis: 503, not logged (the outage is, once)."""

    def __init__(self, reason: str = REASON) -> None:
        super().__init__(503, reason)


class MonitorHandler(BaseHandler):
    """A monitor page or endpoint; ``self.state`` reaches Redis and Celery."""

    @property
    def state(self) -> MonitorState:
        return self.application.emp

    def set_default_headers(self) -> None:
        """Flower's, without its CORS grant: ``FLOWER_UNAUTHENTICATED_API`` opens Flower's
        own API to scripts, but the monitor's pages, job records (customers' payloads and
        results) and live stream stay readable by the monitor's own pages only."""
        super().set_default_headers()
        for name in CORS_HEADERS:
            self.clear_header(name)

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call that reaches Redis on the application's executor;
        RedisUnavailable (503) when it could not reach Redis.

        During a known outage the call is the API's outage gate (``Outage.probing``):
        one at a time goes to Redis (at most one socket timeout), the others get their
        503 at once. Without it each request of a hung Redis held an executor thread
        for 5 s, and 20 at once filled the 16 threads that Flower's own calls share.
        """
        outage = self.state.outage
        with outage.probing() as admitted:
            if not admitted:
                raise RedisUnavailable()
            try:
                result = await until_outage(outage, self.offload(fn, *args, **kwargs))
            except (*UNAVAILABLE, *REFUSING) as exc:  # down, full or read-only: saying which
                raise RedisUnavailable(log_failure(exc, outage, self.state.refusals)) from None
        outage.succeeded()
        return result

    async def offload(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call on the executor, outage or not (one that needs no Redis,
        such as a live stream's clean-up)."""
        return await IOLoop.current().run_in_executor(
            None, functools.partial(fn, *args, **kwargs))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, RedisUnavailable):  # the outage logs itself, once
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Flower's, with ``Retry-After`` on an outage's 503 (a page's or the live
        stream's had none)."""
        if isinstance(kwargs.get("exc_info", (None, None))[1], RedisUnavailable):
            self.set_header("Retry-After", str(RETRY_AFTER_SECONDS))
        super().write_error(status_code, **kwargs)

    def render(self, template_name: str, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", self.application.options.read_only)
        kwargs.setdefault("emp_static", self.state.static_url)
        super().render(template_name, **kwargs)


class CodedBody(tornado.web.HTTPError):
    """A request body in a content coding (``webapp.bodies.coding_refused``)."""


class JsonHandler(MonitorHandler):
    """A JSON endpoint of the monitor's pages: errors are JSON too."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    def send(self, payload: Any, status: int = 200) -> None:
        """Finish with ``payload``, gzipped when the client takes it and it is worth it
        (the Machines view of a large fleet: 2.2 MB, 36 KB gzipped). tornado's ETag is of
        the bytes sent, so it differs per encoding; a GET whose If-None-Match matches gets
        304 and no body."""
        self.set_status(status)
        body = json.dumps(payload, default=str).encode()
        self.add_header("Vary", "Accept-Encoding")
        if len(body) >= GZIP_MIN_BYTES and _takes_gzip(self.request.headers):
            body = gzip.compress(body, compresslevel=6, mtime=0)  # mtime 0: same bytes, ETag
            self.set_header("Content-Encoding", "gzip")
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 401:  # Flower's challenge, so browsers ask for credentials
            self.set_header("WWW-Authenticate", 'Basic realm="flower"')
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, RedisUnavailable):
            self.set_header("Retry-After", str(RETRY_AFTER_SECONDS))
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        if isinstance(exc, CodedBody):  # the one coding taken (RFC 9110, 15.5.16)
            self.set_header("Accept-Encoding", "identity")
        message = exc.log_message if isinstance(exc, tornado.web.HTTPError) else None
        self.finish(json.dumps({"success": False,
                                "error": message or self._reason}))

    def allowed_methods(self) -> list[str]:
        """The methods this handler implements (tornado's 405 does not say)."""
        return [method for method in self.SUPPORTED_METHODS
                if getattr(type(self), method.lower()) is not getattr(
                    tornado.web.RequestHandler, method.lower())]

    def body_json(self) -> dict[str, Any]:
        """The request's JSON object body, parsed as strictly as the API's, or a 400 saying
        what is wrong with it (415 for a body in a content coding, as the API's)."""
        refusal = coding_refused(self.request.headers.get("Content-Encoding"))
        if refusal:
            raise CodedBody(415, refusal)
        try:
            body = strict_json.loads(self.request.body or b"{}")
        except strict_json.JsonRefused as exc:
            raise tornado.web.HTTPError(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise tornado.web.HTTPError(400, "body must be a JSON object")
        return body


class ActionHandler(JsonHandler):
    """A POST that changes something: refused in Flower's read-only mode, and from any
    other site whether or not the monitor has authentication.

    Flower checks Origin and Sec-Fetch-Site only when an auth option is set; an
    open monitor would otherwise take a ``text/plain`` POST, which any web page
    can send without a CORS preflight. Here a request from another site is
    refused (Sec-Fetch-Site other than ``same-origin``, else an Origin that is
    not this host), and a body must be declared ``application/json`` (a
    cross-origin page cannot send that type without a preflight nothing grants).
    Clients that are no browser send neither header and are unaffected.
    """

    def check_xsrf_cookie(self) -> None:
        site = self.request.headers.get("Sec-Fetch-Site")
        origin = self.request.headers.get("Origin")
        if site and site != "same-origin":
            raise tornado.web.HTTPError(403, f"cross-site request refused (Sec-Fetch-Site: "
                                             f"{site})")
        if not site and origin and _netloc(origin) != self.request.host:
            raise tornado.web.HTTPError(403, "cross-site request refused (Origin is not this "
                                             "monitor)")
        super().check_xsrf_cookie()

    def prepare(self) -> None:
        if self.application.options.read_only:
            raise tornado.web.HTTPError(403, "the monitor runs read-only (--read_only)")
        declared = self.request.headers.get("Content-Type")
        if self.request.body and declared is not None:
            media_type = declared.split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                raise tornado.web.HTTPError(415, f"Content-Type must be application/json, "
                                                 f"not {media_type!r}")


async def until_outage(outage: Outage, work: Awaitable[T]) -> T:
    """``work``'s result; RedisUnavailable as soon as another call finds an outage that
    started while it waits on Redis (it is left to end on its own thread).

    Before, a refresh sent in a hung Redis's first seconds waited its own socket
    timeout after the first request had already found the outage (sent 1 s and 2 s
    after the hang, the queue's reads answered 503 at 6 s and 7 s)."""
    call = asyncio.ensure_future(work)
    if outage.down:  # the one probe: its own call decides
        return await call
    while True:
        done, _ = await asyncio.wait({call}, timeout=OUTAGE_LOOK_SECONDS)
        if done:
            return call.result()
        if outage.down:
            call.add_done_callback(_forget)
            raise RedisUnavailable()


def _forget(call: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned call's outcome, so asyncio logs no unretrieved exception."""
    if not call.cancelled():
        call.exception()


def _takes_gzip(headers: Any) -> bool:
    """Whether Accept-Encoding lists gzip (and not with q=0)."""
    for part in headers.get("Accept-Encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _netloc(url: str) -> str | None:
    """The host[:port] of ``url``; None when it does not parse (an unmatched '[')."""
    try:
        return urlparse(url).netloc
    except ValueError:
        return None
