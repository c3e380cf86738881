"""A client's resume id (``last_event_id``), checked before anything is subscribed.

Event ids are Redis stream ids, ``<ms>-<seq>`` or ``<ms>`` (both unsigned
64-bit). Anything else made Redis raise "Invalid stream ID" in the middle of
a replay, after the socket had answered ``subscribed``: the session never
left its replay state and held every later event in memory. Checking the id
first turns that into an error naming the field, and nothing subscribed.

The largest id (both parts 2**64-1) is refused too: a replay reads *after*
the id, and Redis has no id after that one ("invalid start ID for the
interval"). An id with only one part at 2**64-1 has a next id and is kept.
"""

from __future__ import annotations

import re

#: ``<ms>`` or ``<ms>-<seq>``, decimal.
STREAM_ID = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
#: Largest part of a stream id Redis accepts.
MAX_PART = 2**64 - 1
#: The name clients send it under (message field, query parameter).
FIELD = "last_event_id"


class BadResumeId(ValueError):
    """A resume id that is no stream id; the message names the field and the value."""

    def __init__(self, value: object, field: str = FIELD, message: str | None = None) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:80] + "..."
        super().__init__(message or f"{field} {shown} is not an event id (a stream id: "
                         "<ms>-<seq> or <ms>)")
        self.field = field


def parse_resume_id(value: object, field: str = FIELD) -> str | None:
    """``value`` when it is a stream id; None when absent (None or ""); BadResumeId else."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadResumeId(value, field)
    match = STREAM_ID.fullmatch(value)
    if match is None:
        raise BadResumeId(value, field)
    parts = [int(part) for part in match.groups() if part]
    if any(part > MAX_PART for part in parts) or parts == [MAX_PART, MAX_PART]:
        raise BadResumeId(value, field)
    return value
