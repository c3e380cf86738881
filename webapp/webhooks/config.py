"""Tunables of the webhook service, each with its environment variable.

Defaults are the original service's (3 attempts, 1 s initial delay, x2,
30 s cap, 30 s request timeout, disconnect after 10 consecutive failures,
probe again after 5 min, one progress event per job per second); tests
shorten them through the environment.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field

from emp_tasks.defaults import env, env_at_least, env_flag

#: Attempts of a delivery answered with a non-transient error (``EMP_WEBHOOK_MAX_ATTEMPTS``).
MAX_ATTEMPTS = 3
#: First retry delay, ms (``EMP_WEBHOOK_INITIAL_DELAY_MS``).
INITIAL_DELAY_MS = 1000
#: Growth of the delay per attempt (``EMP_WEBHOOK_BACKOFF_MULTIPLIER``).
BACKOFF_MULTIPLIER = 2.0
#: Longest retry delay, ms (``EMP_WEBHOOK_MAX_DELAY_MS``).
MAX_DELAY_MS = 30_000
#: ms after its first attempt from which a delivery the receiver keeps answering with a
#: transient status (5xx, 408, 429) is recorded failed so the hook's queue moves on
#: (``EMP_WEBHOOK_GIVE_UP_AFTER_MS``). A receiver that does not answer at all is waited
#: for without limit (its deliveries queue, up to the backlog).
GIVE_UP_AFTER_MS = 3_600_000
#: Seconds a replaced secret still signs deliveries, beside the new one, after a
#: ``PUT`` changed it (``EMP_WEBHOOK_SECRET_OVERLAP_SECONDS``).
SECRET_OVERLAP_SECONDS = 24 * 3600.0
#: Consecutive failures after which a hook is disconnected (``EMP_WEBHOOK_DISCONNECT_AFTER``).
DISCONNECT_AFTER = 10
#: Seconds a disconnected hook waits before the next probe (``EMP_WEBHOOK_RECONNECT_SECONDS``).
RECONNECT_SECONDS = 300.0
#: Shortest gap between two progress events of one job to one hook, ms
#: (``EMP_WEBHOOK_PROGRESS_INTERVAL_MS``).
PROGRESS_INTERVAL_MS = 1000
#: HTTP timeout of one attempt, seconds (``EMP_WEBHOOK_TIMEOUT_SECONDS``).
TIMEOUT_SECONDS = 30.0
#: Deliveries a hook may have waiting; newer events are dropped and counted
#: (``EMP_WEBHOOK_MAX_BACKLOG``).
MAX_BACKLOG = 10_000
#: Finished deliveries kept per hook for the deliveries endpoints (``EMP_WEBHOOK_HISTORY``).
HISTORY_PER_HOOK = 1000
#: Seconds a finished delivery record is kept at most (``EMP_WEBHOOK_HISTORY_SECONDS``).
HISTORY_SECONDS = 7 * 24 * 3600
#: Entries of the all-hooks recent deliveries index (``EMP_WEBHOOK_RECENT``).
RECENT_MAX = 1000
#: Delivery threads of one service instance (``EMP_WEBHOOK_DISPATCHERS``).
DISPATCHERS = 8
#: Seconds between refreshes of the list of pools (``EMP_WEBHOOK_NAMESPACE_REFRESH_SECONDS``).
NAMESPACE_REFRESH_SECONDS = 5.0
#: Seconds an event may sit unacknowledged with another consumer before this
#: one takes it over (``EMP_WEBHOOK_CLAIM_IDLE_SECONDS``).
CLAIM_IDLE_SECONDS = 60.0
#: How long the consuming instance keeps that role without renewing it; another
#: instance takes over after it (``EMP_WEBHOOK_CONSUMER_LEASE_SECONDS``).
CONSUMER_LEASE_SECONDS = 10.0
#: Consumer group on every event stream.
GROUP = "emp-webhooks"


def _count(name: str, default: int) -> int:
    """A count or a number of ms that must be at least 1."""
    return env_at_least(name, default, 1, int)


def _seconds(name: str, default: float) -> float:
    """A number of seconds that must be above 0."""
    return env_at_least(name, default, 0, above=True)


def parse_networks(text: str | None) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``"127.0.0.0/8, ::1"`` -> networks; a malformed item raises ValueError naming it."""
    networks = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"EMP_WEBHOOK_ALLOWED_NETWORKS item {item!r} is not a network") from None
    return tuple(networks)


