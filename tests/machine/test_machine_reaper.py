"""The reaper and the machine status records, against a real Redis."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile
from capability_router.registry import SYSTEM_EVENTS_KEY, WorkerRegistry
from machine.gpus import GpuInventory
from machine.reaper import REASON, reap_gone_machines, reap_periodically
from machine.status import (
    MACHINES_KEY,
    machine_key,
    machines,
    now_ms,
    publish,
    publish_offline,
    read_machine,
)


def report(machine_id: str, age_ms: int = 0, **fields: object) -> dict:
    return {"machine_id": machine_id, "status": "online", "last_report": now_ms() - age_ms,
            "gpus": [{"index": 0, "memory_gb": 24}], "workers": [], "services": [], **fields}


def running_job(client: redis.Redis, job_id: str, machine_id: str) -> None:
    """A job claimed and started by worker ``<machine_id>-w`` of ``machine_id``."""
    queue = QueueFunctions(client, "default")
    profile = WorkerProfile(worker_id=f"{machine_id}-w", machine_id=machine_id,
                            services=["simulation"])
    queue.register_worker(profile)
    queue.enqueue(job_id, JobSpec.from_fields({"service_required": "simulation"}),
                  json.dumps({"id": job_id}))
    claimed = queue.claim(profile.signature, profile.worker_id, 600_000)
    assert isinstance(claimed, Claimed) and claimed.job_id == job_id
    assert queue.start(job_id, claimed.attempt, f"{profile.worker_id}@host", machine_id) == "ok"
    WorkerRegistry(client).heartbeat(profile.as_dict(), ["default"], [job_id], 600_000,
                                     first=True)


def test_status_records_round_trip(client: redis.Redis) -> None:
    publish(client, report("m1"), emit=True)
    record = read_machine(client, "m1")
    assert record["status"] == "online" and record["gpus"] == [{"index": 0, "memory_gb": 24}]
    assert [m["machine_id"] for m in machines(client)] == ["m1"]
    publish_offline(client, report("m1"), retention_seconds=60)
    assert read_machine(client, "m1")["status"] == "offline"
    assert client.zscore(MACHINES_KEY, "m1") is None and client.ttl(machine_key("m1")) > 0
    events = [json.loads(f["data"]) for _, f in client.xrange(SYSTEM_EVENTS_KEY)
              if f["event"] == "machine_status"]
    assert [e["status"] for e in events] == ["online", "offline"]


def test_a_silent_machine_is_reaped_and_its_jobs_requeued(client: redis.Redis) -> None:
    running_job(client, "job-1", "dead")
    running_job(client, "job-2", "alive")
    publish(client, report("dead", age_ms=40_000), emit=False)
    publish(client, report("alive"), emit=False)
    results = reap_gone_machines(client, stale_after_seconds=30)
    assert results == [{"machine_id": "dead", "workers": ["dead-w"], "requeued_jobs": ["job-1"]}]
    assert client.hget("emp:{default}:job:job-1", "status") == "pending"
    assert client.hget("emp:{default}:job:job-2", "status") == "in_progress"
    dead = read_machine(client, "dead")
    assert dead["status"] == "gone" and dead["reason"] == REASON
    assert client.zrange(MACHINES_KEY, 0, -1) == ["alive"]
    assert [w["worker_id"] for w in WorkerRegistry(client).workers()] == ["alive-w"]
    gone = [json.loads(f["data"]) for _, f in client.xrange(SYSTEM_EVENTS_KEY)
            if f["event"] == "machine_status"]
    assert gone[-1]["status"] == "gone" and gone[-1]["requeued_jobs"] == ["job-1"]
    assert reap_gone_machines(client, stale_after_seconds=30) == []  # once only


def test_many_reapers_reap_a_machine_once(client: redis.Redis, redis_server) -> None:  # noqa: ANN001
    running_job(client, "job-1", "dead")
    publish(client, report("dead", age_ms=60_000), emit=False)
    results: list[list[dict]] = []
    barrier = threading.Barrier(8)

    def reaper() -> None:
        own = redis.Redis(port=redis_server.port, decode_responses=True)
        barrier.wait()
        results.append(reap_gone_machines(own, stale_after_seconds=30))
        own.close()

    threads = [threading.Thread(target=reaper) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0] * 7 + [1]


def test_a_machine_that_reports_again_is_left_alone(client: redis.Redis) -> None:
    publish(client, report("slow", age_ms=40_000), emit=False)
    publish(client, report("slow"), emit=False)  # it reported after all
    assert reap_gone_machines(client, stale_after_seconds=30) == []
    assert read_machine(client, "slow")["status"] == "online"
    publish(client, report("me", age_ms=40_000), emit=False)
    assert reap_gone_machines(client, stale_after_seconds=30, exclude="me") == []


def test_periodic_reaping_stops_when_told(client: redis.Redis) -> None:
    publish(client, report("dead", age_ms=40_000), emit=False)
    stop = threading.Event()
    thread = threading.Thread(target=reap_periodically, args=(client, 30, 0.05, stop))
    thread.start()
    try:
        for _ in range(100):
            if client.zscore(MACHINES_KEY, "dead") is None:
                break
            stop.wait(0.05)
        assert read_machine(client, "dead")["status"] == "gone"
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_each_machine_is_judged_by_its_own_silence_limit(client: redis.Redis) -> None:
    """Tried: a reaper whose own limit is 6 s (it reports every 2 s) and three machines
    silent for 10 s: one that reports every 10 s (limit 30 s, running a job), one whose
    limit is 6 s, and one that declares none. The reaper judged all three by its own
    6 s: the slow reporter, alive, was marked gone and its job started again elsewhere.
    Now it is left alone; the other two are gone."""
    for machine_id in ("slow-box", "quick-box", "old-box"):
        client.delete(machine_key(machine_id))
        client.zrem(MACHINES_KEY, machine_id)
    running_job(client, "slow-job", "slow-box")
    publish(client, report("slow-box", age_ms=10_000, stale_seconds=30), emit=False)
    publish(client, report("quick-box", age_ms=10_000, stale_seconds=6), emit=False)
    publish(client, report("old-box", age_ms=10_000), emit=False)
    reaped = {r["machine_id"] for r in reap_gone_machines(client, stale_after_seconds=6)}
    assert reaped == {"quick-box", "old-box"}
    assert read_machine(client, "slow-box")["status"] == "online"
    assert client.hget("emp:{default}:job:slow-job", "status") == "in_progress"


class _SkewedClock:
    """Stands in for ``machine.status``'s ``time`` module: this host's wall clock off by
    ``offset`` seconds (a rented machine without NTP, or one whose clock jumped)."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return time.time() + self.offset


