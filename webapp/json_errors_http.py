"""gunicorn's answers to requests it cannot parse, in the services' JSON error shape.

A request gunicorn refuses before any application sees it (a header value or
name it cannot parse, a request line over its limit) got gunicorn's HTML error
page: the only ``text/html`` answer of the API and the webhook service, whose
every other error is ``{"success": false, "error": ...}`` (schemathesis found
it: a generated ``Content-Length: e`` got the page). gunicorn still decides the
status and logs the request as before; only the body changes. A 500 says no
more than that.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker


class _ErrorPage:
    """Stands in for the client's socket while gunicorn writes its error page: keeps the
    bytes (gunicorn writes them with one ``sendall`` when the timeout reads 0)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.written = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.written += data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def json_error(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP response: ``status`` with ``{success: false, error}``, the body every
    endpoint errs with; the connection closes."""
    body = json.dumps({"success": False, "error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrors:
    """Mixin for a gunicorn worker class: its error answers in JSON."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        page = _ErrorPage(client)
        super().handle_error(req, page, addr, exc)  # type: ignore[misc]
        if not page.written:
            return
        status_line = page.written.split(b"\r\n", 1)[0].decode("latin-1")
        _, status, reason = (status_line.split(" ", 2) + ["", ""])[:3]
        if not status.isdigit():
            return
        message = reason.lower() if status.startswith("5") else f"{reason}: {exc}"
        with contextlib.suppress(Exception):  # the client is gone: nothing to answer
            util.write_nonblock(client, json_error(int(status), reason, message))


class ThreadWorker(JsonErrors, _ThreadWorker):
    """gunicorn's threaded worker, answering what it refuses in JSON."""
