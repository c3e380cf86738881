"""The duration model: emp_complete learns run times per key, predictions pool namespaces
and fall back to the pools file's priors; queued predicted work is counted per pool."""

from __future__ import annotations

import json
import math

import pytest
import redis

from capability_router.duration import DurationModel, duration_key, job_size
from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import Keys
from capability_router.pools import Priors
from capability_router.profile import WorkerProfile

T0 = 1_900_000_000_000
IMAGE = {"steps": 1, "width": 1024, "height": 1024, "frames": 1}
WORKER = WorkerProfile(worker_id="w", services=["simulation"])


def submit(functions: QueueFunctions, job_id: str, key: str | None, units: float,
           predicted_ms: int = 1000, now: int = T0) -> None:
    spec = JobSpec(service="simulation", pool=functions.keys.namespace)
    if key is not None:
        spec.route(functions.keys.namespace, {
            "duration_key": key, "work_units": str(units), "predicted_ms": str(predicted_ms),
            "routing": json.dumps({"pool": functions.keys.namespace, "predicted_seconds": 1.0,
                                   "reason": "test", "alternatives": []})})
    assert functions.enqueue(job_id, spec, json.dumps({"id": job_id}), now_ms=now)[0] == "queued"


def run(functions: QueueFunctions, job_id: str, started: int, seconds: float) -> None:
    """Claim, start at ``started`` and complete ``seconds`` later (explicit times)."""
    functions.register_worker(WORKER)
    claimed = functions.claim(WORKER.signature, "w", 60_000, now_ms=started)
    assert isinstance(claimed, Claimed) and claimed.job_id == job_id
    assert functions.start(job_id, claimed.attempt, now_ms=started) == "ok"
    assert functions.complete(job_id, claimed.attempt, {}, now_ms=started + round(
        seconds * 1000)) == "ok"


def model(client: redis.Redis, *namespaces: str, priors: Priors | None = None) -> DurationModel:
    return DurationModel(client, namespaces or ("default",),
                         priors or Priors(20.0, {"simulation": 0.5}), cache_seconds=0)


def test_size_features_make_the_key_and_the_work_units() -> None:
    image = job_size({"steps": 30, "width": 1024, "height": 512, "prompt": "x"}, IMAGE)
    assert image.features == ("height", "steps", "width") and image.work_units == 15
    video = job_size({"steps": 20, "width": 512, "height": 512, "frames": 48}, IMAGE)
    assert video.features == ("frames", "height", "steps", "width") and video.work_units == 240
    # Absent, zero, boolean or non-numeric values are not features of this job.
    bare = job_size({"steps": 0, "width": True, "height": "tall"}, IMAGE)
    assert bare == job_size({}, IMAGE) and bare.work_units == 1 and bare.features == ()
    assert duration_key("comfyui", ["sdxl", "lora-a", "sdxl"], image.features) == (
        "comfyui|lora-a+sdxl|height,steps,width")
    assert duration_key("echo", [], ()) == "echo|-|-"
    long_key = duration_key("comfyui", [f"model-{i:03d}" for i in range(40)], ("steps",))
    assert len(long_key) < 60 and long_key.startswith("comfyui|#") and long_key.endswith(
        "|steps")


def test_a_completed_run_teaches_the_model(client: redis.Redis) -> None:
    functions = QueueFunctions(client, "default")
    durations = model(client)
    key = "simulation|-|steps"
    unseen = durations.estimate("simulation", [], {"steps": 8}, {"steps": 1})
    assert (unseen.key, unseen.source, unseen.seconds) == (key, "prior", 4.0)  # 8 x 0.5 s
    submit(functions, "job-1", key, 8)
    run(functions, "job-1", T0 + 1000, 16.0)  # 2 s per step
    learnt = durations.estimate("simulation", [], {"steps": 4}, {"steps": 1})
    assert learnt.source == "learned" and learnt.runs == 1
    assert learnt.seconds == pytest.approx(8.0, rel=1e-4)  # 4 steps x 2 s, not the prior
    assert learnt.record_fields() == {"duration_key": key, "work_units": "4",
                                      "predicted_ms": str(learnt.predicted_ms)}


def test_the_estimate_follows_a_change_in_run_time(client: redis.Redis) -> None:
    functions = QueueFunctions(client, "default")
    functions.configure(duration_alpha=0.5)
    key = "simulation|-|-"
    at = T0
    for i, seconds in enumerate([10, 10, 10, 10, 2, 2, 2, 2, 2]):
        submit(functions, f"job-{i}", key, 1, now=at)
        run(functions, f"job-{i}", at, seconds)
        at += 60_000
    estimate = model(client).estimate("simulation", [], {})
    assert estimate.runs == 9
    # Five runs at 2 s with weight 0.5 leave 1/32 of the old ln(10/2): 2 s x 5^(1/32), 2.1 s.
    assert estimate.seconds == pytest.approx(2 * 5 ** (1 / 32), rel=1e-4)
    with pytest.raises(ValueError, match="duration_alpha must be in"):
        functions.configure(duration_alpha=1.5)