def test_a_machine_whose_clock_is_off_neither_reaps_nor_is_reaped(
        client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: a machine whose wall clock ran 2 minutes fast ran its reaper (as every
    machine does each report period): it marked a healthy machine that had just reported
    gone and sent its running job back to pending, to run twice. A machine whose clock
    ran 2 minutes slow published reports that every other reaper took as 2 minutes
    old, so it was reaped while it reported. Reports and reapers now use Redis's clock."""
    import machine.status as status
    from machine.runtime import MachineRuntime
    from machine.settings import MachineSettings

    running_job(client, "healthy-job", "healthy")
    publish(client, report("healthy"), emit=False)
    monkeypatch.setattr(status, "time", _SkewedClock(+120))
    assert reap_gone_machines(client, stale_after_seconds=30) == []
    assert client.hget("emp:{default}:job:healthy-job", "status") == "in_progress"

    url = f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"
    settings = MachineSettings("slow-clock", "simulation:1", redis_url=url,
                               run_dir=Path("/nonexistent"))
    slow = MachineRuntime(settings, GpuInventory("mock", []))
    monkeypatch.setattr(status, "time", _SkewedClock(-120))
    slow._publish(False)  # one periodic report of the slow-clock machine
    monkeypatch.undo()
    assert reap_gone_machines(client, stale_after_seconds=30) == []
    assert read_machine(client, "slow-clock")["status"] == "online"


def test_machine_status_events_are_stamped_with_redis_clock_whatever_the_host_s(
        client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: on a host whose clock runs 3 min ahead, a machine publishing its status
    (its report stamped with Redis' clock, as the runtime does), stopping, and one whose
    programs died ended as gone. Before, each ``machine_status`` event's ``timestamp``
    was the host's clock, 180 s off its stream entry's id and its own record's
    ``last_report``/``ended_at``. Now it is Redis' clock."""
    from capability_router.functions import redis_now_ms
    from machine.reaper import end_failed_machine

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 180)
    publish(client, {**report("m1"), "last_report": redis_now_ms(client)}, emit=True)
    publish(client, {k: v for k, v in report("m2").items() if k != "last_report"}, emit=True)
    publish_offline(client, report("m1"), retention_seconds=60)
    end_failed_machine(client, "m2", "supervisord died", retention_seconds=60)
    events = [(int(entry_id.split("-")[0]), json.loads(fields["data"]))
              for entry_id, fields in client.xrange(SYSTEM_EVENTS_KEY)
              if fields["event"] == "machine_status"]
    assert [(e["machine_id"], e["status"]) for _, e in events] == [
        ("m1", "online"), ("m2", "online"), ("m1", "offline"), ("m2", "gone")]
    for entry_ms, event in events:
        assert abs(event["timestamp"] - entry_ms) < 1000, (event, entry_ms)
    assert client.zscore(MACHINES_KEY, "m2") is None  # gone: out of the live set
