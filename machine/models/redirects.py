"""Follow a model URL's redirects by hand, so each hop can be judged before it is taken.

A redirect must stay http(s) and may not lead to a less public address than
the catalog URL's own host: from a public host, not into the machine's
network (private addresses), and from either, not to the machine itself or
its cloud's metadata service (loopback, link-local such as 169.254.169.254,
unspecified, multicast). A catalog URL may name any of these itself: the
admin chose it. (The bytes would only be kept if they matched the catalog's
checksum, but the request alone may do harm or tell something.)

Each hop's name is resolved once: the addresses checked are the ones connected
to (TLS still sends and verifies the name), so a name answering a public
address to the check and 127.0.0.1 to the connection (DNS rebinding) never
reaches 127.0.0.1. The first address class seen is the download's: a resume
that finds the catalog URL's own name less public than before is refused too.
Through a proxy (``HTTPS_PROXY``) the proxy connects, by its own look-up.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import ParseResult, unquote, urljoin, urlparse

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection

#: Most redirects followed (requests' own limit).
MAX_REDIRECTS = 30

_PUBLIC, _PRIVATE, _LOCAL = 2, 1, 0
_KINDS = {_PUBLIC: "public", _PRIVATE: "private", _LOCAL: "loopback or link-local"}


class Unfollowable(Exception):
    """A redirect that is not taken; the message says why."""


class Session(requests.Session):
    """One download's session: its connections go to the addresses ``get`` checked
    for their host (``pins``: host -> addresses), and ``floor`` is the class of
    the download's first look-up of the catalog URL's host."""

    def __init__(self) -> None:
        super().__init__()
        self.pins: dict[str, list[str]] = {}
        self.floor: int | None = None
        adapter = _PinnedAdapter(self.pins)
        self.mount("http://", adapter)
        self.mount("https://", adapter)


def get(http: Session, url: str, headers: dict[str, str], timeout: float,
        shown: str) -> requests.Response:
    """The streamed reply of ``url`` after its redirects; Unfollowable for a bad hop.

    :param shown: ``url`` as messages show it (no secrets).
    """
    first = urlparse(url)
    kind = _check(http, first.hostname or "")
    if http.floor is None:
        http.floor = kind
    floor = http.floor
    if kind < floor:
        raise Unfollowable(f"{shown} now resolves to a {_KINDS[kind]} address, first to a "
                           f"{_KINDS[floor]} one: refused")
    # The URL's credentials go along to its own host only (as requests' redirects do).
    auth = (unquote(first.username), unquote(first.password or "")) \
        if first.username else None
    for _ in range(MAX_REDIRECTS + 1):
        hop = urlparse(url)
        same_host = (hop.hostname, _port(hop)) == (first.hostname, _port(first))
        try:
            reply = http.get(url, headers=headers, stream=True, timeout=timeout,
                             allow_redirects=False,
                             auth=auth if same_host and not hop.username else None)
        except ValueError as exc:  # requests parses a Location even when not following it
            if isinstance(exc, requests.RequestException):
                raise
            raise Unfollowable(f"{shown} redirects to a malformed URL: {exc}") from None
        if not reply.is_redirect:
            return reply
        reply.close()
        try:
            target = urljoin(url, reply.headers["Location"])
            parsed = urlparse(target)
            where = f"{parsed.scheme}://{parsed.hostname or ''}"
        except ValueError as exc:  # an unmatched '[' ("Invalid IPv6 URL")
            raise Unfollowable(f"{shown} redirects to a malformed URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise Unfollowable(f"{shown} redirects to {where}...: only http(s) URLs are "
                               f"followed")
        kind = _check(http, parsed.hostname)
        if kind < floor:
            raise Unfollowable(f"{shown} redirects to {where}, a {_KINDS[kind]} address, from "
                               f"a {_KINDS[floor]} one: refused")
        url = target
    raise Unfollowable(f"{shown} redirects more than {MAX_REDIRECTS} times")


def _port(parsed: ParseResult) -> int | None:
    """The port a URL reaches (None when it is malformed: the request says so)."""
    try:
        return parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    except ValueError:
        return None


def _check(http: Session, host: str) -> int:
    """How public ``host`` is: the least public of its addresses. A name's addresses
    are pinned in ``http``: its connections go to them and nowhere else."""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]").split("%")[0])]
    except ValueError:
        name = _ascii_host(host)
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except UnicodeError:  # no name requests can ask for: the request says so
            return _PUBLIC
        except OSError as exc:  # a DNS hiccup: tried again like a dropped connection
            raise requests.ConnectionError(f"cannot resolve {host}: {exc}") from None
        http.pins[_pin_key(name)] = list(dict.fromkeys(info[4][0] for info in infos))
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return min((_class(ip) for ip in addresses), default=_PUBLIC)


def _ascii_host(host: str) -> str:
    """``host`` as requests sends it: a non-ASCII name IDNA-encoded its way (the
    name looked up is the name connected to)."""
    if host.isascii():
        return host
    prepared = requests.PreparedRequest()
    try:
        prepared.prepare_url(f"http://{host}/", None)
    except (requests.RequestException, ValueError):
        return host  # the request refuses it too
    return urlparse(prepared.url).hostname or host


def _pin_key(host: str) -> str:
    """An ASCII host name as urllib3's connection names it (lower case, without the
    trailing dot)."""
    return host.lower().rstrip(".")


def _class(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return _LOCAL
    return _PUBLIC if ip.is_global else _PRIVATE


class _PinnedAdapter(HTTPAdapter):
    """Requests' adapter whose connections use the session's pinned addresses."""

    def __init__(self, pins: dict[str, list[str]]) -> None:
        self.pins = pins
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        pins = self.pins

        class PinnedHTTP(_Pinned, HTTPConnection):
            pass

        class PinnedHTTPS(_Pinned, HTTPSConnection):
            pass

        PinnedHTTP.pins = PinnedHTTPS.pins = pins
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("PinnedHTTPPool", (HTTPConnectionPool,),
                         {"ConnectionCls": PinnedHTTP}),
            "https": type("PinnedHTTPSPool", (HTTPSConnectionPool,),
                          {"ConnectionCls": PinnedHTTPS}),
        }


class _Pinned:
    """A urllib3 connection that connects to the addresses checked for its host
    instead of looking the name up again; the name stays its Host header, TLS
    SNI and certificate name (urllib3 uses ``host`` for those)."""

    pins: dict[str, list[str]]
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    proxy: Any

    def _new_conn(self) -> socket.socket:
        try:
            ipaddress.ip_address(self.host.strip("[]").split("%")[0])
            literal = True
        except ValueError:
            literal = False
        if literal or self.proxy is not None:  # nothing to look up / the proxy's look-up
            return super()._new_conn()  # type: ignore[misc]
        addresses = self.pins.get(_pin_key(self.host))
        if not addresses:
            raise Unfollowable(f"{self.host} was not checked before connecting: refused")
        error: Exception = NewConnectionError(self, f"no address for {self.host}")
        for address in addresses:
            try:
                return connection.create_connection(
                    (address, self.port), self.timeout, source_address=self.source_address,
                    socket_options=self.socket_options)
            except TimeoutError:
                error = ConnectTimeoutError(
                    self, f"Connection to {self.host} ({address}) timed out. "
                          f"(connect timeout={self.timeout})")
            except OSError as exc:
                error = NewConnectionError(
                    self, f"Failed to establish a new connection to {address}: {exc}")
        raise error
