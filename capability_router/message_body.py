"""A job's payload is kept once: in the body of the Celery message stored with the job.

kombu base64-encodes a message body (a third larger), and the job record
carried the payload again as a field, so a job held its payload about 2.3
times. The transport stores a JSON body as plain text (``plain_body``) and
leaves ``payload`` out of the record when the body holds the same payload;
readers of the record take it from the body (``payload_of``).
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from typing import Any

from kombu.exceptions import DecodeError
from kombu.transport import virtual

JSON_CONTENT = "application/json"


def plain_body(message: dict[str, Any]) -> bool:
    """Store a base64 body as its text, in place; True when the body is JSON text.

    kombu reads a body whose ``body_encoding`` is unset as it is, so the
    worker decodes the message as before. A binary body stays base64.
    """
    properties = message.get("properties") or {}
    body = message.get("body")
    if properties.get("body_encoding") == "base64":
        try:
            body = base64.b64decode(body, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            return False
        message["body"] = body
        message["properties"] = {**properties, "body_encoding": None}
    elif properties.get("body_encoding"):
        return False
    return message.get("content-type") == JSON_CONTENT and isinstance(body, str)


def body_payload(body: str) -> dict[str, Any] | None:
    """The job payload a JSON task body carries: its kwargs, positional args as ``args``
    (as ``EmpTask.job_spec`` builds it); None when the body is not a task body."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    if isinstance(decoded, list) and len(decoded) >= 2:  # Celery's protocol 2
        args, kwargs = decoded[0], decoded[1]
    elif isinstance(decoded, dict):  # protocol 1
        args, kwargs = decoded.get("args"), decoded.get("kwargs")
    else:
        return None
    if not isinstance(kwargs, dict) or not isinstance(args, (list, type(None))):
        return None
    payload = dict(kwargs)
    if args:
        payload["args"] = list(args)
    return payload


def payload_of(message_json: str) -> dict[str, Any] | None:
    """The payload of a stored job message (JSON text); None if it holds none."""
    try:
        message = json.loads(message_json)
    except ValueError:
        return None
    if not isinstance(message, dict) or not plain_body(message):
        return None
    return body_payload(message["body"])


class CheckedMessage(virtual.Message):
    """kombu's message of a channel, whose body its ``body_encoding`` fails to decode
    (not base64 though it says so: a producer writing kombu's format by hand) held as a
    decode error (kombu's ``Message.errors``), as for a broken compression: the
    consumer's ``on_decode_error`` gets it (so a worker fails the job saying why). kombu
    raised it while building the message, out of the worker's event loop, which
    ended with "Unrecoverable error" and left the job assigned."""

    def __init__(self, payload: dict[str, Any], channel: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(payload, channel=channel, **kwargs)
            return
        except (binascii.Error, ValueError, TypeError) as exc:
            properties = payload.get("properties") or {}
            encoding = properties.get("body_encoding")
            error = DecodeError(f"body is not valid {encoding} ({type(exc).__name__}: {exc})")
        super().__init__({**payload,  # the body as it came, for Celery's log line
                          "properties": {**properties, "body_encoding": None}},
                         channel=channel, **kwargs)
        try:
            raise error
        except DecodeError:
            self.errors.append(sys.exc_info())
