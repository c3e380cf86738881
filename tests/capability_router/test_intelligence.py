"""``emp intelligence``: the leader lease, the placement plan, arrivals read from the
event log, desired machines per pool (``/api/pools``'s view, the Prometheus gauge,
``P..desired``), and the scaling fields of the pools file."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import prometheus_client
import pytest
import redis

from capability_router.errors import PoolsFileError
from capability_router.functions import redis_now_ms
from capability_router.keys import INTELLIGENCE_LEADER_KEY, NAMESPACES_KEY, Keys
from capability_router.pool_view import pools_view
from capability_router.pools import DEFAULT_POOLS_FILE, parse_pools
from capability_router.prediction.directives import (
    DIRECTIVE_EVENT,
    EVICT,
    KEEP,
    PRELOAD,
    Directive,
    publish,
)
from capability_router.prediction.lease import KEPT, LOST, TAKEN, Lease
from capability_router.prediction.planner import PlacementSettings, PoolSnapshot, plan
from capability_router.prediction.service import IntelligenceService, IntelligenceSettings
from capability_router.residency import ResidencyReporter
from emp_tasks.producer import submit

ROOT = Path(__file__).resolve().parents[2]
POOLS_TEXT = DEFAULT_POOLS_FILE.read_text()
#: The leases of the leader tests, ms.
LEASE_MS = 1500


# -- the lease -------------------------------------------------------------------


def test_one_instance_leads_and_a_dead_leader_is_replaced_within_the_lease(
        client: redis.Redis) -> None:
    # Leases of LEASE_MS: long enough that no pause of a loaded machine between two
    # calls outlasts one (0.3 s did once, in CI's parallel tox run).
    a = Lease(client, INTELLIGENCE_LEADER_KEY, "a", ttl_ms=LEASE_MS)
    b = Lease(client, INTELLIGENCE_LEADER_KEY, "b", ttl_ms=LEASE_MS)
    assert a.hold() == TAKEN and b.hold() == LOST and a.hold() == KEPT
    time.sleep(LEASE_MS / 1000 + 0.1)  # a stops renewing (killed)
    assert b.hold() == TAKEN and a.hold() == LOST and b.holder() == b.token
    # A restart of b (same instance name, new run) takes the lead back at once.
    b2 = Lease(client, INTELLIGENCE_LEADER_KEY, "b", ttl_ms=LEASE_MS)
    assert b2.hold() == TAKEN and b2.holder() == b2.token and a.hold() == LOST
    assert b2.release() and client.get(INTELLIGENCE_LEADER_KEY) is None
    assert not a.release()


def _start_service(url: str, instance: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EMP_REDIS_URL": url, "PYTHONPATH": str(ROOT),
           "EMP_INTELLIGENCE_INTERVAL_SECONDS": "0.2", "EMP_INTELLIGENCE_LEASE_SECONDS": "1",
           "EMP_INTELLIGENCE_INSTANCE": instance}
    env.pop("EMP_POOLS_FILE", None)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "emp_tasks.cli", "intelligence"],
                                env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _holder(client: redis.Redis, timeout: float, unlike: str = "") -> tuple[str, float]:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        holder = client.get(INTELLIGENCE_LEADER_KEY) or ""
        if holder and not holder.startswith(unlike + ":"):
            return holder, time.monotonic() - started
        time.sleep(0.02)
    pytest.fail(f"no leader but {unlike or 'none'} after {timeout}s")


@pytest.mark.timeout(60)
def test_two_services_one_leads_and_killing_it_hands_over(
        redis_server, client: redis.Redis, tmp_path: Path) -> None:
    services = {name: _start_service(redis_server.url, name, tmp_path / f"{name}.log")
                for name in ("alpha", "beta")}
    try:
        holder, _ = _holder(client, 30)
        leader = holder.partition(":")[0]
        time.sleep(0.6)  # both tick a few times: the lead stays put
        assert client.get(INTELLIGENCE_LEADER_KEY) == holder
        assert all(p.poll() is None for p in services.values())
        os.killpg(services[leader].pid, signal.SIGKILL)
        services[leader].wait(timeout=10)
        new, seconds = _holder(client, 10, unlike=leader)
        assert new.partition(":")[0] == ({"alpha", "beta"} - {leader}).pop()
        assert seconds <= 1.0 + 0.2 + 0.5  # lease + one tick + slack
        # A clean stop gives the lead up at once.
        survivor = services[new.partition(":")[0]]
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=10)
        assert client.get(INTELLIGENCE_LEADER_KEY) is None
    finally:
        for process in services.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


# -- the plan --------------------------------------------------------------------


def test_the_plan_preloads_on_the_nearest_idle_worker_making_room_from_the_least_wanted() -> None:
    standard = PoolSnapshot("standard", 2, idle={
        "w-disk": {"flux": "disk", "sdxl": "gpu"},
        "w-ram": {"flux": "ram", "sdxl": "gpu", "old": "gpu"},
        "w-remote": {"flux": "remote"}}, warm={"flux": 0, "sdxl": 2}, mean_job_seconds=20)
    rates = {("standard", "flux"): 0.01, ("standard", "sdxl"): 0.001, ("standard", "old"): 0.0}
    directives = plan([standard], rates, lambda pool, model: True,
                      PlacementSettings(horizon_seconds=300, evict_below=0.05), now_ms=1000)
    preload = directives[0]
    assert (preload.action, preload.model, preload.worker) == (PRELOAD, "flux", "w-ram")
    assert preload.make_room_from == ("old", "sdxl")  # worth 0, then 0.3 arrivals
    assert "3.0 arrivals expected in 300s in standard, 0 warm of 1 wanted" in preload.reason
    assert preload.expires_ms == 1000 + 60_000
    # The other idle worker with a model nobody asks for any more frees its GPU; sdxl stays.
    assert [(d.action, d.model, d.worker) for d in directives[1:]] == []
    standard.idle["w-disk"]["old"] = "gpu"
    evict = plan([standard], rates, lambda pool, model: True, PlacementSettings(), 0)[1]
    assert (evict.action, evict.model, evict.worker) == (EVICT, "old", "w-disk")


def test_a_pool_short_of_a_model_asks_a_bigger_pools_idle_worker_to_keep_it() -> None:
    standard = PoolSnapshot("standard", 2, idle={}, warm={"flux": 0}, mean_job_seconds=30)
    heavy = PoolSnapshot("heavy", 3, idle={"h1": {"flux": "disk", "wan": "gpu"}},
                         warm={"flux": 0})
    rates = {("standard", "flux"): 0.02}
    [keep] = plan([heavy, standard], rates, lambda pool, model: False, PlacementSettings(), 0)
    assert (keep.action, keep.pool, keep.worker, keep.for_pool) == (KEEP, "heavy", "h1",
                                                                     "standard")
    assert keep.make_room_from == ("wan",)
    assert "none of its idle workers has it" in keep.reason
    # Warm enough already, or warm in the bigger pool: nothing to do.
    standard.warm["flux"] = 1
    assert plan([heavy, standard], rates, lambda p, m: False, PlacementSettings(), 0) == []
    standard.warm["flux"], heavy.warm["flux"] = 0, 1
    assert plan([heavy, standard], rates, lambda p, m: False, PlacementSettings(), 0) == []
    # A worker that just had a directive is left alone (cooldown); a preload in flight
    # counts as warm.
    heavy.warm["flux"] = 0
    assert plan([heavy, standard], rates, lambda p, m: False, PlacementSettings(), 0,
                cooling=lambda pool, worker: True) == []
    assert plan([heavy, standard], rates, lambda p, m: False, PlacementSettings(), 0,
                in_flight={("standard", "flux"): 1}) == []
    # Never to a pool the pools file does not name: the router spills nothing there.
    heavy.configured = False
    assert plan([heavy, standard], rates, lambda p, m: False, PlacementSettings(), 0) == []


def test_a_bad_directive_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="unknown directive action 'load'"):
        Directive("load", "flux", "standard")
    with pytest.raises(ValueError, match="needs a model"):
        Directive(PRELOAD, "", "standard")


# -- the service on real events --------------------------------------------------


def _events(client: redis.Redis, pool: str, name: str) -> list[dict]:
    return [json.loads(f["data"]) for _, f in client.xrange(Keys(pool).events)
            if f["event"] == name]


@pytest.mark.timeout(60)
def test_the_leader_reads_arrivals_and_publishes_a_preload_with_its_reason(
        app, client: redis.Redis) -> None:
    # One idle worker with flux on disk and sdxl in its GPU (as its residency report says).
    ResidencyReporter(client, "w1", ["default"]).report({"sdxl": "gpu", "flux": "disk"})
    client.zadd(Keys("default").idle, {"sig:w1": int(time.time() * 1000) + 60_000})
    for _ in range(4):  # delayed: nobody claims them, but they are arrivals
        submit("simulation", {"steps": 1}, requirements={"models": ["flux"]}, app=app,
               countdown=3600)
    service = IntelligenceService(client, None, IntelligenceSettings(instance="t"))
    assert service.step()
    assert service.stats["events"] == 4
    assert service.forecaster.rate(time.time(), ("default", "flux")) > 0
    [directive] = [Directive.from_entry(i, f, "default")
                   for i, f in client.xrange(Keys("default").directives)]
    assert (directive.action, directive.model, directive.worker) == (PRELOAD, "flux", "w1")
    assert directive.make_room_from == ("sdxl",)
    [event] = _events(client, "default", DIRECTIVE_EVENT)
    assert event["model"] == "flux" and event["reason"] == directive.reason
    assert event["id"] == directive.id and "2.0 arrivals expected in 300s" in event["reason"]
    # The next tick leaves the worker alone (cooldown); the forecast and desired are written.
    assert service.step() and client.xlen(Keys("default").directives) == 1
    assert client.get(Keys("default").desired) is not None
    assert float(client.hget(Keys("default").forecast, "arrival_rate")) > 0


@pytest.mark.parametrize("skew", [180, -180], ids=["ahead", "behind"])
def test_a_leader_whose_host_clock_is_off_issues_directives_on_redis_clock(
        app, client: redis.Redis, monkeypatch: pytest.MonkeyPatch, skew: int) -> None:
    """Tried: an idle worker (scored on Redis' clock, 60 s ahead, as heartbeats are) with
    flux on disk, four flux arrivals, and a leader tick on a host whose clock runs 3 min
    ahead, then one 3 min behind. Before, the tick ran on the host's clock: the leader
    ahead read the idle worker as gone and issued nothing; the one behind wrote
    ``issued_ms`` 3 min before Redis' time and an ``expires_ms`` (60 s TTL) 2 min gone,
    and stamped its ``placement_directive`` event 3 min off its entry id. Now both
    issue the preload with ``issued_ms`` and the event's ``timestamp`` within a second of
    the entry ids (Redis' clock) and the expiry 60 s after."""
    ResidencyReporter(client, "w1", ["default"]).report({"sdxl": "gpu", "flux": "disk"})
    client.zadd(Keys("default").idle, {"sig:w1": redis_now_ms(client) + 60_000})
    for _ in range(4):
        submit("simulation", {"steps": 1}, requirements={"models": ["flux"]}, app=app,
               countdown=3600)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    service = IntelligenceService(client, None, IntelligenceSettings(instance="t"))
    assert service.step()
    [(entry_id, fields)] = client.xrange(Keys("default").directives)
    directive = Directive.from_entry(entry_id, fields, "default")
    assert (directive.action, directive.model, directive.worker) == (PRELOAD, "flux", "w1")
    assert abs(directive.issued_ms - int(entry_id.split("-")[0])) < 1000, directive
    assert directive.expires_ms - directive.issued_ms == 60_000
    [(event_id, event)] = [(i, json.loads(f["data"])) for i, f in
                           client.xrange(Keys("default").events)
                           if f["event"] == DIRECTIVE_EVENT]
    assert abs(event["timestamp"] - int(event_id.split("-")[0])) < 1000, event


def test_the_leader_asks_a_heavy_worker_to_keep_a_model_standard_is_short_of(
        app, client: redis.Redis) -> None:
    pools_file = parse_pools(POOLS_TEXT)
    ResidencyReporter(client, "h1", ["heavy"]).report({"wan": "gpu", "flux": "disk"})
    client.zadd(Keys("heavy").idle, {"sig:h1": int(time.time() * 1000) + 60_000})
    for _ in range(3):  # standard's flux jobs; standard has no idle worker at all
        submit("simulation", {"steps": 1}, requirements={"models": ["flux"]}, app=app,
               pool="standard", countdown=3600)
    service = IntelligenceService(client, pools_file, IntelligenceSettings(instance="t"))
    assert service.step()
    [keep] = [Directive.from_entry(i, f, "heavy")
              for i, f in client.xrange(Keys("heavy").directives)]
    assert (keep.action, keep.model, keep.worker, keep.for_pool) == (
        KEEP, "flux", "h1", "standard")
    assert client.xlen(Keys("standard").directives) == 0
    [event] = _events(client, "heavy", DIRECTIVE_EVENT)
    assert event["for_pool"] == "standard" and "keeps it warm for spill-over" in event["reason"]


def test_a_new_leader_rereads_the_recent_log_once(app, client: redis.Redis) -> None:
    for _ in range(3):
        submit("simulation", {"steps": 1}, requirements={"models": ["flux"]}, app=app,
               countdown=3600)
    fast = IntelligenceSettings(interval_seconds=0.1, lease_seconds=LEASE_MS / 1000)
    one = IntelligenceService(client, None, dataclasses.replace(fast, instance="one"))
    two = IntelligenceService(client, None, dataclasses.replace(fast, instance="two"))
    assert one.step() and not two.step()
    before = one.forecaster.rate(time.time(), ("default", "flux"))
    time.sleep(LEASE_MS / 1000 + 0.1)  # one stops renewing; two takes over, same arrivals
    assert two.step() and not one.step()
    assert two.forecaster.rate(time.time(), ("default", "flux")) == pytest.approx(before, 0.01)
    time.sleep(LEASE_MS / 1000 + 0.1)
    assert one.step()  # back to one: the log is read again, not counted twice
    assert one.forecaster.rate(time.time(), ("default", "flux")) == pytest.approx(before, 0.01)


def test_forecaster_keys_are_capped(app, client: redis.Redis) -> None:
    for model in ("m1", "m2", "m3"):
        submit("simulation", {"steps": 1}, requirements={"models": [model]}, app=app,
               countdown=3600)
    service = IntelligenceService(client, None, IntelligenceSettings(instance="t", max_keys=2))
    service.step()
    assert len(service.forecaster.keys()) == 2 and len(service._key_seen) == 2


def test_the_directive_stream_is_trimmed(client: redis.Redis) -> None:
    for i in range(1300):
        publish(client, Directive(PRELOAD, f"m{i}", "default", "w1"))
    assert client.xlen(Keys("default").directives) < 1300


# -- desired machines ------------------------------------------------------------


SCALED = POOLS_TEXT.replace('[pools.standard.scaling]\nmin_machines = 1\nmax_machines = 50',
                            '[pools.standard.scaling]\nmin_machines = 1\nmax_machines = 3')


def test_desired_machines_in_the_pools_view_the_gauge_and_the_redis_key(
        client: redis.Redis, redis_server, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(SCALED)
    monkeypatch.setenv("EMP_POOLS_FILE", str(path))
    pools_file = parse_pools(SCALED, str(path))
    # 60 s of predicted work in six pending jobs in standard, nobody serving it: 60 / 10 s =
    # 6 workers (at most one a job), capped at max_machines = 3; heavy has nothing: 0.
    client.hset(Keys("standard").load, "unfinished_ms", 60_000)
    client.zadd(Keys("standard").status_index("pending"),
                {f"j{n}": time.time() * 1000 - 5000 for n in range(6)})
    view = {p["name"]: p for p in pools_view(client, pools_file)}
    assert view["standard"]["desired_machines"] == 3 and view["standard"]["live_machines"] == 0
    assert view["standard"]["scaling"]["max_machines"] == 3
    assert view["heavy"]["desired_machines"] == 0 and view["fast"]["desired_machines"] == 0
    # The leader's forecast adds the load it predicts: 0.1 jobs/s of 16 s at 0.8 = 2 workers.
    client.hset(Keys("standard").load, "unfinished_ms", 0)
    service = IntelligenceService(client, pools_file, IntelligenceSettings(instance="t"))
    service._mean_seconds["standard"] = 16.0
    now = time.time()
    for i in range(60):
        service.forecaster.observe(now - 600 + i * 10, ("standard", ""))
    desired = service.scale(list(pools_file.pools), now)
    assert desired["standard"] == 2 and client.get(Keys("standard").desired) == "2"
    assert client.ttl(Keys("standard").desired) > 0
    assert {p["name"]: p["desired_machines"] for p in pools_view(client, pools_file)}[
        "standard"] == 2
    # The Prometheus text of the monitor's collector has the gauge per pool.
    from webapp.monitor.metrics import QueueCollector

    registry = prometheus_client.CollectorRegistry()
    registry.register(QueueCollector(redis_server.url))
    text = prometheus_client.generate_latest(registry).decode()
    assert 'emp_pool_desired_machines{pool="standard"} 2.0' in text
    assert 'emp_pool_desired_machines{pool="heavy"} 0.0' in text


def scaled_standard_with_six_pending(client: redis.Redis, monkeypatch, tmp_path) -> Path:
    """The SCALED pools file in force (``EMP_POOLS_FILE``) and six jobs pending in
    ``standard`` for 5 s with a minute of predicted work; the file's path."""
    path = tmp_path / "pools.toml"
    path.write_text(SCALED)
    monkeypatch.setenv("EMP_POOLS_FILE", str(path))
    client.hset(Keys("standard").load, "unfinished_ms", 60_000)
    client.zadd(Keys("standard").status_index("pending"),
                {f"j{n}": time.time() * 1000 - 5000 for n in range(6)})
    return path


def test_the_desired_gauge_keeps_the_last_good_scaling_when_the_pools_file_breaks(
        client: redis.Redis, redis_server, tmp_path: Path, monkeypatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Tried: the monitor scraped by Prometheus (KEDA's trigger), standard holding 60 s of
    predicted work in six jobs with max_machines = 3, then an edit of the pools file with a
    typo (max_machines = "three"). Before, the next scrape fell back to default scaling:
    emp_pool_desired_machines{pool="standard"} jumped from 3 to 6 (max 50) and the gauges of
    the pools no worker serves vanished. Now the last good file is kept, and logged."""
    from webapp.monitor.metrics import QueueCollector

    path = scaled_standard_with_six_pending(client, monkeypatch, tmp_path)
    registry = prometheus_client.CollectorRegistry()
    registry.register(QueueCollector(redis_server.url))
    text = prometheus_client.generate_latest(registry).decode()
    assert 'emp_pool_desired_machines{pool="standard"} 3.0' in text
    path.write_text(SCALED.replace("max_machines = 3", 'max_machines = "three"'))
    with caplog.at_level("WARNING", logger="capability_router.pools"):
        text = prometheus_client.generate_latest(registry).decode()
    assert 'emp_pool_desired_machines{pool="standard"} 3.0' in text
    assert 'emp_pool_desired_machines{pool="heavy"} 0.0' in text
    assert "pools.standard.scaling.max_machines must be an integer" in caplog.text


def without_pool(text: str, name: str) -> str:
    """The pools file ``text`` with pool ``name`` (and its sub-tables) taken out."""
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.startswith((f"[pools.{name}]", f"[pools.{name}."))
        if not skipping:
            kept.append(line)
    return "".join(kept)


def test_a_pool_removed_from_the_file_while_it_holds_jobs_desires_no_machines(
        client: redis.Redis, redis_server, tmp_path: Path, monkeypatch) -> None:
    """Tried: standard holding six pending jobs (60 s of predicted work, max_machines = 3,
    no live worker), then the operator removes standard from the pools file. Before,
    /api/pools listed it with configured false and desired_machines 6 (the default
    max_machines of 50 capped nothing: its own left with its entry), and the
    emp_pool_desired_machines gauge and the leader's emp:{standard}:desired said the
    same: machines asked for a pool no longer configured. Now it desires 0 everywhere,
    and its waiting_reason says why its jobs wait and what to do."""
    from webapp.monitor.metrics import QueueCollector

    path = scaled_standard_with_six_pending(client, monkeypatch, tmp_path)
    client.sadd(NAMESPACES_KEY, "standard")  # as its jobs' enqueue does
    assert {p["name"]: p for p in pools_view(client, parse_pools(SCALED, str(path)))}[
        "standard"]["desired_machines"] == 3
    path.write_text(without_pool(SCALED, "standard"))
    pools_file = parse_pools(path.read_text(), str(path))
    assert "standard" not in pools_file.pools
    standard = {p["name"]: p for p in pools_view(client, pools_file)}["standard"]
    assert (standard["configured"], standard["pending"], standard["desired_machines"]) == (
        False, 6, 0)
    reason = standard["waiting_reason"]
    assert "no live worker serves pool standard" in reason and str(path) in reason, reason
    assert "6 unfinished job(s)" in reason and "no machines are desired" in reason, reason
    service = IntelligenceService(client, pools_file, IntelligenceSettings(instance="t"))
    assert service.scale(["fast", "heavy", "standard"], time.time())["standard"] == 0
    assert client.get(Keys("standard").desired) == "0"
    registry = prometheus_client.CollectorRegistry()
    registry.register(QueueCollector(redis_server.url))
    text = prometheus_client.generate_latest(registry).decode()
    assert 'emp_pool_desired_machines{pool="standard"} 0.0' in text


def test_the_leader_applies_an_edited_pools_file_without_a_restart(
        client: redis.Redis, tmp_path: Path) -> None:
    """Tried: emp intelligence leading, standard holding six 10 s jobs with max_machines = 3,
    then the operator lowers max_machines to 2 in the pools file. Before, the leader kept
    the file it read at its start: it wrote desired 3 to emp:{standard}:desired (the Pools
    page's machines chart) while /api/pools, re-reading the file, said 2."""
    from capability_router.pools import PoolsFileWatch

    path = tmp_path / "pools.toml"
    path.write_text(SCALED)
    client.hset(Keys("standard").load, "unfinished_ms", 60_000)
    client.zadd(Keys("standard").status_index("pending"),
                {f"j{n}": time.time() * 1000 - 5000 for n in range(6)})
    watch = PoolsFileWatch(path)
    service = IntelligenceService(client, watch.current(), IntelligenceSettings(instance="t"),
                                  watch)
    assert service.step() and client.get(Keys("standard").desired) == "3"
    path.write_text(SCALED.replace("max_machines = 3", "max_machines = 2"))
    assert service.step() and client.get(Keys("standard").desired) == "2"


@pytest.mark.parametrize(("table", "message"), [
    ("max_machines = -1", "pools.standard.scaling.max_machines must be >= 0, got -1"),
    ("workers_per_machine = 0", "pools.standard.scaling.workers_per_machine must be >= 1"),
    ("min_machines = 5\nmax_machines = 2", "pools.standard.scaling.max_machines must be >= "
                                           "min_machines (5), got 2"),
    ("wait_target_seconds = 0", "pools.standard.scaling.wait_target_seconds must be > 0"),
    ("startup_seconds = \"2m\"", "pools.standard.scaling.startup_seconds must be a number"),
    ("target_utilization = 1.5", "pools.standard.scaling.target_utilization must be <= 1"),
    ("max_machine = 3", "pools.standard.scaling has unknown field(s) max_machine"),
])
def test_a_bad_scaling_field_is_refused_naming_it(table: str, message: str) -> None:
    text = POOLS_TEXT.replace(
        "[pools.standard.scaling]\nmin_machines = 1\nmax_machines = 50\nworkers_per_machine = 1"
        "\nwait_target_seconds = 10\nstartup_seconds = 120\ntarget_utilization = 0.8",
        f"[pools.standard.scaling]\n{table}")
    assert text != POOLS_TEXT
    with pytest.raises(PoolsFileError) as caught:
        parse_pools(text, "pools.toml")
    assert str(caught.value).startswith("pools.toml: ") and message in str(caught.value)


def test_scaling_settings_are_optional_with_defaults() -> None:
    pools = parse_pools(POOLS_TEXT).pools
    assert pools["fast"].scaling.max_machines == 50 and pools["fast"].scaling.min_machines == 0
    assert pools["heavy"].scaling.startup_seconds == 300


def test_the_keda_example_scales_a_pool_on_the_gauge_the_monitor_exports() -> None:
    yaml = pytest.importorskip("yaml")
    scaled = yaml.safe_load((ROOT / "conf" / "keda.yaml").read_text())
    assert scaled["kind"] == "ScaledObject" and scaled["apiVersion"] == "keda.sh/v1alpha1"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert 'emp_pool_desired_machines{pool="standard"}' in trigger["metadata"]["query"]
    standard = parse_pools(POOLS_TEXT).pools["standard"].scaling
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
        standard.min_machines, standard.max_machines)


def test_the_forecast_ahead_uses_the_profile_of_the_later_slot_and_keys_can_be_forgotten(
        ) -> None:
    from capability_router.prediction.forecast import Forecaster

    forecaster = Forecaster(recent_seconds=600, profile_weight=0.5)
    hour = 3600.0
    for i in range(36):  # a busy hour 1 (0.01/s), learnt once hour 2 begins
        forecaster.observe(hour + i * 100, "k")
    now = 2 * hour + 1
    recent = forecaster.rate(now, "k")
    assert forecaster.rate_ahead(now, "k", 0) == recent
    assert forecaster.rate_ahead(now, "k", 3 * hour) == recent  # slot 5: never seen
    # Late in hour 0 of the next day, hour 1 ahead is the busy one learnt the day before.
    late = 24 * hour + 3590
    assert forecaster.rate(late, "k") < 1e-6
    assert forecaster.rate_ahead(late, "k", 60) == pytest.approx(0.5 * 0.01, rel=0.01)
    forecaster.forget("k")
    assert forecaster.keys() == [] and forecaster.rate_ahead(now, "k", 60) == 0.0


def test_machines_are_counted_by_machine_id_else_by_workers_per_machine() -> None:
    from capability_router.prediction.elastic import count_machines

    records = [{"machine_id": "m1"}, {"machine_id": "m1"}, {"machine_id": "m2"},
               {"machine_id": ""}, {}, {}]
    assert count_machines(records, 1) == 2 + 3
    assert count_machines(records, 2) == 2 + 2


@pytest.mark.parametrize(("env", "words"), [
    ({"EMP_INTELLIGENCE_LEASE_SECONDS": "2", "EMP_INTELLIGENCE_INTERVAL_SECONDS": "5"},
     "lease_seconds (2) must be longer than interval_seconds (5)"),
    ({"EMP_INTELLIGENCE_HORIZON_SECONDS": "soon"},
     "EMP_INTELLIGENCE_HORIZON_SECONDS must be a number, got 'soon'"),
    ({"EMP_POOLS_FILE": "/nonexistent/pools.toml"}, "/nonexistent/pools.toml: cannot read"),
    # An audit's: inf was a traceback (or one at the first tick), nan ran on, 1.5 became 1.
    ({"EMP_INTELLIGENCE_MAX_KEYS": "inf"}, "EMP_INTELLIGENCE_MAX_KEYS must be a finite"),
    ({"EMP_INTELLIGENCE_RECENT_SECONDS": "inf"}, "must be a finite number"),
    ({"EMP_INTELLIGENCE_INTERVAL_SECONDS": "nan"}, "must be a finite number"),
    ({"EMP_INTELLIGENCE_DIRECTIVES_PER_POOL": "1.5"}, "must be a whole number, got 1.5"),
])
def test_bad_settings_stop_the_command_with_one_line_naming_them(
        redis_server, client: redis.Redis, env: dict[str, str], words: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "emp_tasks.cli", "intelligence"], capture_output=True,
        text=True, timeout=60,
        env={**os.environ, "EMP_REDIS_URL": redis_server.url, "PYTHONPATH": str(ROOT), **env})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert client.get(INTELLIGENCE_LEADER_KEY) is None  # nothing ran


@pytest.mark.parametrize(("args", "words"), [
    (("--interval", "nan"), "--interval must be a finite number, got nan"),
    (("--lease", "nan"), "--lease must be a finite number, got nan"),
    (("--lease", "inf"), "--lease must be a finite number, got inf"),
])
def test_a_non_finite_option_stops_the_command_with_one_line_naming_it(
        redis_server, client: redis.Redis, args: tuple[str, ...], words: str) -> None:
    """Tried: the options the variables above stand for, given nan or inf (the variables
    were checked for that, the options were not). Before: ``--interval nan`` led and ran
    on, ``--lease nan`` was a traceback (ValueError) at the first tick."""
    done = subprocess.run(
        [sys.executable, "-m", "emp_tasks.cli", "intelligence", *args], capture_output=True,
        text=True, timeout=60,
        env={**os.environ, "EMP_REDIS_URL": redis_server.url, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert client.get(INTELLIGENCE_LEADER_KEY) is None  # nothing ran


@pytest.mark.parametrize(("env", "words"), [
    ({"EMP_INTELLIGENCE_MIN_EXPECTED": "-1"}, "EMP_INTELLIGENCE_MIN_EXPECTED must be > 0, got -1"),
    ({"EMP_INTELLIGENCE_MIN_EXPECTED": "0"}, "EMP_INTELLIGENCE_MIN_EXPECTED must be > 0, got 0"),
    ({"EMP_INTELLIGENCE_EVICT_BELOW": "-0.5"}, "EMP_INTELLIGENCE_EVICT_BELOW must be >= 0"),
    ({"EMP_INTELLIGENCE_DIRECTIVE_TTL_SECONDS": "0"},
     "EMP_INTELLIGENCE_DIRECTIVE_TTL_SECONDS must be > 0, got 0"),
    ({"EMP_INTELLIGENCE_DIRECTIVES_PER_POOL": "-2"},
     "EMP_INTELLIGENCE_DIRECTIVES_PER_POOL must be >= 0, got -2"),
    ({"EMP_INTELLIGENCE_MAX_KEYS": "0"}, "EMP_INTELLIGENCE_MAX_KEYS must be >= 1, got 0"),
    ({"EMP_INTELLIGENCE_INTERVAL_SECONDS": "-1"},
     "EMP_INTELLIGENCE_INTERVAL_SECONDS must be > 0, got -1"),
    ({"EMP_INTELLIGENCE_HORIZON_SECONDS": "0"}, "EMP_INTELLIGENCE_HORIZON_SECONDS must be > 0"),
])
def test_an_impossible_setting_is_refused_naming_its_variable(
        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str) -> None:
    """Tried: ``EMP_INTELLIGENCE_MIN_EXPECTED=-1`` (every model seen wanted warm),
    ``EMP_INTELLIGENCE_EVICT_BELOW=-0.5`` (never evict) and
    ``EMP_INTELLIGENCE_DIRECTIVE_TTL_SECONDS=0`` (directives stale on arrival): each led
    without a word. ``-1`` for the interval said ``intelligence interval_seconds must be
    > 0``, ``-2`` directives per pool ``max_keys must be >= 1 and directives per pool >= 0``,
    naming no variable. Now each is refused with the variable the user set."""
    from capability_router.errors import EmpError
    from capability_router.prediction.service import IntelligenceSettings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(EmpError) as refused:
        IntelligenceSettings.from_env()
    assert words in str(refused.value)


def test_an_option_that_is_impossible_is_refused_naming_the_option() -> None:
    """``emp intelligence --interval -1``: the option, not only its variable, is named."""
    from capability_router.errors import EmpError
    from capability_router.prediction.service import IntelligenceSettings

    with pytest.raises(EmpError, match=r"--interval"):
        IntelligenceSettings.from_env(interval_seconds=-1.0)
