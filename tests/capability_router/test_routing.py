"""The router's decisions against a real Redis: hard requirements, predicted duration,
warm models, live capacity and spill-over, read from the pools' live state."""

from __future__ import annotations

import json
import math
import time

import pytest
import redis

from capability_router.errors import InvalidJob
from capability_router.functions import QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.keys import Keys
from capability_router.pools import parse_pools
from capability_router.profile import WorkerProfile
from capability_router.registry import WorkerRegistry
from capability_router.routing import Router
from emp_tasks.jobs.simulation import SIZE_FEATURES

POOLS = """
[routing]
spill_wait_seconds = 10

[pools.fast]
gpu = false
gpu_memory_gb = [0, 0]
storage_gb = 40
durations_seconds = [0, 5]
services = ["simulation", "echo"]

[pools.standard]
gpu = true
gpu_memory_gb = [16, 24]
storage_gb = 120
durations_seconds = [5, 60]
services = ["simulation", "comfyui"]
preload_models = ["sdxl"]

[pools.heavy]
gpu = true
gpu_memory_gb = [40, 80]
storage_gb = 300
durations_seconds = [30, 3600]
services = ["simulation", "comfyui"]

[priors]
default_seconds_per_unit = 10

[priors.services.simulation]
seconds_per_unit = 0.5
"""

SHORT = {"steps": 4}                                                     # 4 units: 2 s
IMAGE = {"steps": 20, "width": 1024, "height": 1024}                     # 20 units: 10 s
VIDEO = {"steps": 20, "width": 512, "height": 512, "frames": 96}         # 480 units: 240 s


def live(client: redis.Redis, pool: str, worker_id: str, idle: bool = True) -> None:
    """A worker of ``pool``: a heartbeat, and (``idle``) an idle mark from an empty claim."""
    profile = WorkerProfile(worker_id=worker_id, services=["simulation", "comfyui", "echo"],
                            hardware={"gpu_memory_gb": 80})
    WorkerRegistry(client).heartbeat(profile.as_dict(), [pool], [], 60_000)
    if idle:
        functions = QueueFunctions(client, pool)
        functions.register_worker(profile)
        assert functions.claim(profile.signature, worker_id, 60_000, idle_ms=60_000) == 0


@pytest.fixture
def router(client: redis.Redis) -> Router:
    for pool, worker in (("fast", "f1"), ("standard", "s1"), ("heavy", "h1")):
        live(client, pool, worker)
    return Router(client, parse_pools(POOLS, "test-pools.toml"), cache_seconds=0)


def spec(payload: dict | None = None, service: str = "simulation", **fields: object) -> JobSpec:
    return JobSpec(service=service, payload=payload or {}, **fields)


def routed(router: Router, job: JobSpec) -> dict:
    router.route(job, SIZE_FEATURES)
    return json.loads(job.routing["routing"])


def test_short_image_and_video_jobs_go_to_fast_standard_heavy(router: Router) -> None:
    for payload, pool, seconds in ((SHORT, "fast", 2), (IMAGE, "standard", 10),
                                   (VIDEO, "heavy", 240)):
        job = spec(payload)
        decision = routed(router, job)
        assert job.pool == decision["pool"] == pool
        assert decision["predicted_seconds"] == seconds
        assert f"fits {pool}" in decision["reason"]
        assert [a["pool"] for a in decision["alternatives"]] == [
            p for p in ("fast", "standard", "heavy") if p != pool]
        assert job.record_fields()["predicted_ms"] == str(seconds * 1000)
        assert job.header()["pool"] == pool


def test_hard_requirements_exclude_pools_whatever_the_duration(router: Router) -> None:
    big = spec(SHORT, requirements={"hardware": {"gpu_memory_gb": 48}})
    decision = routed(router, big)
    assert decision["pool"] == "heavy"  # 2 s would fit fast, which has no GPU
    notes = {a["pool"]: a["note"] for a in decision["alternatives"]}
    assert notes["fast"] == "cannot run: needs 48 GB GPU memory, pool is CPU-only"
    assert notes["standard"] == "cannot run: needs 48 GB GPU memory, pool has at most 24"
    comfy = spec({}, service="comfyui")  # 10 s prior, one unit; fast does not run comfyui
    assert routed(router, comfy)["pool"] == "standard"