def test_namespaces_are_pooled_by_runs(client: redis.Redis) -> None:
    key = "simulation|-|-"
    fast, heavy = QueueFunctions(client, "fast"), QueueFunctions(client, "heavy")
    for i in range(3):
        submit(fast, f"f{i}", key, 1, now=T0 + i * 10_000)
        run(fast, f"f{i}", T0 + i * 10_000, 1.0)
    submit(heavy, "h0", key, 1)
    run(heavy, "h0", T0, 16.0)
    estimate = model(client, "fast", "heavy", "standard").estimate("simulation", [], {})
    # ln-mean weighted 3:1 -> exp((3*ln 1 + ln 16) / 4) = 2 s.
    assert (estimate.runs, estimate.source) == (4, "learned")
    assert estimate.seconds == pytest.approx(2.0, rel=1e-4)


def test_a_run_without_a_key_teaches_nothing(client: redis.Redis) -> None:
    functions = QueueFunctions(client, "default")
    submit(functions, "plain", None, 1)
    run(functions, "plain", T0, 3.0)
    assert client.hlen(Keys("default").durations) == 0
    assert model(client).estimate("simulation", [], {}).source == "prior"


def test_learnt_keys_are_capped_least_recent_first(client: redis.Redis) -> None:
    functions = QueueFunctions(client, "default")
    functions.configure(duration_keys_max=2)
    for i, key in enumerate(["a|-|-", "b|-|-", "a|-|-", "c|-|-"]):
        submit(functions, f"job-{i}", key, 1, now=T0 + i * 1000)
        run(functions, f"job-{i}", T0 + i * 1000, 1.0)
    assert sorted(client.hkeys(Keys("default").durations)) == ["a|-|-", "c|-|-"]
    assert client.zcard(Keys("default").duration_seen) == 2


def test_unfinished_predicted_work_is_counted_until_the_job_ends(client: redis.Redis) -> None:
    functions = QueueFunctions(client, "default")
    load = Keys("default").load

    def unfinished() -> tuple[int, int]:
        values = client.hmget(load, "unfinished_ms", "unfinished")
        return int(values[0] or 0), int(values[1] or 0)

    submit(functions, "a", "k|-|-", 1, predicted_ms=4000)
    submit(functions, "b", "k|-|-", 1, predicted_ms=6000)
    submit(functions, "plain", None, 1)
    assert unfinished() == (10_000, 2)
    run(functions, "a", T0 + 10, 4.0)  # claimed first: submitted first, same priority
    assert unfinished() == (6000, 1)
    assert functions.cancel("b")[0] == "cancelled"
    assert unfinished() == (0, 0)
    assert functions.resubmit("b", "again") == "pending"
    assert unfinished() == (6000, 1)
    assert functions.cancel("b")[0] == "cancelled"
    functions.cancel("b")  # already ended: not counted out twice
    assert unfinished() == (0, 0)


@pytest.mark.parametrize("corrupt", ["-9223372036854775800", "9223372036854775800", "nan"])
def test_a_corrupt_load_counter_never_breaks_a_submit_cancel_or_completion(
        client: redis.Redis, corrupt: str) -> None:
    """Tried: the pool's P.."load" counters far out of range (as an older release's
    overflowed prediction or a hand edit leaves them: ``hset emp:{default}:load
    unfinished_ms -9223372036854775800``), then a submit, a cancel and a completion of
    jobs with a prediction. Before, HINCRBY failed "increment or decrement would
    overflow" halfway through the function: the cancel answered an error yet left the
    job cancelled with its work still counted (or the submit failed after filing).
    Now the counters are kept within [0, 2^53]: every call succeeds and the load ends
    at 0 once the jobs have ended."""
    functions = QueueFunctions(client, "default")
    load = Keys("default").load
    client.hset(load, mapping={"unfinished_ms": corrupt, "unfinished": corrupt})
    submit(functions, "a", "k|-|-", 1, predicted_ms=4000)
    submit(functions, "b", "k|-|-", 1, predicted_ms=6000)
    client.hset(load, mapping={"unfinished_ms": corrupt, "unfinished": corrupt})
    assert functions.cancel("a")[0] == "cancelled"
    assert client.hget(Keys("default").job("a"), "status") == "cancelled"
    client.hset(load, mapping={"unfinished_ms": corrupt, "unfinished": corrupt})
    run(functions, "b", T0 + 10, 6.0)
    values = [int(v) for v in client.hmget(load, "unfinished_ms", "unfinished")]
    # Too high: held at the cap, less the completed job.
    assert values == ([2**53 - 6000, 2**53 - 1] if corrupt.startswith("9") else [0, 0])


def test_job_submitted_carries_the_routing(client: redis.Redis) -> None:
    functions = QueueFunctions(client, "default")
    submit(functions, "routed", "k|-|-", 1)
    submit(functions, "plain", None, 1)
    events = {fields["job_id"]: json.loads(fields["data"])
              for _, fields in client.xrange(Keys("default").events)
              if fields["event"] == "job_submitted"}
    assert events["routed"]["routing"] == {"pool": "default", "predicted_seconds": 1.0,
                                           "reason": "test", "alternatives": []}
    assert "routing" not in events["plain"]
    assert math.isfinite(events["routed"]["timestamp"])
