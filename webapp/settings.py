"""Settings of the web services, read from the environment (12-factor).

Every name has a default; ``conf/emp.env.example`` lists them all.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, replace

from capability_router.jobspec import NAME_RE, NAME_RULE
from emp_tasks import defaults

#: Ports of the original system.
API_PORT = 3331
WEBHOOK_PORT = 3332
#: Largest request body accepted, bytes (``EMP_MAX_BODY_BYTES``).
MAX_BODY_BYTES = 1024 * 1024
#: Threads of the webhook service's process (``EMP_WEB_THREADS``).
WEB_THREADS = 64
#: Connections (REST and WebSockets) each API process holds at once, as greenlets
#: (``EMP_API_CONNECTIONS``); the kernel's file limit bounds it too.
API_CONNECTIONS = 10000
#: Seconds between the API's WebSocket pings (``EMP_WS_PING_SECONDS``): a peer whose pong
#: does not come back by the next ping is dropped. Each ping is a write and its pong a
#: wake-up, per socket: in bench/production_day.py (5,000 sockets) the API used 0.62-0.63
#: cores at 5 s and 0.53-0.55 at 25 s. 25 s is Socket.IO's interval, well under the 60 s
#: that common proxies allow an idle connection.
WS_PING_SECONDS = 25.0
#: API server processes (``EMP_API_PROCESSES``; default one per CPU core).
API_PROCESSES = os.cpu_count() or 1
#: Seconds an Idempotency-Key (or socket message_id) and its answer are kept.
IDEMPOTENCY_SECONDS = 24 * 3600
#: Default per-customer limits (``webapp.api.limits``; 0: none): submissions per second
#: and at once, unfinished jobs, requirement classes of those jobs, open client sockets.
RATE = 50.0
BURST = 100
PENDING = 1000
CLASSES = 100
SOCKETS = 200
_LIMIT_NAMES = ("rate", "burst", "pending", "classes", "sockets")


def _check_customer(setting: str, item: str, customer: str) -> None:
    """ValueError when ``customer`` (of ``setting``'s ``item``) is no id a job can carry."""
    if not NAME_RE.match(customer):
        raise ValueError(f"{setting} item {item!r}: {customer!r} is not a customer id "
                         f"({NAME_RULE})")


def _pairs(text: str | None) -> dict[str, str]:
    """``"a=x,b=y"`` -> ``{"a": "x", "b": "y"}``; malformed items raise ValueError, and so
    do a customer id no job can carry (each submit with the token was refused) and one
    token given for two customers (the last one won, without a word)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        token, sep, customer = item.partition("=")
        token, customer = token.strip(), customer.strip()
        if not sep or not token or not customer:
            raise ValueError(f"EMP_API_TOKENS item {item!r} is not token=customer_id")
        _check_customer("EMP_API_TOKENS", item, customer)
        if out.get(token, customer) != customer:
            raise ValueError(f"EMP_API_TOKENS gives one token for two customers, "
                             f"{out[token]!r} and {customer!r}")
        out[token] = customer
    return out


#: An origin as browsers send it: scheme, host (a name, or an IPv6 address in brackets),
#: optional port; no path, no trailing slash.
_ORIGIN = re.compile(r"(?P<scheme>https?)://(?:[A-Za-z0-9.-]+|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])"
                     r"(?::(?P<port>[0-9]{1,5}))?")
#: The port browsers leave out of an Origin, by scheme.
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def browser_ipv6(address: str) -> str | None:
    """``address`` as browsers write an IPv6 host, the URL Standard's serializer (lowercase
    hex, no leading zeros, the first longest run of two or more zero pieces as ``::``);
    None if it is not an IPv6 address. ``compressed`` writes the same, except that from
    Python 3.13 it gives an IPv4-mapped address a dotted tail (``::ffff:1.2.3.4``), which
    browsers write in hex pieces (``[::ffff:102:304]``, the form this returns on every
    Python), and that it keeps a zone (``%eth0``), which no Origin holds."""
    try:
        ip = ipaddress.IPv6Address(ipaddress.IPv6Address(address).packed)  # zone dropped
    except ValueError:
        return None
    if ip.ipv4_mapped is not None:
        return (f"::ffff:{int.from_bytes(ip.packed[12:14], 'big'):x}:"
                f"{int.from_bytes(ip.packed[14:], 'big'):x}")
    return ip.compressed


def parse_origins(text: str | None) -> list[str]:
    """``EMP_CORS_ORIGINS`` (``"https://a.example,http://[::1]:5173"`` or ``*``) -> the
    origins; ValueError naming an item that no browser would send as its Origin (a path,
    a trailing slash, the scheme's own port, an IPv6 host written otherwise than browsers
    write it: it would never match, and CORS would stay off without a word)."""
    origins = [item.strip() for item in (text or "").split(",") if item.strip()]
    if "*" in origins and len(origins) > 1:
        raise ValueError("EMP_CORS_ORIGINS: '*' allows every origin; give it alone")
    for origin in origins:
        if origin == "*":
            continue
        match = _ORIGIN.fullmatch(origin)
        if not match:
            raise ValueError(f"EMP_CORS_ORIGINS {origin!r} is not an origin: "
                             "scheme://host[:port], no path or trailing slash")
        if match.group("port") == _DEFAULT_PORTS[match.group("scheme")]:
            start, end = match.span("port")
            raise ValueError(f"EMP_CORS_ORIGINS {origin!r} would never match: browsers leave "
                             f"the scheme's own port out, sending {origin[:start - 1]!r}")
        address = match.group("ipv6")
        if address is None:
            continue
        written = browser_ipv6(address)
        if written is None:
            raise ValueError(f"EMP_CORS_ORIGINS {origin!r} is not an origin: "
                             f"{address!r} is not an IPv6 address")
        if written != address.lower():
            start, end = match.span("ipv6")
            raise ValueError(f"EMP_CORS_ORIGINS {origin!r} would never match: browsers send "
                             f"it as {origin[:start] + written + origin[end:]!r}")
    return origins


def _positive(name: str, default: float) -> float:
    """A positive, finite number of seconds from ``name``; anything else raises ValueError."""
    text = defaults.env(name, str(default)) or str(default)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {text!r}")
    return value


@dataclass(frozen=True)
class CustomerLimits:
    """One customer's limits (0: none)."""

    #: Submissions per second, refilled continuously.
    rate: float = RATE
    #: Submissions at once when the bucket is full.
    burst: int = BURST
    #: Jobs admitted and not finished.
    pending: int = PENDING
    #: Distinct requirement classes among those jobs.
    classes: int = CLASSES
    #: Client sockets open at once.
    sockets: int = SOCKETS


