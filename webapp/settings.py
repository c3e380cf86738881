"""Settings of the web services, read from the environment (12-factor).

Every name has a default; ``conf/emp.env.example`` lists them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from emp_tasks import defaults

#: Ports of the original system.
API_PORT = 3331
WEBHOOK_PORT = 3332
#: Largest request body accepted, bytes (``EMP_MAX_BODY_BYTES``).
MAX_BODY_BYTES = 1024 * 1024
#: Threads of each WSGI process; each open WebSocket holds one (``EMP_WEB_THREADS``).
WEB_THREADS = 64
#: API server processes (``EMP_API_PROCESSES``; default one per CPU core).
API_PROCESSES = os.cpu_count() or 1
#: Seconds an Idempotency-Key (or socket message_id) and its answer are kept.
IDEMPOTENCY_SECONDS = 24 * 3600


def _pairs(text: str | None) -> dict[str, str]:
    """``"a=x,b=y"`` -> ``{"a": "x", "b": "y"}``; malformed items raise ValueError."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        token, sep, customer = item.partition("=")
        if not sep or not token.strip() or not customer.strip():
            raise ValueError(f"EMP_API_TOKENS item {item!r} is not token=customer_id")
        out[token.strip()] = customer.strip()
    return out


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
    #: Retention of idempotency keys, seconds (``EMP_IDEMPOTENCY_SECONDS``).
    idempotency_seconds: int = IDEMPOTENCY_SECONDS

    @property
    def open(self) -> bool:
        """True when no token is configured: every request is an admin's."""
        return not self.customer_tokens and not self.admin_tokens

    @classmethod
    def from_env(cls, **overrides: object) -> WebSettings:
        admin = {t.strip() for t in (defaults.env("EMP_ADMIN_TOKENS") or "").split(",")}
        settings = cls(
            customer_tokens=_pairs(defaults.env("EMP_API_TOKENS")),
            admin_tokens={t for t in admin if t},
            max_body_bytes=int(defaults.env("EMP_MAX_BODY_BYTES", str(MAX_BODY_BYTES))),
            threads=int(defaults.env("EMP_WEB_THREADS", str(WEB_THREADS))),
            api_processes=int(defaults.env("EMP_API_PROCESSES", str(API_PROCESSES))),
            idempotency_seconds=int(defaults.env("EMP_IDEMPOTENCY_SECONDS",
                                                 str(IDEMPOTENCY_SECONDS))),
        )
        for name, value in overrides.items():
            if value is not None:
                setattr(settings, name, value)
        return settings
