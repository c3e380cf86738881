"""A request's body, bounded by ``MAX_CONTENT_LENGTH`` whatever its transfer encoding.

werkzeug refuses a Content-Length over the limit (413), but a chunked body
has none: it reads such a body up to the limit and stops there, without a
word. A valid document followed by more bytes was accepted with the rest
ignored, and a longer one was refused as cut-off JSON (400). One byte read
past the limit tells them apart.
"""

from __future__ import annotations

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge


def request_body() -> bytes:
    """The request's body; RequestEntityTooLarge (413) when it is over the limit."""
    data = request.get_data(cache=True)  # a Content-Length over the limit: 413 here
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if (limit is not None and request.content_length is None and len(data) >= limit
            and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()
    return data