def parse_limits(text: str | None, default: CustomerLimits) -> dict[str, CustomerLimits]:
    """``"acme:rate=5,pending=100;globex:sockets=10"`` -> limits per customer id;
    ValueError naming the bad item."""
    out: dict[str, CustomerLimits] = {}
    given: set[tuple[str, str]] = set()  # (customer, limit) pairs set so far
    for item in (text or "").split(";"):
        item = item.strip()
        if not item:
            continue
        customer, sep, settings = item.rpartition(":")
        customer = customer.strip()
        if not sep or not customer:
            raise ValueError(f"EMP_CUSTOMER_LIMITS item {item!r} is not customer:name=value,...")
        _check_customer("EMP_CUSTOMER_LIMITS", item, customer)  # else limits for no one
        values: dict[str, float | int] = {}
        for pair in settings.split(","):
            name, eq, value = (part.strip() for part in pair.partition("="))
            if not eq or name not in _LIMIT_NAMES:
                raise ValueError(f"EMP_CUSTOMER_LIMITS item {item!r}: {pair.strip()!r} is not "
                                 f"one of {'/'.join(_LIMIT_NAMES)}=number")
            try:
                number = float(value) if name == "rate" else int(value)
            except ValueError:
                raise ValueError(f"EMP_CUSTOMER_LIMITS item {item!r}: {name} must be a "
                                 "number") from None
            if number < 0 or not math.isfinite(number):
                raise ValueError(f"EMP_CUSTOMER_LIMITS item {item!r}: {name} must be >= 0")
            if (customer, name) in given:  # the last one won, without a word
                raise ValueError(f"EMP_CUSTOMER_LIMITS gives {customer}'s {name} twice")
            given.add((customer, name))
            values[name] = number
        limits = replace(out.get(customer, default), **values)
        if limits.rate > 0 and limits.burst < 1:
            raise ValueError(f"EMP_CUSTOMER_LIMITS item {item!r}: burst must be at least 1 "
                             "under a rate (0 turns the rate limit off): a bucket of 0 "
                             "refuses every submission")
        out[customer] = limits
    return out


def _default_limits() -> CustomerLimits:
    """``EMP_LIMIT_*``, each at least 0 as in ``EMP_CUSTOMER_LIMITS``, and a burst of at
    least 1 under a rate: a burst below 1 refused every submission, a negative rate
    meant none."""
    limits = CustomerLimits(
        rate=defaults.env_at_least("EMP_LIMIT_RATE", RATE, 0),
        burst=defaults.env_at_least("EMP_LIMIT_BURST", BURST, 0, int),
        pending=defaults.env_at_least("EMP_LIMIT_PENDING", PENDING, 0, int),
        classes=defaults.env_at_least("EMP_LIMIT_CLASSES", CLASSES, 0, int),
        sockets=defaults.env_at_least("EMP_LIMIT_SOCKETS", SOCKETS, 0, int),
    )
    if limits.rate > 0 and limits.burst < 1:  # the bucket would never hold a whole token
        raise defaults.SettingError(
            f"EMP_LIMIT_BURST must be at least 1 while EMP_LIMIT_RATE is above 0 (set "
            f"EMP_LIMIT_RATE=0 for no rate limit), got {limits.burst}: every submission "
            "would be refused")
    return limits


