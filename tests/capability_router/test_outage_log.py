"""One outage, one pair of lines, even when a call's timeout runs out just after it ends.

CI saw the webhook service say "Redis unreachable" twice for one 8 s SIGSTOP: when
Redis was continued, one thread's call was answered and ended the outage, and
another's 2 s timeout ran out in the milliseconds before Redis reached its command.
That race cannot be staged reliably against a real Redis, so these drive the shared
``OutageLog`` with the errors redis-py raises, in that order.
"""

from __future__ import annotations

import logging
import time

import pytest
import redis
from kombu.exceptions import OperationalError

from capability_router.outages import OutageLog

STARTED, ENDED = "test: Redis unreachable (%s)", "test: Redis reachable again"


class Lines:
    """The lines logged so far (``caplog.messages`` is a fresh list per read)."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def __call__(self) -> list[str]:
        return self.caplog.messages


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    return Lines(caplog)


def outage_log(timeout_seconds: float) -> OutageLog:
    return OutageLog(logging.getLogger("test.outage"), STARTED, ENDED,
                     timeout_seconds=timeout_seconds)


def timeout() -> redis.TimeoutError:
    return redis.TimeoutError("Timeout reading from 127.0.0.1:6379")


def test_a_timeout_that_began_before_the_end_does_not_start_another_outage(lines) -> None:
    """Tried: an outage (a timeout), its end, then at once a timeout (bare, and wrapped
    in kombu's OperationalError as the publish path raises it). Before the fix each
    started a second outage: a second "unreachable" line and gated requests."""
    log = outage_log(timeout_seconds=60)
    log.failed(timeout())
    log.succeeded()
    log.failed(timeout())
    try:
        raise OperationalError("publish failed") from timeout()
    except OperationalError as wrapped:
        log.failed(wrapped)
    assert not log.down
    assert lines() == ["test: Redis unreachable (TimeoutError: Timeout reading from "
                     "127.0.0.1:6379)", ENDED]


def test_a_refused_connection_right_after_the_end_is_a_new_outage(lines) -> None:
    """A refused connection fails at once, so it began after the end: Redis went away
    again, and that is said."""
    log = outage_log(timeout_seconds=60)
    log.failed(timeout())
    log.succeeded()
    log.failed(redis.ConnectionError("Connection refused"))
    assert log.down
    assert lines()[-1] == "test: Redis unreachable (ConnectionError: Connection refused)"
    assert len(lines()) == 3


def test_a_timeout_a_socket_timeout_after_the_end_is_a_new_outage(lines) -> None:
    """A timeout that arrives a full socket timeout after the end began after it."""
    log = outage_log(timeout_seconds=0.2)
    log.failed(timeout())
    log.succeeded()
    time.sleep(0.3)
    log.failed(timeout())
    assert log.down
    assert lines().count(STARTED % "TimeoutError: Timeout reading from 127.0.0.1:6379") == 2