def test_a_job_that_fits_no_pool_it_can_run_goes_to_the_nearest(router: Router) -> None:
    # comfyui runs in standard (5-60 s) and heavy (30-3600 s) only: a 0.6 s job to standard.
    tiny = routed(router, spec({"steps": 1, "width": 256, "height": 256}, service="comfyui"))
    assert tiny["pool"] == "standard" and tiny["predicted_seconds"] == 0.625  # 1/16 x 10 s
    assert tiny["reason"].endswith("standard (5-60 s) is the nearest")
    slow = routed(router, spec({}, service="echo"))  # 10 s; echo runs in fast (0-5 s) only
    assert slow["pool"] == "fast" and slow["predicted_seconds"] == 10
    huge = routed(router, spec({"steps": 20000}))  # 10,000 s: beyond every range
    assert huge["pool"] == "heavy"
    assert huge["reason"] == ("predicted 1e+04 s fits no pool that can run it; heavy "
                              "(30-3600 s) is the nearest")


def test_a_job_no_pool_can_run_is_refused_naming_each_pool(router: Router,
                                                            client: redis.Redis) -> None:
    with pytest.raises(InvalidJob) as refused:
        router.route(spec({}, service="comfyui",
                          requirements={"hardware": {"gpu_memory_gb": 96}}), SIZE_FEATURES)
    assert str(refused.value) == (
        "no pool can run this job: fast: does not run service comfyui; standard: needs 96 GB "
        "GPU memory, pool has at most 24; heavy: needs 96 GB GPU memory, pool has at most 80")
    assert not any(client.scan_iter("emp:{*}:job:*"))


def test_a_job_that_names_a_pool_keeps_it(router: Router) -> None:
    for job in (spec(VIDEO, pool="fast"), spec(VIDEO, requirements={"pool": "fast"})):
        decision = routed(router, job)
        assert job.pool == decision["pool"] == "fast"
        assert decision["reason"] == "pool named by the job" and decision["alternatives"] == []
        assert decision["predicted_seconds"] == 240  # still predicted: counted as queued work


def test_warm_models_break_the_tie_between_fitting_pools(router: Router,
                                                         client: redis.Redis) -> None:
    payload = {"steps": 80, "width": 1024, "height": 1024}  # 40 s: fits standard and heavy
    cold = routed(router, spec(payload, requirements={"models": ["wan"]}))
    assert cold["pool"] == "standard"
    client.zadd(Keys("heavy").warm("wan"), {"h1": 1})
    warm = routed(router, spec(payload, requirements={"models": ["wan"]}))
    assert warm["pool"] == "heavy" and warm["reason"].endswith("models warm there")
    assert {"pool": "standard", "note": "fits too; models warm in heavy",
            "expected_wait_seconds": 0.0} in warm["alternatives"]
    # standard pre-loads sdxl: warm there by configuration.
    assert routed(router, spec(payload, requirements={"models": ["sdxl"]}))["pool"] == "standard"
    # A warm model never pulls a job into a pool its duration does not fit.
    client.zadd(Keys("fast").warm("tiny"), {"f1": 1})
    assert routed(router, spec(IMAGE, requirements={"models": ["tiny"]}))["pool"] == "standard"


def test_a_pool_without_live_workers_is_passed_over_for_a_bigger_one(
        client: redis.Redis) -> None:
    live(client, "heavy", "h1")
    router = Router(client, parse_pools(POOLS), cache_seconds=0)
    decision = routed(router, spec(SHORT))
    assert decision["pool"] == "heavy"
    assert decision["reason"].startswith("fast has no live worker")
    assert {"pool": "fast", "note": "no live worker", "expected_wait_seconds": None} in (
        decision["alternatives"])


def test_a_job_that_waits_for_a_machine_says_so_in_its_reason(client: redis.Redis) -> None:
    """Tried: a video job (fits only heavy) while heavy, the biggest pool, has no live worker
    (its machines moved to another pool, or scaled to zero). Before, its reason was only
    "predicted 240 s fits heavy (30-3600 s)": the submitter saw nothing about the job
    waiting for a machine that does not exist. Now the reason says it waits for one."""
    live(client, "fast", "f1")
    live(client, "standard", "s1")
    router = Router(client, parse_pools(POOLS), cache_seconds=0)
    decision = routed(router, spec(VIDEO))
    assert decision["pool"] == "heavy"
    assert decision["reason"] == (
        "predicted 240 s fits heavy (30-3600 s); no live worker there nor in a bigger pool "
        "that can run it: waits for one")


def saturate_standard(client: redis.Redis) -> None:
    """standard's one worker busy, 60 s of predicted work queued: expected wait 60 s."""
    client.delete(Keys("standard").idle)
    client.hset(Keys("standard").load, mapping={"unfinished_ms": 60_000, "unfinished": 6})


