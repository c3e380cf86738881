"""Whether this machine can listen on a service's host, asked before the service starts.

gunicorn (API, webhooks) tries a host it cannot bind five times, a second apart, each
error naming the address but not the setting it came from; tornado (the monitor) raised
a traceback. A bind to port 0 of the same host fails the same way at once, and the
error can name the setting.
"""

from __future__ import annotations

import socket

from capability_router.env import SettingError


def check_host(host: str | None, setting: str) -> None:
    """SettingError naming ``setting`` (e.g. "EMP_API_HOST (or --host)") when ``host``
    cannot be listened on here: a name that resolves to nothing, an address this machine
    does not have. Its first address is tried, the one gunicorn binds; empty is left to
    the server (every interface). An IPv6 address may be bracketed, as gunicorn takes it."""
    if not host:
        return
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1]
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            bare, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.bind(address)
    except OSError as exc:  # socket.gaierror too
        raise SettingError(f"{setting} {host!r} cannot be listened on: {exc}") from None
