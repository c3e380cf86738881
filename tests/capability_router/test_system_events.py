"""The system stream's ``worker_status`` events, against a real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from capability_router.profile import WorkerProfile
from capability_router.registry import SYSTEM_EVENTS_KEY, WorkerRegistry


def test_worker_status_events_are_stamped_with_redis_clock_whatever_the_host_s(
        client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: a worker on a host whose clock runs 3 min ahead, then one on a host 3 min
    behind, each announcing itself, its service going unhealthy and healthy again, and
    leaving. Before, each ``worker_status`` event's ``timestamp`` was its host's clock:
    180 s off its own stream entry's id and off every other stamp (heartbeats, job
    events, machine reports are on Redis' clock), so a consumer ordering by it put the
    ahead worker's "offline" after events that followed it. Now every timestamp is
    Redis' clock: within a second of the time its entry id carries."""
    real = time.time
    for worker_id, skew in (("ahead", 180), ("behind", -180)):
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        registry = WorkerRegistry(client)
        profile = WorkerProfile(worker_id=worker_id, machine_id="m1", services=["simulation"])
        registry.heartbeat(profile.as_dict(), ["standard"], [], 60_000, first=True)
        registry.service_changed(worker_id, "m1", "no GPU")
        registry.service_changed(worker_id, "m1", None)
        registry.leave(worker_id, "m1")
    events = [(int(entry_id.split("-")[0]), json.loads(fields["data"]))
              for entry_id, fields in client.xrange(SYSTEM_EVENTS_KEY)
              if fields["event"] == "worker_status"]
    assert [(e["worker_id"], e["status"]) for _, e in events] == [
        (worker_id, status) for worker_id in ("ahead", "behind")
        for status in ("online", "service_unhealthy", "service_healthy", "offline")]
    for entry_ms, event in events:
        assert abs(event["timestamp"] - entry_ms) < 1000, (event, entry_ms)
