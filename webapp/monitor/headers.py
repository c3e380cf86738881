"""Security headers on every answer of the monitor, Flower's pages and errors included.

The monitor's buttons act from its own origin, so the cross-site guard
(``handlers.ActionHandler``) cannot tell a lured click from an operator's:
a page of any other site could frame the monitor invisibly and have the
operator click Cancel (clickjacking). Every answer therefore forbids
framing (``frame-ancestors 'none'``, and ``X-Frame-Options`` for older
browsers), forbids type sniffing, and carries a Content Security Policy
that runs only the monitor's and Flower's own script files: a customer's
string that ever slipped into a page as markup could not run script.

Styles may be inline: the pages draw progress bars with ``style`` widths.
The one inline script (Flower's Workers page, ``var autorefresh = 0|1;``)
is allowed by its hash, computed from Flower's own template.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

import flower
from tornado import httputil, template
from tornado.web import OutputTransform

#: Inline script bodies of Flower's templates, with the one value they are rendered with.
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S)
_FLOWER_TEMPLATES = os.path.join(os.path.dirname(flower.__file__), "templates")


def flower_script_hashes() -> list[str]:
    """CSP hashes of the Workers page's inline script as Flower renders it (autorefresh
    0 or 1); none when Flower's template has no such script."""
    with open(os.path.join(_FLOWER_TEMPLATES, "workers.html"), encoding="utf-8") as source:
        bodies = _INLINE_SCRIPT.findall(source.read())
    hashes = []
    for body in bodies:
        for value in ("0", "1"):
            # As tornado renders an .html template: runs of whitespace collapsed.
            text = template.filter_whitespace("single", body.replace("{{ autorefresh }}", value))
            text = text.encode()
            digest = base64.b64encode(hashlib.sha256(text).digest()).decode()
            hashes.append(f"'sha256-{digest}'")
    return hashes


def content_security_policy() -> str:
    """The monitor's policy: its own files only, no plugins, no framing."""
    scripts = " ".join(["'self'", *flower_script_hashes()])
    return ("default-src 'self'; "
            f"script-src {scripts}; "
            "style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


#: What every answer carries (computed once, when the monitor is built).
HEADERS = {
    "Content-Security-Policy": content_security_policy(),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class SecurityHeaders(OutputTransform):
    """Adds ``HEADERS`` to every answer (an application transform: it also reaches
    Flower's handlers, static files and error pages); a handler's own value wins."""

    def transform_first_chunk(self, status_code: int, headers: httputil.HTTPHeaders,
                              chunk: bytes, finishing: bool
                              ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        for name, value in HEADERS.items():
            if name not in headers:
                headers[name] = value
        return status_code, headers, chunk
