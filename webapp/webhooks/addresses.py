"""Which addresses a webhook may be delivered to (SSRF guard).

A hook's URL must resolve to global addresses only: private, loopback,
link-local, shared, reserved, unspecified and multicast addresses are
refused, unless ``EMP_WEBHOOK_ALLOW_PRIVATE=1`` or the address lies in
``EMP_WEBHOOK_ALLOWED_NETWORKS``. The check runs at registration and again
at every delivery after DNS resolution, and the request then goes to the
address that was checked, so a name that changes its answer (DNS rebinding)
cannot reach an internal service. A name resolving to several addresses
must have every one of them allowed. An IPv6 address that carries an IPv4
address (IPv4-mapped ``::ffff:0:0/96``, 6to4 ``2002::/16``, NAT64
``64:ff9b::/96``) is judged by the IPv4 address it reaches.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: The well-known NAT64 prefix (RFC 6052): the last 32 bits are the IPv4 destination.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

HOW_TO_ALLOW = ("set EMP_WEBHOOK_ALLOW_PRIVATE=1, or list the network in "
                "EMP_WEBHOOK_ALLOWED_NETWORKS, to allow it")


class AddressRefused(Exception):
    """The URL's host is, or resolves to, an address deliveries may not go to."""


class UnresolvableHost(Exception):
    """The URL's host does not resolve (now)."""


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address delivers to (mapped, 6to4, NAT64); None if none."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address; None when it is."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Allowed destinations.

    :param allow_private: allow every address.
    :param allowed_networks: networks allowed although not global.
    """

    allow_private: bool = False
    allowed_networks: tuple = ()

    def check_ip(self, ip: IPAddress) -> None:
        """Raise AddressRefused unless ``ip`` may receive deliveries."""
        inner = embedded_ipv4(ip)
        via = f" (in {ip})" if inner is not None else ""
        ip = inner if inner is not None else ip
        kind = _kind(ip)
        if kind is None or self.allow_private:
            return
        if any(ip.version == net.version and ip in net for net in self.allowed_networks):
            return
        raise AddressRefused(
            f"{ip}{via} is a {kind} address; deliveries to private, loopback, link-local and "
            f"other non-global addresses are refused ({HOW_TO_ALLOW})")

    def resolve(self, host: str, port: int) -> list[str]:
        """The checked addresses of ``host``, in resolver order.

        Raises AddressRefused when any of them is refused and UnresolvableHost
        when the name does not resolve.
        """
        try:
            literal = ipaddress.ip_address(host.strip("[]").split("%")[0])
        except ValueError:
            literal = None
        if literal is not None:
            self.check_ip(literal)
            return [str(literal)]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UnresolvableHost(f"host {host!r} does not resolve: {exc}") from None
        addresses: list[str] = []
        for info in infos:
            text = info[4][0].split("%")[0]
            if text not in addresses:
                addresses.append(text)
        for text in addresses:
            try:
                self.check_ip(ipaddress.ip_address(text))
            except AddressRefused as exc:
                raise AddressRefused(f"host {host!r} resolves to {exc}") from None
        if not addresses:
            raise UnresolvableHost(f"host {host!r} has no address")
        return addresses
