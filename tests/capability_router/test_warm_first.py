"""Warm-first claims with a bounded delay, on the real functions (times given explicitly).

Two workers of one profile; ``warm`` has sdxl loaded in its GPU, ``cold`` has
it on disk. Real-process tests are in tests/machine/test_warm_first_workers.py.
"""

from __future__ import annotations

import redis

from capability_router.functions import Claimed, QueueFunctions
from capability_router.jobspec import JobSpec
from capability_router.profile import WorkerProfile
from capability_router.residency import ResidencyReporter

T0 = 1_800_000_000_000
LEASE = 600_000
PROFILE = WorkerProfile.from_dict({"worker_id": "x", "services": ["simulation"],
                                   "models": {"simulation": ["flux", "sdxl", "wan"]}})


def job(model: str | None, priority: int = 50) -> JobSpec:
    requirements = {"models": [model]} if model else {}
    return JobSpec(service="simulation", priority=priority, requirements=requirements)


def setup(client: redis.Redis, queue: QueueFunctions, **config: int) -> None:
    queue.configure(load_ms_disk=3000, load_ms_ram=1000, **config)
    queue.register_worker(PROFILE)
    ResidencyReporter(client, "warm", ["default"], PROFILE.signature).report(
        {"sdxl": "gpu", "flux": "disk"})
    ResidencyReporter(client, "cold", ["default"], PROFILE.signature).report(
        {"sdxl": "disk", "flux": "disk"})


def claim(queue: QueueFunctions, worker: str, now: int) -> Claimed | int:
    return queue.claim(PROFILE.signature, worker, LEASE, now_ms=now)


def test_a_cold_worker_leaves_the_job_to_the_warm_one_for_the_load_time(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    queue.enqueue("j1", job("sdxl"), "{}", now_ms=T0)
    assert claim(queue, "cold", T0 + 500) == 2500  # ms until it may take it
    got = claim(queue, "warm", T0 + 600)
    assert isinstance(got, Claimed) and got.job_id == "j1"


def test_after_the_delay_the_cold_worker_takes_the_job(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    queue.enqueue("j1", job("sdxl"), "{}", now_ms=T0)
    assert claim(queue, "cold", T0 + 2999) == 1
    got = claim(queue, "cold", T0 + 3000)
    assert isinstance(got, Claimed) and got.job_id == "j1"


def test_the_delay_is_capped(client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue, affinity_max_delay_ms=800)
    queue.enqueue("j1", job("sdxl"), "{}", now_ms=T0)
    assert claim(queue, "cold", T0 + 500) == 300
    assert isinstance(claim(queue, "cold", T0 + 800), Claimed)


def test_a_cold_worker_skips_to_work_nobody_has_warm(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    queue.enqueue("j-sdxl", job("sdxl", 60), "{}", now_ms=T0)
    queue.enqueue("j-flux", job("flux", 50), "{}", now_ms=T0 + 1)
    queue.enqueue("j-none", job(None, 40), "{}", now_ms=T0 + 2)
    got = [claim(queue, "cold", T0 + 10), claim(queue, "cold", T0 + 11)]
    assert [c.job_id for c in got] == ["j-flux", "j-none"]
    assert claim(queue, "warm", T0 + 12).job_id == "j-sdxl"


def test_the_warm_worker_prefers_its_model_within_the_window(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue, affinity_window=10)
    queue.enqueue("j-flux", job("flux", 55), "{}", now_ms=T0)
    queue.enqueue("j-sdxl", job("sdxl", 50), "{}", now_ms=T0 + 1)
    assert claim(queue, "warm", T0 + 10).job_id == "j-sdxl"


def test_beyond_the_window_priority_wins(client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue, affinity_window=10)
    queue.enqueue("j-flux", job("flux", 75), "{}", now_ms=T0)
    queue.enqueue("j-sdxl", job("sdxl", 50), "{}", now_ms=T0 + 1)
    assert claim(queue, "warm", T0 + 10).job_id == "j-flux"


def test_affinity_off_is_queue_order(client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue, affinity=0)
    queue.enqueue("j-flux", job("flux", 55), "{}", now_ms=T0)
    queue.enqueue("j-sdxl", job("sdxl", 50), "{}", now_ms=T0 + 1)
    assert claim(queue, "cold", T0 + 10).job_id == "j-flux"
    assert claim(queue, "cold", T0 + 11).job_id == "j-sdxl"


def test_no_delay_for_a_warm_worker_busy_past_it(
        client: redis.Redis, queue: QueueFunctions) -> None:
    """The warm worker runs a job predicted to take 60 s: waiting 3 s for it is pointless."""
    setup(client, queue)
    queue.enqueue("long", job(None), "{}", now_ms=T0)
    client.hset(queue.keys.job("long"), "predicted_ms", 60_000)
    assert claim(queue, "warm", T0 + 1).job_id == "long"
    queue.enqueue("j1", job("sdxl"), "{}", now_ms=T0 + 2)
    assert claim(queue, "cold", T0 + 3).job_id == "j1"


def test_a_worker_that_left_holds_no_job_back(
        client: redis.Redis, queue: QueueFunctions) -> None:
    setup(client, queue)
    queue.residency("warm", mode="clear")
    queue.enqueue("j1", job("sdxl"), "{}", now_ms=T0)
    assert claim(queue, "cold", T0 + 1).job_id == "j1"


def test_families_the_worker_cannot_serve_do_not_hide_its_warm_one(
        client: redis.Redis, queue: QueueFunctions) -> None:
    """Tried: a flux job (on disk here), 8 jobs of another service this profile does not
    run (each its own family), then an sdxl job, warm in this worker's GPU, all within
    the window. Before, the worker looked at the next 8 families whatever they were:
    7 were the other service's, the sdxl family was not among them, and the warm
    worker took the flux job cold. Families it cannot serve are skipped now, as the
    README says (the next 8 families it can serve)."""
    setup(client, queue, affinity_window=10)
    queue.register_worker(WorkerProfile.from_dict({"worker_id": "up", "services": ["upscale"]}))
    queue.enqueue("j-flux", job("flux", 55), "{}", now_ms=T0)
    for n in range(8):
        queue.enqueue(f"up-{n}", JobSpec(service="upscale", priority=55,
                                         requirements={"scale": n + 1}), "{}", now_ms=T0 + 1 + n)
    queue.enqueue("j-sdxl", job("sdxl", 50), "{}", now_ms=T0 + 20)
    assert claim(queue, "warm", T0 + 30).job_id == "j-sdxl"
