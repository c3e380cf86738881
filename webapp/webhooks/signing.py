"""Signatures of a delivery, both ways receivers verify them.

- The original's: ``X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, body)>``,
  keyed with the secret's UTF-8 bytes exactly as registered (a ``whsec_``
  secret included, prefix and all), as the original service did.
- Standard Webhooks: ``webhook-id`` (the delivery id, the same on every
  retry so receivers can drop duplicates), ``webhook-timestamp`` (seconds,
  fresh on every attempt) and ``webhook-signature: v1,<base64>`` from the
  ``standardwebhooks`` package. A ``whsec_`` secret is base64 of the key, as
  the standard says; any other secret is used as its UTF-8 bytes, so a
  receiver verifies with ``Webhook(secret.encode())``.

Rotation: for a while after a ``PUT`` replaced a hook's secret, the replaced
one signs too (``webhook-signature: v1,<new> v1,<old>``, the standard's way),
so a receiver still verifying with the old secret accepts deliveries until it
is switched over; ``X-Webhook-Signature`` uses the new secret only. The
overlap ends on Redis' clock (``previous_secret_until``), and the function
library then deletes the replaced secret from the hook (``webhooks.lua``,
``drop_ended_secret``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


def generate_secret() -> str:
    """A new Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def standard_key(secret: str) -> Webhook:
    """The Standard Webhooks signer of a registered secret."""
    return Webhook(secret if secret.startswith("whsec_") else secret.encode())


def signing_secrets(hook: dict[str, str], now_ms: int) -> list[str]:
    """A stored hook's secrets that sign its deliveries at ``now_ms`` (Redis' clock: a
    host's own drifts): its secret, then the one it replaced while that one's overlap
    lasts (none without a secret)."""
    secret = hook.get("secret")
    if not secret:
        return []
    previous = hook.get("previous_secret")
    until = hook.get("previous_secret_until") or ""
    if previous and previous != secret and until.isdigit() and int(until) > now_ms:
        return [secret, previous]
    return [secret]


def legacy_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: the original's X-Webhook-Signature value."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_headers(secret: str, delivery_id: str, body: str,
                      at: datetime | None = None, previous: tuple[str, ...] = ()
                      ) -> dict[str, str]:
    """Both signatures of one attempt of ``body`` (the exact text sent); ``previous``
    secrets (a rotation's) add their Standard Webhooks signatures after the first."""
    at = at or datetime.now(UTC)
    return {
        "X-Webhook-Signature": legacy_signature(secret, body.encode()),
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(standard_key(key).sign(delivery_id, at, body)
                                      for key in (secret, *previous)),
    }