def test_a_saturated_pool_spills_over_to_an_idle_bigger_one(router: Router,
                                                            client: redis.Redis) -> None:
    saturate_standard(client)
    decision = routed(router, spec(IMAGE))
    assert decision["pool"] == "heavy"
    assert decision["reason"].startswith(
        "spilled over from standard (expected wait 60 s > 10 s) to heavy (1 idle worker(s))")
    assert {"pool": "standard", "note": "saturated: expected wait 60 s > 10 s",
            "expected_wait_seconds": 60.0} in decision["alternatives"]


def test_spill_over_stops_where_no_bigger_pool_idles_or_can_run_it(
        router: Router, client: redis.Redis) -> None:
    saturate_standard(client)
    assert routed(router, spec(IMAGE))["pool"] == "heavy"  # heavy idles: spilled
    client.delete(Keys("heavy").idle)  # heavy busy too: nowhere idle to spill to
    stays = routed(router, spec(IMAGE))
    assert stays["pool"] == "standard"
    assert stays["reason"].endswith("expected wait 60 s, no bigger pool that can run it is idle")
    # Never down: a saturated heavy does not send a video job to idle standard or fast.
    client.hset(Keys("heavy").load, mapping={"unfinished_ms": 600_000})
    assert routed(router, spec(VIDEO))["pool"] == "heavy"


def test_spill_over_never_goes_to_a_pool_that_cannot_run_the_job(
        client: redis.Redis) -> None:
    text = POOLS.replace('services = ["simulation", "comfyui"]\n\n[priors]',
                         'services = ["comfyui"]\n\n[priors]')
    router = Router(client, parse_pools(text), cache_seconds=0)
    for pool, worker in (("fast", "f1"), ("standard", "s1"), ("heavy", "h1")):
        live(client, pool, worker)
    saturate_standard(client)
    decision = routed(router, spec(IMAGE))  # heavy idles, but runs no simulation jobs
    assert decision["pool"] == "standard"
    assert {"pool": "heavy", "note": "cannot run: does not run service simulation",
            "expected_wait_seconds": 0.0} in decision["alternatives"]


def test_pool_state_is_read_once_per_cache_period(client: redis.Redis) -> None:
    for pool, worker in (("fast", "f1"), ("standard", "s1"), ("heavy", "h1")):
        live(client, pool, worker)
    router = Router(client, parse_pools(POOLS), cache_seconds=60)
    assert routed(router, spec(IMAGE))["pool"] == "standard"
    before = client.info("stats")["total_commands_processed"]
    for _ in range(20):
        routed(router, spec(IMAGE))
    # Only the INFO call itself: twenty decisions read nothing from Redis.
    assert client.info("stats")["total_commands_processed"] - before <= 2


