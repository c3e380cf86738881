"""The data behind the monitor's Machines and Webhooks views, against real Redis and processes.

Machines: ``emp machine`` (mock GPUs, simulation workers under supervisor)
and bare ``emp worker`` processes, stopped cleanly, SIGKILLed and reaped the
way machines end. Webhooks: the real ``emp webhooks`` service delivering to
receivers that are down and come back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from capability_router.keys import Keys
from capability_router.registry import WorkerRegistry
from conftest import wait_for
from emp_tasks.producer import get_job, submit
from machine.reaper import REASON, reap_gone_machines
from machine.status import (
    ENDED_MACHINES_KEY,
    MACHINES_KEY,
    ended_machines,
    machine_key,
    machines,
    now_ms,
    publish,
    publish_offline,
    read_machine,
)
from webapp.monitor.machines import NO_MACHINE, machines_view
from webapp.monitor.webhooks import hook_store, reconnect, webhooks_view

ROOT = Path(__file__).resolve().parents[2]

# -- machines: helpers ------------------------------------------------------------------


def report(machine_id: str, age_ms: int = 0, workers: list[dict[str, Any]] | None = None,
           **fields: Any) -> dict[str, Any]:
    """A machine report as ``emp machine`` writes it (workers: supervisor's programs)."""
    return {"machine_id": machine_id, "status": "online", "hostname": "host-" + machine_id,
            "health_url": f"http://{machine_id}:9090", "started_at": now_ms() - 60_000,
            "last_report": now_ms() - age_ms, "uptime_seconds": 60.0, "gpu_source": "mock",
            "gpus": [{"index": 0, "memory_gb": 24}, {"index": 1, "memory_gb": 24}],
            "workers": workers or [], "services": [], "log_dropped": 0, **fields}


def program(machine_id: str, n: int, state: str = "RUNNING",
            started: float | None = None) -> dict[str, Any]:
    """A worker program entry of a machine report."""
    return {"name": f"simulation-{n}", "role": "worker", "kind": "simulation",
            "worker_id": f"{machine_id}-simulation-{n}", "gpu": n, "port": None,
            "state": state, "pid": 1000 + n,
            "started": int(time.time() - 30) if started is None else int(started)}


def heartbeat(client: redis.Redis, worker_id: str, machine_id: str | None,
              jobs: list[str] | None = None, **profile: Any) -> None:
    """A live registry record, as a worker's transport writes it."""
    full = {"worker_id": worker_id, "machine_id": machine_id, "services": ["simulation"],
            "hardware": {"gpu_memory_gb": 24, "gpu_model": "Mock GPU"}, "models": {},
            "customer_access": {}, "workflow_id": None, **profile}
    WorkerRegistry(client).heartbeat(full, ["default"], jobs or [], 60_000, first=True)


def by_id(view: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {machine["machine_id"]: machine for machine in view}


def workers_of(machine: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {worker["worker_id"]: worker for worker in machine["workers"]}


# -- machines: the ended index ----------------------------------------------------------


def test_ended_index_follows_the_status_and_forgets_a_machine_that_reports_again(
        client: redis.Redis) -> None:
    publish(client, report("m1"), emit=False)
    assert client.zscore(ENDED_MACHINES_KEY, "m1") is None
    publish_offline(client, report("m1"), retention_seconds=60)
    assert client.zscore(ENDED_MACHINES_KEY, "m1") == read_machine(client, "m1")["ended_at"]

    publish(client, report("m1"), emit=False)  # back: live again, not ended
    assert client.zscore(ENDED_MACHINES_KEY, "m1") is None
    assert ended_machines(client) == []

    publish(client, report("dead", age_ms=40_000), emit=False)
    assert [r["machine_id"] for r in reap_gone_machines(client, 30, 60)] == ["dead"]
    dead = read_machine(client, "dead")
    assert client.zscore(ENDED_MACHINES_KEY, "dead") == dead["ended_at"]
    time.sleep(0.01)
    publish_offline(client, report("m1"), retention_seconds=60)
    assert [(m["machine_id"], m["status"]) for m in ended_machines(client)] == [
        ("m1", "offline"), ("dead", "gone")]  # newest end first
    assert ended_machines(client)[1]["reason"] == REASON
    assert [m["machine_id"] for m in machines(client)] == []


def test_ended_index_drops_entries_past_the_retention(client: redis.Redis) -> None:
    # Trimmed when written: an older entry past the writer's retention goes.
    publish_offline(client, report("old"), retention_seconds=0.3)
    time.sleep(0.5)
    assert client.exists(machine_key("old")) == 0  # its record expired
    publish_offline(client, report("new"), retention_seconds=0.3)
    assert client.zrange(ENDED_MACHINES_KEY, 0, -1) == ["new"]

    # Read after the record expired, before any write: dropped from the index then.
    time.sleep(0.5)
    assert client.zrange(ENDED_MACHINES_KEY, 0, -1) == ["new"]
    assert ended_machines(client) == []
    assert client.zcard(ENDED_MACHINES_KEY) == 0

    # The reaper trims too.
    publish_offline(client, report("offline-long-ago"), retention_seconds=0.2)
    time.sleep(0.4)
    publish(client, report("silent", age_ms=40_000), emit=False)
    reap_gone_machines(client, 30, retention_seconds=0.2)
    assert client.zrange(ENDED_MACHINES_KEY, 0, -1) == ["silent"]


# -- machines: the view from records written directly ------------------------------------


def test_machines_view_joins_records_registry_and_ended_machines(client: redis.Redis) -> None:
    now_s = time.time()
    # alpha: one busy worker with a full profile, one FATAL that never registered.
    publish(client, report("alpha", workers=[program("alpha", 0),
                                             program("alpha", 1, "FATAL")]), emit=False)
    heartbeat(client, "alpha-simulation-0", "alpha", jobs=["job-9"],
              models={"simulation": ["sdxl"]}, region="eu", tier=2,
              customer_access={"isolation": "strict", "allowed_customers": ["acme"]})
    # zeta: healthy; an extra bare worker with the same machine id joins it.
    publish(client, report("zeta", workers=[program("zeta", 0)]), emit=False)
    heartbeat(client, "zeta-simulation-0", "zeta")
    heartbeat(client, "zeta-extra", "zeta", services=["echo"])
    # gamma: the program restarted after its registry record was written (a dead predecessor's).
    publish(client, report("gamma", workers=[program("gamma", 0, started=now_s + 5)]),
            emit=False)
    heartbeat(client, "gamma-simulation-0", "gamma")
    # Workers with no machine record: under their machine id, or under "(no machine)".
    heartbeat(client, "rack-worker", "rack-7", services=["echo"])
    heartbeat(client, "loose-worker", None, services=["echo"], hardware={})
    # Ended: one stopped cleanly, then one reaped.
    publish_offline(client, report("delta", workers=[program("delta", 0)]), 60)
    time.sleep(0.01)
    publish(client, report("epsilon", age_ms=40_000, workers=[program("epsilon", 0)]),
            emit=False)
    assert [r["machine_id"] for r in reap_gone_machines(client, 30, 60)] == ["epsilon"]
    view = machines_view(client)

    # Live by id (records and registry-only alike, "(no machine)" last), then ended, newest first.
    assert [m["machine_id"] for m in view] == [
        "alpha", "gamma", "rack-7", "zeta", "", "epsilon", "delta"]
    machines_ = by_id(view)

    alpha = machines_["alpha"]
    assert alpha["status"] == "online" and not alpha["ended"] and alpha["has_record"]
    assert alpha["gpu_count"] == 2 and alpha["health_url"] == "http://alpha:9090"
    assert alpha["hostname"] == "host-alpha" and alpha["stale"] is False
    assert 0 <= alpha["last_report_age_seconds"] < 5
    assert alpha["healthy"] is False and alpha["health_reason"] == "simulation-1 is FATAL"
    busy, fatal = alpha["workers"]
    assert busy["worker_id"] == "alpha-simulation-0" and busy["status"] == "busy"
    assert busy["jobs"] == ["job-9"] and busy["program_state"] == "RUNNING" and busy["managed"]
    assert busy["registered"] and busy["pools"] == ["default"] and busy["last_seen"]
    assert busy["started_at"] and busy["name"] == "simulation-0" and busy["gpu"] == 0
    assert busy["capabilities"] == {
        "services": ["simulation"], "gpu_memory_gb": 24, "gpu_model": "Mock GPU",
        "ram_gb": None, "cpu_cores": None, "models": {"simulation": ["sdxl"]},
        "customer_isolation": "strict", "allowed_customers": ["acme"], "denied_customers": [],
        "workflow_id": None, "custom": {"region": "eu", "tier": 2}}
    assert fatal["status"] == "not_registered" and not fatal["registered"]
    assert fatal["program_state"] == "FATAL" and fatal["jobs"] == []
    assert alpha["worker_counts"] == {"total": 2, "busy": 1, "idle": 0, "not_registered": 1}

    zeta = machines_["zeta"]
    assert zeta["healthy"] is True, zeta["health_reason"]
    # Singular as plain English: it read "all 1 program running and registered".
    assert zeta["health_reason"] == "1 program running and registered"
    assert [(w["worker_id"], w["managed"], w["status"]) for w in zeta["workers"]] == [
        ("zeta-simulation-0", True, "idle"), ("zeta-extra", False, "idle")]

    gamma = machines_["gamma"]
    assert gamma["workers"][0]["status"] == "not_registered"
    assert gamma["healthy"] is False and "not registered" in gamma["health_reason"]

    rack = machines_["rack-7"]
    assert rack["has_record"] is False and rack["status"] == "online" and rack["healthy"]
    assert rack["name"] == "rack-7" and rack["last_report_age_seconds"] < 5
    assert [w["worker_id"] for w in rack["workers"]] == ["rack-worker"]
    assert rack["workers"][0]["program_state"] is None and not rack["workers"][0]["managed"]
    nobody = machines_[""]
    assert nobody["name"] == NO_MACHINE and [w["worker_id"] for w in nobody["workers"]] == [
        "loose-worker"]
    assert nobody["workers"][0]["capabilities"]["gpu_memory_gb"] is None

    delta, epsilon = machines_["delta"], machines_["epsilon"]
    assert delta["status"] == "offline" and delta["ended"] and delta["ended_at"]
    assert delta["healthy"] is False and delta["health_reason"] == "offline"
    assert delta["workers"][0]["status"] == "not_registered"
    assert epsilon["status"] == "gone" and epsilon["reason"] == REASON
    assert epsilon["health_reason"] == f"gone: {REASON}" and epsilon["uptime_seconds"] is None
    assert epsilon["gpu_count"] == 2  # the last report's inventory is kept
    ended = [m for m in view if m["ended"]]
    assert ended == sorted(ended, key=lambda m: -m["ended_at"])
    assert view.index(epsilon) < view.index(delta)


def test_a_silent_machine_is_marked_stale_before_it_is_reaped(client: redis.Redis) -> None:
    publish(client, report("beta", age_ms=40_000, workers=[program("beta", 0)]), emit=False)
    heartbeat(client, "beta-simulation-0", "beta")
    publish(client, report("fresh", workers=[program("fresh", 0)]), emit=False)
    heartbeat(client, "fresh-simulation-0", "fresh")
    machines_ = by_id(machines_view(client))  # the reaper's default stale time: 30 s
    beta = machines_["beta"]
    assert beta["stale"] is True and beta["status"] == "online"
    assert beta["healthy"] is False and beta["health_reason"] == "no report for 40s"
    assert beta["last_report_age_seconds"] >= 40
    assert machines_["fresh"]["stale"] is False and machines_["fresh"]["healthy"] is True
    assert by_id(machines_view(client, stale_after_seconds=60))["beta"]["stale"] is False


@pytest.mark.timeout(120)
def test_a_killed_bare_worker_marks_its_group_stale_before_its_record_expires(
        start_worker, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Tried: `emp worker` with MACHINE_ID=rack-9 killed with SIGKILL, Machines read again.
    Before: for the three leases its registry record outlives it (90 s by default), the
    group read healthy, "1 worker heartbeating, no machine report", never stale, while
    its last heartbeat aged past a minute. Now it is stale, and unhealthy, once its newest
    heartbeat is a lease old (three missed heartbeats)."""
    monkeypatch.setenv("EMP_LEASE_SECONDS", "3")  # heartbeats every 1 s; records live 9 s
    worker = start_worker("crashed-1", MACHINE_ID="rack-9", WORKER_SERVICES="echo",
                          EMP_LEASE_SECONDS="3")
    start_worker("alive-1", MACHINE_ID="rack-8", WORKER_SERVICES="echo", EMP_LEASE_SECONDS="3")
    rack = by_id(machines_view(client))["rack-9"]
    assert rack["healthy"] and not rack["stale"], rack["health_reason"]
    worker.kill()  # SIGKILL: no goodbye, the record stays until it expires
    stale = wait_for(lambda: by_id(machines_view(client)).get("rack-9", {}).get("stale") and
                     by_id(machines_view(client))["rack-9"], timeout=8,
                     message="rack-9 to look stale while its record lives")
    assert stale["healthy"] is False and stale["health_reason"].startswith("no heartbeat for ")
    assert [w["worker_id"] for w in stale["workers"]] == ["crashed-1"]
    alive = by_id(machines_view(client))["rack-8"]
    assert alive["healthy"] and not alive["stale"], alive["health_reason"]


# -- machines: real machines and workers -------------------------------------------------


@pytest.mark.timeout(300)
def test_machines_view_of_real_machines_stopped_reaped_and_bare_workers(
        start_machine, start_worker, app, client: redis.Redis) -> None:  # noqa: ANN001
    box_a = start_machine("box-a")
    box_b = start_machine("box-b", EMP_MOCK_GPUS="1")
    start_worker("bare-1", MACHINE_ID="rack-7", WORKER_SERVICES="echo", WORKER_REGION="eu",
                 WORKER_CUSTOMER_ISOLATION="strict", ALLOWED_CUSTOMERS="acme")
    start_worker("loose-1", MACHINE_ID="", WORKER_SERVICES="echo")
    box_a.wait_ready()
    box_b.wait_ready()

    job = submit("simulation", {"steps": 20, "duration": 4},
                 requirements={"hardware": {"gpu_memory_gb": 24}}, app=app)

    def busy_worker() -> dict[str, Any] | None:
        for machine in machines_view(client):
            for worker in machine["workers"]:
                if worker["jobs"]:
                    return {**worker, "machine_id": machine["machine_id"]}
        return None

    busy = wait_for(busy_worker, timeout=30, message="a worker showing the job")
    assert busy["jobs"] == [job.id] and busy["status"] == "busy"
    assert busy["worker_id"] == get_job(job.id, app=app)["worker_id"]
    assert busy["machine_id"] in ("box-a", "box-b") and busy["program_state"] == "RUNNING"

    view = machines_view(client)
    assert [m["machine_id"] for m in view] == ["box-a", "box-b", "rack-7", ""]
    machines_ = by_id(view)
    a = machines_["box-a"]
    assert a["status"] == "online" and a["gpu_count"] == 2 and a["gpu_source"] == "mock"
    assert a["healthy"] is True, a["health_reason"]
    assert a["stale"] is False and a["last_report_age_seconds"] < 10
    assert a["health_url"] == f"http://127.0.0.1:{box_a.port}" and a["uptime_seconds"] > 0
    assert [w["worker_id"] for w in a["workers"]] == ["box-a-simulation-0",
                                                     "box-a-simulation-1"]
    for n, worker in enumerate(a["workers"]):
        assert worker["program_state"] == "RUNNING" and worker["registered"] and worker["managed"]
        assert worker["gpu"] == n and worker["status"] in ("idle", "busy") and worker["pid"]
        caps = worker["capabilities"]
        assert caps["gpu_memory_gb"] == 24 and caps["services"] == ["simulation"]
        assert caps["gpu_model"] == "Mock GPU" and caps["customer_isolation"] == "none"
        assert worker["last_seen_age_seconds"] < 10 and worker["started_at"]
    assert machines_["box-b"]["gpu_count"] == 1 and len(machines_["box-b"]["workers"]) == 1

    rack = machines_["rack-7"]
    bare, = rack["workers"]
    assert not rack["has_record"] and rack["healthy"] and bare["worker_id"] == "bare-1"
    assert bare["status"] == "idle" and not bare["managed"] and bare["program_state"] is None
    assert bare["capabilities"]["customer_isolation"] == "strict"
    assert bare["capabilities"]["allowed_customers"] == ["acme"]
    assert bare["capabilities"]["custom"] == {"region": "eu"}
    assert bare["capabilities"]["services"] == ["echo"]
    assert machines_[""]["name"] == NO_MACHINE
    assert [w["worker_id"] for w in machines_[""]["workers"]] == ["loose-1"]

    job.get(timeout=60)
    assert box_a.stop() == 0  # clean stop: offline
    a = by_id(machines_view(client))["box-a"]
    assert a["status"] == "offline" and a["ended"] and a["ended_at"] and not a["healthy"]
    assert a["health_reason"] == "offline" and a["gpu_count"] == 2
    assert [w["status"] for w in a["workers"]] == ["not_registered", "not_registered"]

    box_b.kill()  # SIGKILL: no offline record; the reaper marks it gone
    wait_for(lambda: box_b.leftovers() == [], timeout=20, message="box-b's processes to die")
    wait_for(lambda: by_id(machines_view(client, stale_after_seconds=1))["box-b"]["stale"],
             timeout=10, message="box-b to look stale")
    # Reaped once silent past its own declared limit (3 report periods), not the reaper's.
    reaped: list[str] = []
    wait_for(lambda: reaped.extend(r["machine_id"] for r in reap_gone_machines(client, 1))
             or reaped, timeout=10, message="box-b to be reaped")
    assert reaped == ["box-b"]
    view = machines_view(client)
    assert [m["machine_id"] for m in view] == ["rack-7", "", "box-b", "box-a"]
    b = by_id(view)["box-b"]
    assert b["status"] == "gone" and b["reason"] == REASON and b["health_reason"].startswith(
        "gone") and not b["healthy"]
    assert [w["registered"] for w in b["workers"]] == [False]
    assert client.zscore(MACHINES_KEY, "box-b") is None
    assert client.zrevrange(ENDED_MACHINES_KEY, 0, -1) == ["box-b", "box-a"]


# -- webhooks ---------------------------------------------------------------------------

#: Fast retries and an early disconnect, so the states show within seconds.
FAST_HOOKS = {
    "EMP_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8", "EMP_WEBHOOK_INITIAL_DELAY_MS": "300",
    "EMP_WEBHOOK_MAX_DELAY_MS": "300", "EMP_WEBHOOK_TIMEOUT_SECONDS": "3",
    "EMP_WEBHOOK_NAMESPACE_REFRESH_SECONDS": "1", "EMP_WEBHOOK_DISPATCHERS": "2",
    "EMP_WEBHOOK_DISCONNECT_AFTER": "4", "EMP_WEBHOOK_RECONNECT_SECONDS": "600",
}


def append_event(client: redis.Redis, job_id: str) -> str:
    """A synthetic ``job_submitted`` on the default pool's stream (no worker needed)."""
    data = {"job_id": job_id, "job_type": "echo", "priority": 50}
    return client.xadd(Keys("default").events,
                       {"event": "job_submitted", "job_id": job_id, "data": json.dumps(data)})


def hook_view(client: redis.Redis, hook_id: str) -> dict[str, Any]:
    return next(h for h in webhooks_view(client)["hooks"] if h["id"] == hook_id)


def test_webhooks_view_never_shows_secrets_and_reconnect_of_unknown_hook(
        client: redis.Redis) -> None:
    assert webhooks_view(client) == {
        "hooks": [], "counts": {"total": 0, "connected": 0, "failing": 0, "disconnected": 0,
                                "inactive": 0},
        "recent_deliveries": [], "limit": 50}
    store = hook_store(client)
    hook = store.create({"url": "https://ops:hunter2@hooks.example.com/emp",
                         "events": ["complete_job"], "secret": "whsec_c2VjcmV0LXNlY3JldA=="})
    store.create({"url": "https://hooks.example.com/off", "events": ["job_failed"],
                  "active": False})
    view = webhooks_view(client)
    text = json.dumps(view)
    assert "whsec_c2VjcmV0LXNlY3JldA==" not in text and "hunter2" not in text
    first, second = view["hooks"]
    assert first["id"] == hook["id"] and first["has_secret"] is True
    assert first["url"] == "https://ops:***@hooks.example.com/emp"
    assert first["health"] == "connected" and second["health"] == "inactive"
    assert first["stats"]["pending_deliveries"] == 0 and first["stats"]["dropped_events"] == 0
    assert view["counts"] == {"total": 2, "connected": 1, "failing": 0, "disconnected": 0,
                              "inactive": 1}
    assert reconnect(client, "wh_missing") is False
    assert reconnect(client, hook["id"]) is True


@pytest.mark.timeout(120)
def test_webhooks_view_shows_failures_disconnect_reconnect_and_recent_deliveries(
        client: redis.Redis, start_server, receiver) -> None:  # noqa: ANN001
    server = start_server("webhooks", **FAST_HOOKS)
    up, down = receiver(), receiver(start=False)  # ``down`` starts later, on the same port

    def register(url: str) -> dict[str, Any]:
        reply = requests.post(server.base + "/webhooks", timeout=10,
                              json={"url": url, "events": ["job_submitted"]})
        assert reply.status_code == 201, reply.text
        return reply.json()["data"]

    good = register(up.url + "/ok")
    flaky = register(f"http://ops:hunter2@127.0.0.1:{down.port}/down")
    append_event(client, "job-1")

    # Failing first (failures counted, still connected), then disconnected at 4.
    seen: list[tuple[str, int]] = []

    def disconnected() -> bool:
        hook = hook_view(client, flaky["id"])
        seen.append((hook["health"], hook["stats"]["consecutive_failures"]))
        return hook["health"] == "disconnected"

    wait_for(disconnected, timeout=30, every=0.05, message="the hook to disconnect")
    assert any(health == "failing" and 0 < failures < 4 for health, failures in seen), seen
    view = webhooks_view(client)
    hooks = {h["id"]: h for h in view["hooks"]}
    stats = hooks[flaky["id"]]["stats"]
    assert stats["disconnected"] and stats["consecutive_failures"] == 4
    assert stats["status"] == "disconnected" and stats["pending_deliveries"] == 1
    assert stats["last_failure_at"] and stats["last_success_at"] is None
    assert stats["dropped_events"] == 0 and stats["reconnect_at"] > stats["disconnected_at"]
    assert "connect" in (stats["last_error"] or "")
    assert hooks[flaky["id"]]["consecutive_failures"] == 4 and hooks[flaky["id"]]["disconnected"]
    wait_for(lambda: hook_view(client, good["id"])["stats"]["successful_deliveries"] == 1,
             timeout=15, message="the good hook's delivery")
    good_view = hook_view(client, good["id"])
    assert good_view["health"] == "connected" and good_view["stats"]["last_success_at"]
    assert webhooks_view(client)["counts"] == {"total": 2, "connected": 1, "failing": 0,
                                               "disconnected": 1, "inactive": 0}

    # The receiver comes back; a reconnect sends the waiting delivery at once.
    down.start()
    assert reconnect(client, flaky["id"]) is True
    wait_for(lambda: len(down.delivered()) == 1, timeout=10, message="delivery after reconnect")
    # The receiver has the request before the service records its answer: wait for the
    # record (the reconnect alone shows the hook connected at once).
    wait_for(lambda: hook_view(client, flaky["id"])["stats"]["successful_deliveries"] == 1,
             timeout=10, message="the delivery after the reconnect to be recorded")
    flaky_view = hook_view(client, flaky["id"])
    stats = flaky_view["stats"]
    assert flaky_view["health"] == "connected" and stats["consecutive_failures"] == 0
    assert stats["pending_deliveries"] == 0 and stats["disconnected_at"] is None

    # Recent deliveries, newest first: the flaky hook's (delivered last) before the good one's.
    view = webhooks_view(client)
    recent = view["recent_deliveries"]
    assert [(d["webhook_id"], d["status"]) for d in recent] == [
        (flaky["id"], "delivered"), (good["id"], "delivered")]
    assert recent[0]["attempts"] == 5 and len(recent[0]["attempt_history"]) == 5
    assert recent[0]["job_id"] == "job-1" and recent[0]["payload"]["event_type"] == "job_submitted"
    assert recent[0]["finished_at"] >= recent[1]["finished_at"]

    text = json.dumps(view)
    for secret in (good["secret"], flaky["secret"], "hunter2"):
        assert secret not in text
    assert hook_view(client, flaky["id"])["url"] == f"http://ops:***@127.0.0.1:{down.port}/down"