@dataclass
class WebhookConfig:
    """What the delivery side needs; see the module constants for units and variables."""

    max_attempts: int = MAX_ATTEMPTS
    initial_delay_ms: int = INITIAL_DELAY_MS
    backoff_multiplier: float = BACKOFF_MULTIPLIER
    max_delay_ms: int = MAX_DELAY_MS
    give_up_after_ms: int = GIVE_UP_AFTER_MS
    disconnect_after: int = DISCONNECT_AFTER
    reconnect_seconds: float = RECONNECT_SECONDS
    progress_interval_ms: int = PROGRESS_INTERVAL_MS
    timeout_seconds: float = TIMEOUT_SECONDS
    secret_overlap_seconds: float = SECRET_OVERLAP_SECONDS
    #: How long a dispatcher owns a hook while it sends; must outlast the
    #: request (``EMP_WEBHOOK_LEASE_SECONDS``, default timeout + 10 s).
    lease_seconds: float = TIMEOUT_SECONDS + 10
    max_backlog: int = MAX_BACKLOG
    history_per_hook: int = HISTORY_PER_HOOK
    history_seconds: float = HISTORY_SECONDS
    recent_max: int = RECENT_MAX
    dispatchers: int = DISPATCHERS
    namespace_refresh_seconds: float = NAMESPACE_REFRESH_SECONDS
    claim_idle_seconds: float = CLAIM_IDLE_SECONDS
    consumer_lease_seconds: float = CONSUMER_LEASE_SECONDS
    #: Deliver to private, loopback, link-local and other non-global
    #: addresses (``EMP_WEBHOOK_ALLOW_PRIVATE=1``).
    allow_private: bool = False
    #: Non-global networks allowed all the same (``EMP_WEBHOOK_ALLOWED_NETWORKS``).
    allowed_networks: tuple = ()
    #: Name of this instance: its consumer name and lease owner; unique per
    #: running instance (``EMP_WEBHOOK_INSTANCE``, default the host name).
    instance: str = field(default_factory=socket.gethostname)

    @classmethod
    def from_env(cls) -> WebhookConfig:
        """Read every ``EMP_WEBHOOK_*`` variable; a malformed value, or one the service
        cannot work with (a 0 s consumer lease failed every read of the event log, a nan
        timeout killed each dispatcher), raises ValueError naming it. The retry settings
        have the bounds of a hook's own ``retry_config``."""
        timeout = env_at_least("EMP_WEBHOOK_TIMEOUT_SECONDS", TIMEOUT_SECONDS, 0, above=True)
        lease = env_at_least("EMP_WEBHOOK_LEASE_SECONDS", timeout + 10, 0, above=True)
        if lease <= timeout:
            # A lease that ends mid-request lets a second dispatcher send the same delivery
            # beside the first: duplicates at once, and the hook's order lost.
            raise ValueError(f"EMP_WEBHOOK_LEASE_SECONDS ({lease:g}) must be longer than "
                             f"EMP_WEBHOOK_TIMEOUT_SECONDS ({timeout:g}): a dispatcher owns "
                             "a hook for the lease while its request lasts up to the timeout")
        return cls(
            max_attempts=_count("EMP_WEBHOOK_MAX_ATTEMPTS", MAX_ATTEMPTS),
            initial_delay_ms=_count("EMP_WEBHOOK_INITIAL_DELAY_MS", INITIAL_DELAY_MS),
            backoff_multiplier=env_at_least("EMP_WEBHOOK_BACKOFF_MULTIPLIER",
                                            BACKOFF_MULTIPLIER, 1),
            max_delay_ms=_count("EMP_WEBHOOK_MAX_DELAY_MS", MAX_DELAY_MS),
            give_up_after_ms=_count("EMP_WEBHOOK_GIVE_UP_AFTER_MS", GIVE_UP_AFTER_MS),
            disconnect_after=_count("EMP_WEBHOOK_DISCONNECT_AFTER", DISCONNECT_AFTER),
            reconnect_seconds=_seconds("EMP_WEBHOOK_RECONNECT_SECONDS", RECONNECT_SECONDS),
            progress_interval_ms=env_at_least("EMP_WEBHOOK_PROGRESS_INTERVAL_MS",
                                              PROGRESS_INTERVAL_MS, 0, int),
            timeout_seconds=timeout,
            secret_overlap_seconds=env_at_least("EMP_WEBHOOK_SECRET_OVERLAP_SECONDS",
                                                SECRET_OVERLAP_SECONDS, 0),
            lease_seconds=lease,
            max_backlog=_count("EMP_WEBHOOK_MAX_BACKLOG", MAX_BACKLOG),
            history_per_hook=_count("EMP_WEBHOOK_HISTORY", HISTORY_PER_HOOK),
            history_seconds=_seconds("EMP_WEBHOOK_HISTORY_SECONDS", HISTORY_SECONDS),
            recent_max=_count("EMP_WEBHOOK_RECENT", RECENT_MAX),
            dispatchers=_count("EMP_WEBHOOK_DISPATCHERS", DISPATCHERS),
            namespace_refresh_seconds=_seconds("EMP_WEBHOOK_NAMESPACE_REFRESH_SECONDS",
                                               NAMESPACE_REFRESH_SECONDS),
            claim_idle_seconds=_seconds("EMP_WEBHOOK_CLAIM_IDLE_SECONDS", CLAIM_IDLE_SECONDS),
            consumer_lease_seconds=_seconds("EMP_WEBHOOK_CONSUMER_LEASE_SECONDS",
                                            CONSUMER_LEASE_SECONDS),
            allow_private=env_flag("EMP_WEBHOOK_ALLOW_PRIVATE"),
            allowed_networks=parse_networks(env("EMP_WEBHOOK_ALLOWED_NETWORKS")),
            instance=env("EMP_WEBHOOK_INSTANCE") or socket.gethostname() or f"pid{os.getpid()}",
        )

    def retry_defaults(self) -> dict[str, float]:
        """The ``retry_config`` of a hook that names none."""
        return {
            "max_attempts": self.max_attempts, "initial_delay_ms": self.initial_delay_ms,
            "backoff_multiplier": self.backoff_multiplier, "max_delay_ms": self.max_delay_ms,
            "give_up_after_ms": self.give_up_after_ms,
        }
