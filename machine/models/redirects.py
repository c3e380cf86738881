"""Follow a model URL's redirects by hand, so each hop can be judged before it is taken.

A redirect must stay http(s) and may not lead to a less public address than
the catalog URL's own host: from a public host, not into the machine's
network (private addresses), and from either, not to the machine itself or
its cloud's metadata service (loopback, link-local such as 169.254.169.254,
unspecified, multicast). A catalog URL may name any of these itself: the
admin chose it. (The bytes would only be kept if they matched the catalog's
checksum, but the request alone may do harm or tell something.) Names are
resolved for the check and again by the request, so a name that changes its
answer in between is not caught.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import ParseResult, unquote, urljoin, urlparse

import requests

#: Most redirects followed (requests' own limit).
MAX_REDIRECTS = 30

_PUBLIC, _PRIVATE, _LOCAL = 2, 1, 0
_KINDS = {_PUBLIC: "public", _PRIVATE: "private", _LOCAL: "loopback or link-local"}


class Unfollowable(Exception):
    """A redirect that is not taken; the message says why."""


def get(http: requests.Session, url: str, headers: dict[str, str], timeout: float,
        shown: str) -> requests.Response:
    """The streamed reply of ``url`` after its redirects; Unfollowable for a bad hop.

    :param shown: ``url`` as messages show it (no secrets).
    """
    first = urlparse(url)
    floor = _class_of(first.hostname or "")
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
        kind = _class_of(parsed.hostname)
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


def _class_of(host: str) -> int:
    """How public ``host`` is: the least public of its addresses (public when it
    does not resolve: the request will fail on its own)."""
    try:
        addresses = [ipaddress.ip_address(host.strip("[]").split("%")[0])]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return _PUBLIC
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return min((_class(ip) for ip in addresses), default=_PUBLIC)


def _class(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return _LOCAL
    return _PUBLIC if ip.is_global else _PRIVATE