@dataclass
class WebSettings:
    """What the API server and the webhook service need to run."""

    redis_url: str = field(default_factory=defaults.redis_url)
    #: Bearer token -> customer id (``EMP_API_TOKENS="tok1=cust-a,tok2=cust-b"``).
    customer_tokens: dict[str, str] = field(default_factory=dict)
    #: Bearer tokens that see everything (``EMP_ADMIN_TOKENS="tok3,tok4"``).
    admin_tokens: set[str] = field(default_factory=set)
    max_body_bytes: int = MAX_BODY_BYTES
    threads: int = WEB_THREADS
    api_processes: int = API_PROCESSES
    api_connections: int = API_CONNECTIONS
    ws_ping_seconds: float = WS_PING_SECONDS
    #: Retention of idempotency keys, seconds (``EMP_IDEMPOTENCY_SECONDS``).
    idempotency_seconds: int = IDEMPOTENCY_SECONDS
    #: Limits of a customer not in ``customer_limits`` (``EMP_LIMIT_*``).
    default_limits: CustomerLimits = field(default_factory=CustomerLimits)
    #: Customer id -> its limits (``EMP_CUSTOMER_LIMITS``).
    customer_limits: dict[str, CustomerLimits] = field(default_factory=dict)
    #: ``/metrics`` open to anyone although tokens are configured (``EMP_METRICS_PUBLIC=1``,
    #: as the monitor's): for a scraper that cannot send a bearer token.
    metrics_public: bool = False
    #: Browser origins allowed to call the REST API (``EMP_CORS_ORIGINS``, exact origins or
    #: ``*``; empty: no CORS header, browsers on other origins are refused).
    cors_origins: list[str] = field(default_factory=list)

    @property
    def open(self) -> bool:
        """True when no token is configured: every request is an admin's."""
        return not self.customer_tokens and not self.admin_tokens

    def check_idempotency_window(self) -> None:
        """ValueError, naming both settings, when idempotency keys would be kept longer than
        job records (``EMP_RETENTION_SECONDS``): a retry would replay an answer naming a job
        already swept. A pool whose workers keep records shorter still is met at replay
        time: a retry whose job was swept gets 409 (``webapp.api.idempotency``)."""
        seconds = self.idempotency_seconds
        if seconds <= 0:
            raise ValueError(f"EMP_IDEMPOTENCY_SECONDS must be a positive integer, got {seconds}")
        retention = defaults.env_positive("EMP_RETENTION_SECONDS", defaults.RETENTION_SECONDS)
        if seconds > retention:
            shown = int(retention) if retention == int(retention) else retention
            raise ValueError(
                f"EMP_IDEMPOTENCY_SECONDS ({seconds}) is longer than EMP_RETENTION_SECONDS "
                f"({shown}): a retry would replay an answer naming a job record already "
                f"swept; set EMP_IDEMPOTENCY_SECONDS to {shown} or less")

    @classmethod
    def from_env(cls, **overrides: object) -> WebSettings:
        admin = {t.strip() for t in (defaults.env("EMP_ADMIN_TOKENS") or "").split(",")}
        default_limits = _default_limits()
        settings = cls(
            default_limits=default_limits,
            customer_limits=parse_limits(defaults.env("EMP_CUSTOMER_LIMITS"), default_limits),
            customer_tokens=_pairs(defaults.env("EMP_API_TOKENS")),
            admin_tokens={t for t in admin if t},
            # At least 1 each: 0 processes bound the port and answered nothing, 0
            # connections fell back to a thread per WebSocket, a 0-byte body limit
            # refused every POST, 0 threads failed the webhook service's boot.
            max_body_bytes=defaults.env_at_least("EMP_MAX_BODY_BYTES", MAX_BODY_BYTES, 1, int),
            threads=defaults.env_at_least("EMP_WEB_THREADS", WEB_THREADS, 1, int),
            api_processes=defaults.env_at_least("EMP_API_PROCESSES", API_PROCESSES, 1, int),
            api_connections=defaults.env_at_least("EMP_API_CONNECTIONS", API_CONNECTIONS, 1,
                                                  int),
            idempotency_seconds=defaults.env_int("EMP_IDEMPOTENCY_SECONDS", IDEMPOTENCY_SECONDS),
            ws_ping_seconds=_positive("EMP_WS_PING_SECONDS", WS_PING_SECONDS),
            metrics_public=defaults.env_flag("EMP_METRICS_PUBLIC"),
            cors_origins=parse_origins(defaults.env("EMP_CORS_ORIGINS")),
        )
        for name, value in overrides.items():
            if value is not None:
                setattr(settings, name, value)
        return settings
