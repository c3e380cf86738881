"""The monitor's live stream carries the intelligence leader's placement events."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests

from capability_router.keys import Keys
from capability_router.prediction.directives import DIRECTIVE_EVENT, PRELOAD, Directive, publish

pytestmark = pytest.mark.timeout(120)


def test_a_placement_directive_reaches_the_monitors_event_stream_with_its_reason(
        start_server: Callable[..., Any], client: redis.Redis) -> None:
    monitor = start_server("monitor")
    publish(client, Directive(PRELOAD, "sdxl", "standard", "w0", "first"))
    publish(client, Directive(PRELOAD, "flux", "standard", "w1", "flux: 3.0 arrivals expected",
                              for_pool="fast"))
    first, second = [entry_id for entry_id, fields in client.xrange(Keys("standard").events)
                     if fields["event"] == DIRECTIVE_EVENT]
    with requests.get(monitor.base + "/emp/events", stream=True, timeout=10,
                      headers={"Last-Event-ID": first}) as reply:
        frame: dict[str, str] = {}
        for line in reply.iter_lines(decode_unicode=True):
            if line.startswith(("id: ", "data: ")):
                key, _, value = line.partition(": ")
                frame[key] = value
            if "data" in frame:
                break
    message = json.loads(frame["data"])
    assert frame["id"] == second and message["type"] == DIRECTIVE_EVENT
    assert message["pool"] == "standard" and message["model"] == "flux"
    assert message["worker"] == "w1" and message["for_pool"] == "fast"
    assert message["reason"] == "flux: 3.0 arrivals expected"
    # The monitor's pages that refresh on events still answer (an unknown type is harmless).
    assert requests.get(monitor.base + "/emp/api/queue", timeout=10).status_code == 200
