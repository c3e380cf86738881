"""Which ``Host`` an open monitor answers: a guard against DNS rebinding.

A monitor without authentication refuses requests from other sites by
comparing ``Origin`` with the request's own ``Host``. A page whose domain is
re-pointed at the monitor's address (DNS rebinding) sends its own name in
both, passes that check, and can read and change jobs from an operator's
browser. A rebinding page is reached by a name, never by an address, so an
open monitor answers any IP address (as Jupyter does) but only the names it
is known by: ``localhost``, this machine's host names, and
``EMP_MONITOR_ALLOWED_HOSTS`` (comma list; ``*`` answers any). With
authentication on, a rebinding page holds no credentials (they are kept per
site), and every host is answered.
"""

from __future__ import annotations

import ipaddress
import json
import socket

import tornado.web

from emp_tasks import defaults


def host_name(host_header: str) -> str:
    """The name or address of a ``Host`` header, without port or IPv6 brackets, lowered."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_names() -> set[str] | None:
    """The names an open monitor answers besides IP addresses; None: any name."""
    configured = {h.strip().lower() for h in
                  (defaults.env("EMP_MONITOR_ALLOWED_HOSTS") or "").split(",") if h.strip()}
    if "*" in configured:
        return None
    machine = {socket.gethostname().lower(), socket.getfqdn().lower()}
    return {"localhost", *machine, *configured} - {""}


def host_allowed(host_header: str | None, names: set[str] | None) -> bool:
    """True when an open monitor answers this ``Host``: any IP address, or a known name."""
    if names is None:
        return True
    host = host_name(host_header or "")
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in names


class UnknownHostHandler(tornado.web.RequestHandler):
    """The answer to a request for a name an open monitor does not answer: 403, saying why."""

    def check_xsrf_cookie(self) -> None:
        """Nothing to protect here: every request is refused, saying why."""

    def prepare(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"success": False, "error": (
            f"this monitor does not answer the name {host_name(self.request.host or '')!r} "
            "(a guard against DNS rebinding while it runs without authentication): add it "
            "to EMP_MONITOR_ALLOWED_HOSTS, or reach the monitor by its address")}))
