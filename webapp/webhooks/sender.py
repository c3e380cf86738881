"""One HTTP POST of a delivery, to an address the SSRF guard checked.

The URL's host is resolved and checked (``addresses.py``) on every attempt
and the connection goes to a checked address, with the original host in
the Host header and in TLS (SNI and certificate check); addresses are tried
in resolver order until one connects. Redirects are not followed (a 3xx is
an answer like any other), so no request leaves for an unchecked address.
A request that went out on a kept-alive connection the receiver closed
unanswered (its idle timeout ran out just then) is sent once more at once on
a new connection: no answer came, and receivers drop repeats by webhook-id.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
)

from capability_router.whole_numbers import is_whole, whole_number
from webapp.webhooks.addresses import AddressPolicy, AddressRefused, UnresolvableHost
from webapp.webhooks.deadlines import (
    Attempt,
    Deadlines,
    WatchedHTTPConnection,
    WatchedHTTPSConnection,
)

try:
    import certifi

    CA_CERTS: str | None = certifi.where()
except ImportError:  # pragma: no cover - certifi comes with requests
    CA_CERTS = None

USER_AGENT = "EMP-Job-Queue-Webhook/1.0"
#: Response bytes read and kept (as text) in the attempt record.
EXCERPT_BYTES = 1024
#: Response bytes read before the connection is dropped instead of reused.
READ_LIMIT = 64 * 1024
#: Connection pools kept (one per scheme, address, port and host name).
MAX_POOLS = 256


@dataclass
class SendResult:
    """What one attempt got back."""

    #: HTTP status, None when no response arrived.
    status: int | None
    latency_ms: int
    excerpt: str = ""
    error: str = ""
    #: The URL was refused by the address guard (nothing was sent).
    refused: bool = False
    #: A Retry-After header, in ms.
    retry_after_ms: int | None = None
    address: str | None = None
    #: The Location of a 3xx answer (not followed: see the module docstring).
    location: str | None = None


def ascii_host(host: str) -> str:
    """The host as it goes on the wire: an international domain name in its IDNA
    (``xn--``) form, for DNS, the Host header and TLS. Sent as typed, a name outside
    Latin-1 made the attempt raise (the hook stalled, its delivery never recorded) and
    one inside it went out as raw Latin-1 bytes. UnicodeError when it has no such form."""
    return host if host.isascii() else host.encode("idna").decode("ascii")


#: Digits of a Retry-After read as given (999,999,999 s: 31 years); more is that long.
MAX_RETRY_AFTER_DIGITS = 9


def _retry_after_ms(value: str | None) -> int | None:
    if not value:
        return None
    value = value.strip()
    # ASCII digits only ('²' and over 4,300 digits raised out of the attempt). Past
    # MAX_RETRY_AFTER_DIGITS it is "very long": the retry's cap applies either way.
    if is_whole(value):
        seconds = whole_number(value, MAX_RETRY_AFTER_DIGITS)
        return (10 ** MAX_RETRY_AFTER_DIGITS - 1 if seconds is None else seconds) * 1000
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, int((when.timestamp() - time.time()) * 1000))


class Sender:
    """Posts bodies under an address policy, reusing connections (thread-safe).

    :param policy: which addresses may be reached.
    :param timeout: seconds for the whole attempt (connect and response).
    :param connections: connections kept per destination (the dispatcher count).
    """

    def __init__(self, policy: AddressPolicy, timeout: float, connections: int = 8) -> None:
        self.policy = policy
        self.timeout = timeout
        self.connections = connections
        self._pools: OrderedDict[tuple, urllib3.HTTPConnectionPool] = OrderedDict()
        self._lock = threading.Lock()
        self._deadlines = Deadlines()

    def _pool(self, scheme: str, address: str, port: int,
              host: str) -> urllib3.HTTPConnectionPool:
        key = (scheme, address, port, host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if scheme == "https":
                    name = None if host.strip("[]") == address else host
                    pool = urllib3.HTTPSConnectionPool(
                        address, port, maxsize=self.connections, block=False,
                        cert_reqs="CERT_REQUIRED", ca_certs=CA_CERTS, server_hostname=name,
                        assert_hostname=name)
                    pool.ConnectionCls = WatchedHTTPSConnection
                else:
                    pool = urllib3.HTTPConnectionPool(address, port, maxsize=self.connections,
                                                      block=False)
                    pool.ConnectionCls = WatchedHTTPConnection
                self._pools[key] = pool
            self._pools.move_to_end(key)
            while len(self._pools) > MAX_POOLS:
                self._pools.popitem(last=False)[1].close()
            return pool

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> SendResult:
        """POST ``body`` to ``url``; never raises for network trouble."""
        started = time.monotonic()

        def elapsed() -> int:
            return int((time.monotonic() - started) * 1000)

        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        authority = parts.netloc.rpartition("@")[2]
        try:
            host = ascii_host(parts.hostname or "")
        except UnicodeError as exc:
            return SendResult(None, elapsed(), error=f"host {parts.hostname!r} is not a valid "
                              f"international domain name: {exc}")
        if not authority.isascii():
            authority = host + (f":{parts.port}" if parts.port is not None else "")
        try:
            addresses = self.policy.resolve(host, port)
        except AddressRefused as exc:
            return SendResult(None, elapsed(), error=f"refused: {exc}", refused=True)
        except UnresolvableHost as exc:
            return SendResult(None, elapsed(), error=str(exc))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"Host": authority, "Content-Type": "application/json",
                "User-Agent": USER_AGENT, **headers}
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            sent["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
        with self._deadlines.attempt(started + self.timeout - time.monotonic()) as attempt:
            error = ""
            for address in addresses:
                result = self._post_to(address, port, parts.scheme, host, target, body, sent,
                                       attempt)
                if isinstance(result, str):
                    error = result
                    continue
                result.latency_ms = elapsed()
                return result
        return SendResult(None, elapsed(), error=error or "no address to connect to")

    def _post_to(self, address: str, port: int, scheme: str, host: str, target: str,
                 body: bytes, headers: dict[str, str], attempt: Attempt) -> SendResult | str:
        """One address's answer, or why it could not be connected to (try the next)."""
        pool = self._pool(scheme, address, port, host)
        late = SendResult(None, 0, error=f"timed out after {self.timeout:g} s (the response "
                          "was still arriving)", address=address)
        for again in (False, True):
            try:
                response = pool.urlopen(
                    "POST", target, body=body, headers=headers, retries=False, redirect=False,
                    assert_same_host=False, preload_content=False,
                    timeout=urllib3.Timeout(total=self.timeout))
                break
            except (NewConnectionError, ConnectTimeoutError) as exc:
                return f"cannot connect to {address}:{port}: {_reason(exc)}"
            except HTTPError as exc:
                if attempt.expired:
                    return late
                if not again and attempt.reused and isinstance(exc, ProtocolError):
                    # The receiver closed the kept-alive connection as the request went
                    # out (its idle timeout): that is no answer, send once more on a new one.
                    continue
                return SendResult(None, 0, error=_reason(exc), address=address)
        try:
            data, error = response.read(READ_LIMIT + 1), ""
        except HTTPError as exc:
            data, error = b"", _reason(exc)
        if attempt.expired:
            response.close()
            return late
        if error:
            response.close()
            return SendResult(response.status, 0, error=error, address=address)
        if len(data) <= READ_LIMIT:
            response.release_conn()
        else:
            response.close()
        return SendResult(
            response.status, 0, excerpt=data[:EXCERPT_BYTES].decode("utf-8", errors="replace"),
            retry_after_ms=_retry_after_ms(response.headers.get("Retry-After")),
            address=address, location=response.headers.get("Location")
            if 300 <= response.status < 400 else None)

    def close(self) -> None:
        self._deadlines.close()
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


def _reason(exc: Exception) -> str:
    """A short description of a urllib3 error."""
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    name = type(reason).__name__
    return text if text.startswith(name) else f"{name}: {text}"
