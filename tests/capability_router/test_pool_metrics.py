"""Pool observability on the real functions: what a claim and a completion record, and where.

Times are given explicitly (as the simulator gives virtual time), so every
figure is known by hand. ``T0`` is the start of a minute.
"""

from __future__ import annotations

import json
import re

import redis

from capability_router.functions import Claimed, QueueFunctions, library_source
from capability_router.jobspec import JobSpec
from capability_router.keys import OBS_SLOTS, Keys
from capability_router.pool_metrics import pool_series, read_minutes, wait_quantile
from capability_router.profile import WorkerProfile
from capability_router.residency import ResidencyReporter

T0 = 1_800_000_000_000
M0 = T0 // 60000
LEASE = 3_600_000
PROFILE = WorkerProfile.from_dict({"worker_id": "x", "services": ["simulation"],
                                   "models": {"simulation": ["flux", "sdxl", "wan"]}})
KEYS = Keys("default")


def job(model: str, routing: dict[str, str] | None = None) -> JobSpec:
    return JobSpec(service="simulation", requirements={"models": [model]}, routing=routing)


def routed(pool: str, predicted_ms: int) -> dict[str, str]:
    decision = {"pool": pool, "predicted_seconds": predicted_ms / 1000, "reason": "test"}
    return {"routing": json.dumps(decision), "predicted_ms": str(predicted_ms)}


def setup(client: redis.Redis, queue: QueueFunctions) -> None:
    queue.register_worker(PROFILE)
    ResidencyReporter(client, "w1", ["default"], PROFILE.signature).report(
        {"sdxl": "gpu", "flux": "disk"})
    client.zadd(KEYS.workers, {"w1": T0 + 10 * 3_600_000})  # live for the whole test


def claim(queue: QueueFunctions, now: int) -> Claimed:
    got = queue.claim(PROFILE.signature, "w1", LEASE, now_ms=now)
    assert isinstance(got, Claimed), got
    return got


def run(queue: QueueFunctions, claimed_at: int, started_at: int, done_at: int) -> str:
    got = claim(queue, claimed_at)
    assert queue.start(got.job_id, got.attempt, now_ms=started_at) == "ok"
    assert queue.complete(got.job_id, got.attempt, {"ok": True}, now_ms=done_at) == "ok"
    return got.job_id