def test_an_edited_pools_file_routes_the_next_submit_and_a_bad_edit_changes_nothing(
        app, client: redis.Redis, tmp_path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Tried: routing on in a running producer, then the operator edits the pools file:
    fast's durations widen to 0-20 s (so a 10 s image job fits fast), then a typo
    (gpu = "yes"). Before, the producer kept the file it read at its first submit for its
    whole life: image jobs still went to standard while /api/pools (which re-reads the file)
    showed the new ranges. Now the edit routes the next submit; the typo is refused with
    one log line naming the field, and routing keeps the last good file."""
    from emp_tasks import producer

    for pool, worker in (("fast", "f1"), ("standard", "s1"), ("heavy", "h1")):
        live(client, pool, worker)
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    monkeypatch.setenv("EMP_POOLS_FILE", str(path))

    def pool_of() -> str:
        job = producer.submit("simulation", IMAGE, app=app)
        return producer.get_job(job.id, app=app)["pool"]

    assert pool_of() == "standard"
    edited = POOLS.replace("durations_seconds = [0, 5]", "durations_seconds = [0, 20]")
    path.write_text(edited)
    assert pool_of() == "fast"
    path.write_text(edited.replace("gpu = true", 'gpu = "yes"', 1))
    with caplog.at_level("ERROR", logger="capability_router.pools"):
        assert pool_of() == "fast"
        assert pool_of() == "fast"
    refused = [r.getMessage() for r in caplog.records if r.name == "capability_router.pools"]
    assert len(refused) == 1 and "pools.standard.gpu must be true or false" in refused[0]
    assert str(path) in refused[0] and "routing keeps the last good version" in refused[0]


def test_jobs_in_a_pool_nobody_serves_and_the_file_does_not_name_are_listed(
        app, client: redis.Redis, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: a job submitted with pool="standrd" (a typo; the same as a pool removed from the
    file, or whose machines moved to another pool, with jobs still pending). Before, /api/pools
    and the desired-machines gauge listed only the file's pools and those a live worker
    serves: the job waited forever with nothing anywhere saying where. Now the pool is
    listed, unconfigured, with its pending job and no live worker, until it holds none."""
    from capability_router.pool_view import pools_view
    from emp_tasks import producer

    live(client, "standard", "s1")
    path = tmp_path / "pools.toml"
    path.write_text(POOLS)
    monkeypatch.setenv("EMP_POOLS_FILE", str(path))
    job = producer.submit("simulation", IMAGE, app=app, pool="standrd")
    view = {p["name"]: p for p in pools_view(client, parse_pools(POOLS, "test-pools.toml"))}
    assert list(view) == ["fast", "standard", "heavy", "standrd"]
    lost = view["standrd"]
    assert (lost["configured"], lost["workers"], lost["pending"], lost["live_workers"]) == (
        False, [], 1, 0)
    assert lost["unfinished_seconds"] == 10
    # Not in the pools file: no machines are asked for it, and the view says why it waits.
    assert lost["desired_machines"] == 0 and "does not name it" in lost["waiting_reason"]
    producer.cancel(job.id, app=app)  # nothing left there: no longer listed
    assert "standrd" not in {p["name"] for p in pools_view(client, parse_pools(POOLS))}


def test_a_pool_holding_jobs_without_a_prediction_asks_for_a_machine(
        app, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: routing off (no EMP_POOLS_FILE, so no predicted seconds), two jobs submitted
    to a pool with no machine. Before, /api/pools and the emp_pool_desired_machines gauge
    KEDA reads said desired_machines 0 for it (no predicted work to clear), so a pool
    scaled to zero never got a machine and its jobs waited forever. Now: 1."""
    from capability_router.pool_view import pools_view
    from emp_tasks import producer

    monkeypatch.delenv("EMP_POOLS_FILE", raising=False)
    for _ in range(2):
        producer.submit("simulation", IMAGE, app=app, pool="batch")
    view = {p["name"]: p for p in pools_view(client, None)}
    assert (view["batch"]["pending"], view["batch"]["unfinished_seconds"]) == (2, 0)
    assert (view["batch"]["live_machines"], view["batch"]["desired_machines"]) == (0, 1)


def test_a_job_no_worker_can_run_does_not_hold_the_pool_at_its_peak(
        client: redis.Redis) -> None:
    """Tried: standard drained to three idle machines but one job pending there for a
    minute that none of them can run (its requirements match no worker). Before, the
    scaler's "jobs wait longer than the target: release nothing" held desired_machines at
    3 for as long as that job sat there, though every worker idled. Now it steps down (3 -> 2:
    one machine per decision, the job's own backlog still asking for one)."""
    from capability_router.pool_view import pools_view

    for worker in ("s1", "s2", "s3"):
        live(client, "standard", worker)
    client.hset(Keys("standard").load, "unfinished_ms", 10_000)
    client.zadd(Keys("standard").status_index("pending"), {"stuck": time.time() * 1000 - 60_000})
    standard = {p["name"]: p for p in pools_view(client, parse_pools(POOLS))}["standard"]
    assert (standard["live_machines"], standard["idle_workers"], standard["pending"]) == (3, 3, 1)
    assert standard["desired_machines"] == 2


def test_the_decision_says_whether_its_prediction_is_the_prior_or_learnt(
        router: Router, client: redis.Redis) -> None:
    """Tried: the first image job of its kind (nothing learnt), then the same after 12
    runs were learnt in standard at 0.25 s a unit. Before, both decisions read the same
    ("predicted 10 s fits standard"): nothing told the operator the first was only the pools
    file's prior guess. Now routing carries predicted_from and learned_runs."""
    first = spec(IMAGE)
    decision = routed(router, first)
    assert (decision["predicted_from"], decision["learned_runs"]) == ("prior", 0)
    key = first.record_fields()["duration_key"]
    client.hset(Keys("standard").durations, key, f"{math.log(0.25)},12")
    decision = routed(router, spec(IMAGE))
    assert (decision["predicted_from"], decision["learned_runs"]) == ("learned", 12)
    assert decision["predicted_seconds"] == 5


def test_workers_on_hosts_whose_clocks_are_off_all_count_as_live(
        client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: three workers of one pool heartbeating (60 s time to live) from hosts whose
    clocks are right, 3 min ahead and 3 min behind. Before, each stamped its heartbeat with
    its own host's clock: the one ahead pruned the other two from the pool's live set at
    each heartbeat, the one behind looked dead from its first, and `/api/pools` (like the
    router's load and the desired-machines gauge) counted 1 live worker of 3. Now the
    heartbeats and their readers use Redis' clock: 3 live, on every reader's host."""
    from capability_router.pool_view import pools_view

    real = time.time
    for worker_id, skew in (("right", 0), ("ahead", 180), ("behind", -180), ("right", 0)):
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        profile = WorkerProfile(worker_id=worker_id, services=["simulation"])
        WorkerRegistry(client).heartbeat(profile.as_dict(), ["standard"], [], 60_000)
    for skew in (0, 180, -180):  # the reader's own host clock does not matter either
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        view = {p["name"]: p for p in pools_view(client, parse_pools(POOLS, "pools.toml"))}
        assert view["standard"]["live_workers"] == 3, skew


def test_a_reader_whose_clock_is_off_takes_the_leaders_forecast_and_the_queue_as_they_are(
        client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: a forecast the leader wrote just now (2 arrivals/s, stamped on Redis' clock)
    and a job pending for 10 s, read by ``/api/pools`` from hosts 3 min ahead and behind.
    Before, the reader measured both ages on its own clock: 3 min ahead, the fresh forecast
    was older than its 120 s limit and dropped (0 arrivals/s, fewer machines wanted), and
    the job seemed to have waited 190 s; now both are read on Redis' clock."""
    from capability_router.functions import redis_now_ms
    from capability_router.pool_view import pools_view
    from capability_router.prediction.elastic import PoolForecast

    now = redis_now_ms(client)
    client.hset(Keys("standard").forecast,
                mapping=PoolForecast(arrival_rate=2.0, mean_job_seconds=5.0, at_ms=now).fields())
    client.zadd(Keys("standard").status_index("pending"), {"waiting": now - 10_000})
    real = time.time
    seen = {}
    for skew in (0, 180, -180):
        monkeypatch.setattr(time, "time", lambda skew=skew: real() + skew)
        view = {p["name"]: p for p in pools_view(client, parse_pools(POOLS, "pools.toml"))}
        seen[skew] = (view["standard"]["forecast_arrivals_per_second"],
                      view["standard"]["desired_machines"])
    assert seen[180] == seen[0] == seen[-180] and seen[0][0] == 2.0, seen


def test_a_prediction_too_large_for_the_queue_is_capped_and_the_job_can_be_cancelled(
        app, client: redis.Redis, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tried: a pools file whose priors the file accepts (simulation 1e5 s per unit, comfyui
    1e308) and jobs with a large size (steps 1e300: the model's 1e12 work units). Before,
    the comfyui submit died with OverflowError (a traceback; 500 over REST); the
    simulation job's 1e20 predicted ms wrapped P.."load"'s unfinished_ms to about -9.2e18
    (/api/pools showed 0 unfinished seconds for a pool holding it), and cancelling a second
    such job failed with "increment or decrement would overflow": a job nobody could
    cancel. Now a prediction is capped at MAX_PREDICTED_SECONDS: both submit, the pool
    shows their work, and both cancel, leaving the pool's load at 0."""
    from capability_router.duration import MAX_PREDICTED_SECONDS
    from capability_router.pool_view import pools_view
    from emp_tasks import producer

    live(client, "heavy", "h1")
    text = POOLS.replace("seconds_per_unit = 0.5", "seconds_per_unit = 1e5") + (
        "\n[priors.services.comfyui]\nseconds_per_unit = 1e308\n")
    path = tmp_path / "pools.toml"
    path.write_text(text)
    monkeypatch.setenv("EMP_POOLS_FILE", str(path))
    huge = {"steps": 1e300, "frames": 5}
    jobs = [producer.submit("simulation", huge, app=app) for _ in range(2)]
    jobs.append(producer.submit("comfyui", {"steps": 30}, app=app))
    records = [producer.get_job(job.id, app=app) for job in jobs]
    assert [r["pool"] for r in records] == ["heavy"] * 3
    assert all(int(r["predicted_ms"]) == MAX_PREDICTED_SECONDS * 1000 for r in records)
    heavy = {p["name"]: p for p in pools_view(client, parse_pools(text))}["heavy"]
    assert heavy["unfinished_seconds"] == 3 * MAX_PREDICTED_SECONDS
    for job in jobs:
        producer.cancel(job.id, app=app)
    assert client.hget(Keys("heavy").load, "unfinished_ms") == "0"
