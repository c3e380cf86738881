"""A request's body, bounded by ``MAX_CONTENT_LENGTH`` whatever its transfer encoding.

werkzeug refuses a Content-Length over the limit (413), but a chunked body
has none: it reads such a body up to the limit and stops there, without a
word. A valid document followed by more bytes was accepted with the rest
ignored, and a longer one was refused as cut-off JSON (400). One byte read
past the limit tells them apart.

A body in a content coding (``Content-Encoding: gzip``) is refused with 415 and
``Accept-Encoding: identity`` (RFC 9110, 15.5.16): nothing decodes it, and a
gzipped job was refused as "not UTF-8", a coded body that happened to read as
JSON taken as it came.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from webapp.schema_words import quoted

#: Content codings of a request body taken as they are: none.
UNCODED = ("", "identity")


class UnsupportedContentCoding(UnsupportedMediaType):
    """415 for a body in a content coding; its answer names the one coding taken."""

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [*super().get_headers(*args, **kwargs), ("Accept-Encoding", "identity")]


def coding_refused(content_encoding: str | None) -> str | None:
    """Why a body with this ``Content-Encoding`` is refused (415); None when uncoded. For
    the Flask services here, and the monitor (Tornado, which decodes none either)."""
    coding = (content_encoding or "").strip().lower()
    if coding in UNCODED:
        return None
    return f"Content-Encoding {quoted(coding)} is not taken: send the body uncoded"


def request_body() -> bytes:
    """The request's body; RequestEntityTooLarge (413) when it is over the limit,
    UnsupportedContentCoding (415) when it comes in a content coding."""
    refusal = coding_refused(request.headers.get("Content-Encoding"))
    if refusal:
        raise UnsupportedContentCoding(refusal)
    data = request.get_data(cache=True)  # a Content-Length over the limit: 413 here
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if (limit is not None and request.content_length is None and len(data) >= limit
            and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()
    return data