def test_a_claim_and_a_completion_land_in_their_minutes_with_the_right_values(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    queue.enqueue("j-warm", job("sdxl"), "{}", now_ms=T0)
    queue.enqueue("j-disk", job("flux", routed("default", 20_000)), "{}", now_ms=T0 + 1000)
    queue.enqueue("j-dl", job("wan", routed("heavy", 1000)), "{}", now_ms=T0 + 2000)
    client.set(KEYS.desired, "3")
    assert run(queue, T0 + 5000, T0 + 6000, T0 + 30_000) == "j-warm"
    # minute 1: the flux job (on disk), run 15 s against 20 s predicted: routed well
    assert run(queue, T0 + 70_000, T0 + 71_000, T0 + 86_000) == "j-disk"
    # minute 2: wan is not on the machine; routed to "heavy", 5 s against 1 s predicted
    assert run(queue, T0 + 125_000, T0 + 126_000, T0 + 131_000) == "j-dl"

    m0, m1, m2 = read_minutes(client, "default", M0 + 2, 3)
    assert m0["claims"] == "1" and m0["wait_ms"] == "5000" and m0["wait:5"] == "1"
    assert m0["hit:warm"] == "1" and m0["done"] == "1" and m0["run_ms"] == "24000"
    # one job busy from its claim (5 s) to its completion (30 s); w1 live from the first
    # observation (5 s) to the minute's end
    assert m0["busy_ms"] == "25000" and m0["live_ms"] == "55000"
    assert (m0["depth"], m0["busy"], m0["live"], m0["desired"]) == ("2", "0", "1", "3")
    # Integrals since the last gauge sample wait in the state (< 1 s); readers add them.
    queue.enqueue("j-late", job("sdxl"), "{}", now_ms=T0 + 131_000)
    claim(queue, T0 + 131_400)  # 400 ms after the last sample, nothing running before
    assert client.hget(KEYS.obs, "al") == "400"
    assert read_minutes(client, "default", M0 + 2, 1)[0]["live_ms"] == str(11_000 + 400)
    assert "routed" not in m0  # the first job carried no routing decision
    assert m1["claims"] == "1" and m1["wait_ms"] == str(69_000) and m1["wait:120"] == "1"
    assert m1["hit:disk"] == "1" and m1["run_ms"] == "15000"
    assert (m1["routed"], m1["route_pool_ok"], m1["route_time_ok"]) == ("1", "1", "1")
    assert m1["busy_ms"] == "16000" and m1["live_ms"] == "60000"
    assert m2["hit:download"] == "1" and m2["routed"] == "1"
    assert "route_pool_ok" not in m2 and "route_time_ok" not in m2

    view = pool_series(client, "default", "1h", now_ms=T0 + 150_000)
    series = view["series"]
    assert len(series["t"]) == 60 and series["t"][-3:] == [T0, T0 + 60_000, T0 + 120_000]
    assert series["hit_rate"][-3:] == [1.0, 0.0, 0.5]  # j-late was warm
    assert series["throughput"][-3:] == [1, 1, 1]
    assert series["utilization"][-3] == round(25_000 / 55_000, 4)
    assert series["queue_efficiency"][-3] == round(5000 / 24_000, 4)
    assert series["routing_accuracy"][-2:] == [1.0, 0.0]
    assert series["desired"][-1] == 3.0 and series["live_workers"][-1] == 1.0
    assert series["queue_depth"][:-3] == [None] * 57  # before the first observation
    totals = view["totals"]
    assert totals["claims"] == 4 and totals["hit_rate"] == round(2 / 4, 4)
    assert totals["routed"] == 2 and totals["routing_accuracy"] == 0.5
    assert totals["routing_pool_accuracy"] == 0.5
    assert view["now"] == {"queue_depth": 0, "busy": 1, "live_workers": 1, "desired": 3.0}


def test_a_long_job_is_busy_in_every_minute_it_ran_and_quiet_minutes_keep_their_gauges(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    queue.enqueue("j1", job("sdxl"), "{}", now_ms=T0)
    queue.enqueue("j2", job("sdxl"), "{}", now_ms=T0)
    run(queue, T0, T0, T0 + 10 * 60_000)  # nothing else observed for ten minutes
    minutes = read_minutes(client, "default", M0 + 9, 10)
    assert [m["busy_ms"] for m in minutes] == ["60000"] * 10
    assert [m["live_ms"] for m in minutes] == ["60000"] * 10
    assert [m["depth"] for m in minutes] == ["1"] * 10  # j2 waited all along
    series = pool_series(client, "default", "1h", now_ms=T0 + 10 * 60_000)["series"]
    assert series["utilization"][-11:-1] == [1.0] * 10


def test_the_wait_p95_comes_from_the_minute_buckets(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    for i in range(20):
        queue.enqueue(f"j{i}", job("sdxl"), "{}", now_ms=T0)
    for i in range(20):  # waits 1 s (19 jobs) and 50 s (1 job)
        got = claim(queue, T0 + (50_000 if i == 19 else 1000))
        queue.complete(got.job_id, got.attempt, None, now_ms=T0 + 55_000)
    (minute,) = read_minutes(client, "default", M0, 1)
    assert minute["wait:1"] == "19" and minute["wait:60"] == "1"
    p95 = pool_series(client, "default", "1h", now_ms=T0 + 59_000)["series"]["wait_p95_seconds"]
    assert p95[-1] == wait_quantile([0] * 7 + [19] + [0] * 4 + [1] + [0] * 6) == 1.0
    assert wait_quantile([0] * 12 + [10] + [0] * 6) == 58.5  # 95% into the 30-60 s bucket


def test_memory_is_bounded_a_ring_of_1500_minutes_that_also_expires(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    for i in range(OBS_SLOTS + 100):  # a job claimed every minute for 26 h 40 min
        at = T0 + i * 60_000
        queue.enqueue(f"j{i}", job("sdxl"), "{}", now_ms=at)
        got = claim(queue, at + 10)
        queue.complete(got.job_id, got.attempt, None, now_ms=at + 20)
    slots = list(client.scan_iter(match=KEYS.prefix + "obs:*", count=1000))
    assert len(slots) == OBS_SLOTS
    last = M0 + OBS_SLOTS + 99
    assert read_minutes(client, "default", M0 + 99, 1) == [{}]  # overwritten by minute +1599
    assert read_minutes(client, "default", last, 1)[0]["m"] == str(last)
    ttl = client.pttl(KEYS.obs_minute(last))
    assert 0 < ttl <= 25 * 3_600_000
    assert int(client.memory_usage(KEYS.obs_minute(last))) < 400


def test_an_observation_older_than_the_ring_is_dropped_and_a_late_one_moves_no_integral(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    late = T0 + OBS_SLOTS * 60_000
    for i in range(3):
        queue.enqueue(f"j{i}", job("sdxl"), "{}", now_ms=T0)
    claim(queue, late)
    claim(queue, T0 + 1)  # same slot as the last one, 25 h older: dropped
    assert read_minutes(client, "default", M0, 1) == [{}]
    assert read_minutes(client, "default", M0 + OBS_SLOTS, 1)[0]["claims"] == "1"
    claim(queue, late - 60_000)  # a minute late: counted, no integral moves back
    assert read_minutes(client, "default", M0 + OBS_SLOTS - 1, 1)[0]["claims"] == "1"
    assert client.hget(KEYS.obs, "t") == str(late)


def test_a_claim_that_finds_nothing_starts_no_minute(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    assert queue.claim(PROFILE.signature, "w1", LEASE, now_ms=T0) == 0
    assert not client.exists(KEYS.obs) and read_minutes(client, "default", M0, 1) == [{}]
    queue.enqueue("j1", job("sdxl"), "{}", now_ms=T0)
    run(queue, T0 + 1000, T0 + 1000, T0 + 2000)
    assert queue.claim(PROFILE.signature, "w1", LEASE, now_ms=T0 + 30_000) == 0  # a tick
    keys = sorted(client.scan_iter(match=KEYS.prefix + "obs*"))
    assert queue.claim(PROFILE.signature, "w1", LEASE, now_ms=T0 + 90_000) == 0  # next minute
    assert sorted(client.scan_iter(match=KEYS.prefix + "obs*")) == keys
    (minute,) = read_minutes(client, "default", M0, 1)
    assert minute["live_ms"] == str(29_000)  # from the first observation to the tick


def test_desired_is_null_without_the_scalers_key_and_a_foreign_type_breaks_nothing(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    queue.enqueue("j1", job("sdxl"), "{}", now_ms=T0)
    client.hset(KEYS.desired, "machines", "4")  # not ours: the claim must still work
    claim(queue, T0 + 1000)
    view = pool_series(client, "default", "1h", now_ms=T0 + 2000)
    assert view["series"]["desired"][-1] is None and view["now"]["desired"] is None


def test_the_lua_ring_size_is_the_one_python_reads() -> None:
    found = re.search(r"local OBS_SLOTS = (\d+)", library_source())
    assert found and int(found.group(1)) == OBS_SLOTS


def test_a_failure_counts_and_ends_the_jobs_busy_time(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    queue.enqueue("j1", job("sdxl"), "{}", now_ms=T0)
    got = claim(queue, T0 + 1000)
    queue.start(got.job_id, got.attempt, now_ms=T0 + 1000)
    # emp_fail with an explicit time (its wrapper sends none: server time)
    assert client.fcall("emp_fail", 2, KEYS.config, KEYS.job("j1"), "j1", got.attempt, "boom",
                        T0 + 5000) == "ok"
    assert client.hget(KEYS.obs, "busy") == "0"
    (fields,) = read_minutes(client, "default", M0, 1)
    assert fields["failed"] == "1" and "done" not in fields
    assert fields["busy_ms"] == "4000"  # claimed at 1 s, failed at 5 s
