"""Cold starts on real workers: catalog models downloaded before the job starts, visibly.

Real Redis, real ``emp worker`` processes sharing one model cache directory
(as the workers of one machine do), a real HTTP model server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests
from machine_helpers import wait_until
from model_server import ModelServer

from capability_router import catalog
from capability_router.registry import WorkerRegistry
from emp_tasks.producer import get_job, job_events, submit
from emp_tasks.websocket_client import WebSocketClient as Client

SIZE = 512 * 1024


@pytest.fixture
def server() -> Iterator[ModelServer]:
    served = ModelServer().start()
    yield served
    served.stop()


def _publish(client, server: ModelServer, *names: str) -> None:
    for name in names:
        catalog.put_model(client, catalog.parse_entry(name, server.add(name, SIZE)))


def _worker_env(tmp_path, budget_models: float = 10) -> dict[str, str]:
    return {"EMP_MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "EMP_MODEL_CACHE_GB": str(budget_models * SIZE / 1e9),
            "EMP_PREPARING_REPORT_SECONDS": "0.1"}


def _worker_whose_cache_volume_is_gone(client, server: ModelServer, start_worker,
                                       tmp_path):  # noqa: ANN202 - a Path
    """Catalog model ``m-vol`` published, worker ``cold-1`` started with its model cache
    in ``<tmp>/volume/cache``, then the volume gone (its mount point a regular file);
    returns the mount point."""
    import shutil

    _publish(client, server, "m-vol")
    volume = tmp_path / "volume"
    env = {**_worker_env(tmp_path), "EMP_MODEL_CACHE_DIR": str(volume / "cache")}
    start_worker("cold-1", **env)
    shutil.rmtree(volume)
    volume.write_text("")  # the mount point, without its volume
    return volume


def _run(app, model: str):  # noqa: ANN202 - AsyncResult
    return submit("simulation", {"steps": 1, "duration": 0.05},
                  requirements={"models": [model]}, max_retries=0, app=app)


def _events(app, job_id: str) -> list[dict]:
    return job_events(job_id, app=app)


@pytest.mark.timeout(120)
def test_two_jobs_needing_one_model_share_its_download(app, client, server, start_worker,
                                                       tmp_path) -> None:
    _publish(client, server, "m-shared")
    server.chunk_delay = 0.05  # 32 chunks: about 1.6 s, so both jobs want it at once
    env = _worker_env(tmp_path)  # the workers offer the catalog's models
    start_worker("cold-1", **env)
    start_worker("cold-2", **env)
    jobs = [_run(app, "m-shared") for _ in range(2)]

    # While it downloads, a job is assigned and says what it prepares.
    seen = wait_until(lambda: next((r for r in (get_job(j.id, app=app) for j in jobs)
                                    if r["status"] == "assigned" and r.get("preparing")), None),
                      timeout=30, message="a job preparing")
    assert seen["preparing"]["model"] == "m-shared" and seen["preparing"]["tier"] == "remote"
    assert seen["preparing"]["bytes_total"] == SIZE

    for job in jobs:
        assert job.get(timeout=60)["success"] is True
    assert len(server.requests_for("m-shared")) == 1  # one download for both
    assert (tmp_path / "cache" / "m-shared").read_bytes() == server.files["m-shared"]
    workers = set()
    for job in jobs:
        record = get_job(job.id, app=app)
        workers.add(record["worker_id"])
        assert record["status"] == "completed" and "preparing" not in record
        events = _events(app, job.id)
        names = [e["event"] for e in events]
        # assigned -> preparing ... -> started: the cold start comes before the run.
        assert names.index("job_assigned") < names.index("job_preparing") < names.index(
            "job_started")
        preparing = [e["data"] for e in events if e["event"] == "job_preparing"]
        assert preparing[-1]["tier"] == "disk" and preparing[-1]["bytes_done"] == SIZE
        assert {"model", "tier", "bytes_done", "bytes_total", "eta_seconds"} <= set(preparing[0])
    assert workers == {"cold-1", "cold-2"}


@pytest.mark.timeout(120)
def test_a_bad_checksum_fails_the_job_with_a_model_error_and_leaves_no_file(
        app, client, server, start_worker, tmp_path) -> None:
    _publish(client, server, "m-bad")
    server.corrupt.add("m-bad")
    start_worker("cold-1", **_worker_env(tmp_path))
    job = submit("simulation", {"steps": 1, "duration": 0.05},
                 requirements={"models": ["m-bad"]}, max_retries=3, app=app)
    wait_until(lambda: get_job(job.id, app=app)["status"] == "failed", timeout=60,
               message="the job to fail")
    record = get_job(job.id, app=app)
    assert "[model]" in record["last_error"] and "sha256" in record["last_error"]
    assert record["attempts"] == 1 and "preparing" not in record  # a model error: no retry
    assert "job_started" not in [e["event"] for e in _events(app, job.id)]
    cache = tmp_path / "cache"
    assert not (cache / "m-bad").exists() and not list((cache / ".parts").iterdir())


@pytest.mark.timeout(150)
def test_the_storage_budget_evicts_the_least_recently_used_idle_model(
        app, client, server, start_worker, tmp_path) -> None:
    _publish(client, server, "m-a", "m-b", "m-c")
    start_worker("cold-1", **_worker_env(tmp_path, budget_models=2.5))
    cache = tmp_path / "cache"
    for model in ("m-a", "m-b", "m-a", "m-c"):  # m-a used again: m-b is the oldest
        result = _run(app, model).get(timeout=60)
        assert result["success"] is True
        # Downloaded by the machine, the model loads from disk (2 s); the simulated
        # service used to download it again (6 GB at 500 MB/s: 12 s more per cold job).
        assert result["load_seconds"] <= 2.0, result
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [
        "m-a", "m-c"]
    assert len(server.requests_for("m-a")) == 1  # its second job found it on disk


@pytest.mark.timeout(150)
def test_the_cold_start_reaches_client_sockets_and_webhooks(
        app, client, server, start_worker, start_server, receiver, tmp_path) -> None:
    _publish(client, server, "m-hook")
    server.chunk_delay = 0.02
    hooks = start_server("webhooks", EMP_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8")
    sink = receiver()
    reply = requests.post(hooks.base + "/webhooks", timeout=10, json={
        "url": sink.url + "/hook", "events": ["job_preparing"]})
    assert reply.status_code == 201, reply.text
    api = start_server("api")
    start_worker("cold-1", **_worker_env(tmp_path))
    job = _run(app, "m-hook")
    ws = Client.connect(f"{api.ws_base}/ws/client/watcher")
    try:
        ws.receive(timeout=20)  # the connection's greeting
        ws.send(json.dumps({"type": "subscribe_progress", "job_id": job.id}))
        messages = []
        while not messages or messages[-1].get("type") != "complete_job":
            text = ws.receive(timeout=30)
            assert text is not None, [m.get("type") for m in messages]
            messages.append(json.loads(text))
    finally:
        ws.close()
    preparing = [m for m in messages if m["type"] == "job_preparing"]
    assert preparing and preparing[0]["model"] == "m-hook"
    assert preparing[-1]["tier"] == "disk" and preparing[-1]["bytes_done"] == SIZE

    wait_until(lambda: len(sink.delivered()) >= len(preparing), timeout=30,
               message="the job_preparing webhooks")
    delivered = [r.payload for r in sink.delivered()]
    assert {d["event_type"] for d in delivered} == {"job_preparing"}
    assert [d["data"]["bytes_done"] for d in delivered] == [m["bytes_done"] for m in preparing]
    assert delivered[0]["data"]["job_id"] == job.id and delivered[0]["data"]["model"] == "m-hook"


@pytest.mark.timeout(180)
def test_a_machine_s_workers_share_one_download(app, client, server, start_machine,
                                                 tmp_path) -> None:
    """``emp machine`` with two GPU workers: both jobs wait for the one download."""
    _publish(client, server, "m-box")
    server.chunk_delay = 0.05
    machine = start_machine("box-m", **_worker_env(tmp_path))
    machine.wait_ready()
    jobs = [_run(app, "m-box") for _ in range(2)]
    for job in jobs:
        assert job.get(timeout=90)["success"] is True
    assert len(server.requests_for("m-box")) == 1
    records = [get_job(job.id, app=app) for job in jobs]
    assert {r["worker_id"] for r in records} == {"box-m-simulation-0", "box-m-simulation-1"}
    for job in jobs:
        assert "job_preparing" in [e["event"] for e in _events(app, job.id)]


@pytest.mark.timeout(120)
def test_an_unreachable_model_server_is_a_network_error_retried_then_failed(
        app, client, start_worker, tmp_path) -> None:
    from emp_tasks.local_redis import free_port

    entry = {"url": f"http://127.0.0.1:{free_port()}/m-away", "size": SIZE, "sha256": "0" * 64}
    catalog.put_model(client, catalog.parse_entry("m-away", entry))
    start_worker("cold-1", EMP_MODEL_DOWNLOAD_TRIES="2", **_worker_env(tmp_path))
    job = submit("simulation", {"steps": 1, "duration": 0.05},
                 requirements={"models": ["m-away"]}, max_retries=1, app=app)
    wait_until(lambda: get_job(job.id, app=app)["status"] == "failed", timeout=90,
               message="the job to fail")
    record = get_job(job.id, app=app)
    # Retried once (a network error may pass), then failed; it never started.
    assert record["attempts"] == 2 and record["retries"] == 1
    assert "[network]" in record["last_error"] and "preparing" not in record
    names = [e["event"] for e in _events(app, job.id)]
    assert "job_retrying" in names and "job_started" not in names


@pytest.mark.timeout(120)
def test_a_job_cancelled_while_its_model_downloads_stops_it_and_keeps_the_bytes(
        app, client, server, start_worker, tmp_path) -> None:
    """Cancel a job while its worker downloads its model: the download stops (the
    part stops growing), the job ends ``cancelled`` without starting, and the
    next job needing the model resumes from the bytes already there."""
    from emp_tasks.producer import cancel

    _publish(client, server, "m-cancel")
    server.chunk_delay = 0.1  # 32 chunks: about 3 s
    start_worker("cold-1", **_worker_env(tmp_path))
    job = _run(app, "m-cancel")
    wait_until(lambda: (get_job(job.id, app=app).get("preparing") or {}).get("bytes_done"),
               timeout=30, message="the download to start")
    assert cancel(job.id, app=app) == "cancelled"
    part = tmp_path / "cache" / ".parts"
    wait_until(lambda: list(part.iterdir()), timeout=10, message="a part file")
    sizes = []
    for _ in range(3):  # the worker notices at its next report (0.1 s), a chunk later
        time.sleep(1.0)
        sizes.append(next(part.iterdir()).stat().st_size)
    assert sizes[1] == sizes[2] < SIZE, sizes  # stopped
    record = get_job(job.id, app=app)
    assert record["status"] == "cancelled"
    assert "job_started" not in [e["event"] for e in _events(app, job.id)]

    server.chunk_delay = 0.0
    assert _run(app, "m-cancel").get(timeout=60)["success"] is True
    ranges = [s.range for s in server.requests_for("m-cancel")]
    assert ranges[0] is None and ranges[-1] == f"bytes={sizes[-1]}-", ranges
    assert (tmp_path / "cache" / "m-cancel").read_bytes() == server.files["m-cancel"]


@pytest.mark.timeout(120)
def test_a_model_cache_folder_gone_bad_after_start_is_a_service_error_naming_it(
        app, client, server, start_worker, tmp_path) -> None:
    """Tried: ``emp worker`` starts with a usable ``EMP_MODEL_CACHE_DIR`` (its start
    check passes), then the volume under it goes (its mount point is now a
    regular file, as root can still not write through it) before the first job
    needing a catalog model. Before, the first cache build's mkdir let a raw
    ``NotADirectoryError`` traceback out of the preparation: the job failed for
    good without a retry. Now it is the ``service`` error of a full disk, naming
    the path: retried (another machine may take it), then failed, never
    started."""
    volume = _worker_whose_cache_volume_is_gone(client, server, start_worker, tmp_path)
    job = submit("simulation", {"steps": 1, "duration": 0.05},
                 requirements={"models": ["m-vol"]}, max_retries=1, app=app)
    wait_until(lambda: get_job(job.id, app=app)["status"] == "failed", timeout=90,
               message="the job to fail")
    record = get_job(job.id, app=app)
    assert "[service] the model cache" in record["last_error"], record["last_error"]
    assert str(volume / "cache") in record["last_error"]
    assert "Not a directory" in record["last_error"]
    assert "Traceback" not in record["last_error"]
    assert record["attempts"] == 2 and record["retries"] == 1
    assert "job_started" not in [e["event"] for e in _events(app, job.id)]
    assert not server.requests_for("m-vol")


@pytest.mark.timeout(120)
def test_a_broken_model_cache_folder_does_not_stop_jobs_that_need_no_model(
        app, client, server, start_worker, tmp_path) -> None:
    """Tried: ``emp worker`` starts with a usable ``EMP_MODEL_CACHE_DIR``, then the
    folder goes bad (its mount point is now a regular file) and a job that names
    no model is sent. Before, every job of a type that prepares models built the
    cache first, so this one too was retried with the cache's ``service`` error
    and failed, though it needs no model. Now it runs to completion; a job that
    names a catalog model still gets the ``service`` error naming the path."""
    volume = _worker_whose_cache_volume_is_gone(client, server, start_worker, tmp_path)
    plain = submit("simulation", {"steps": 1, "duration": 0.05}, max_retries=0, app=app)
    assert plain.get(timeout=60)["success"] is True
    record = get_job(plain.id, app=app)
    assert record["status"] == "completed" and record["attempts"] == 1, record
    needing = _run(app, "m-vol")
    wait_until(lambda: get_job(needing.id, app=app)["status"] == "failed", timeout=60,
               message="the job needing a model to fail")
    error = get_job(needing.id, app=app)["last_error"]
    assert "[service] the model cache" in error and str(volume / "cache") in error, error
    assert volume.is_file()


@pytest.mark.timeout(150)
def test_a_model_larger_than_a_worker_s_budget_waits_for_a_worker_that_can_hold_it(
        app, client, server, start_worker, tmp_path) -> None:
    """Tried: catalog models m-fits (one SIZE) and m-huge (three), a worker whose cache
    budget holds two (``EMP_MODEL_CACHE_GB``, a small disk's machine). Before: it offered
    m-huge too, so a job needing m-huge was claimed by it and failed at once, for good
    ("[model] model m-huge ... is larger than the model cache budget"), though a machine
    with a larger disk could run it. Now it offers only the models its budget holds: the
    job waits in pending until a worker with a large enough budget starts, and runs there."""
    catalog.put_model(client, catalog.parse_entry("m-fits", server.add("m-fits", SIZE)))
    catalog.put_model(client, catalog.parse_entry("m-huge", server.add("m-huge", 3 * SIZE)))
    small = {**_worker_env(tmp_path, budget_models=2),
             "EMP_MODEL_CACHE_DIR": str(tmp_path / "small-cache")}
    start_worker("small-disk", **small)
    profile = next(w["profile"] for w in WorkerRegistry(client).workers()
                   if w["worker_id"] == "small-disk")
    assert profile["models"]["simulation"] == ["m-fits"], profile["models"]

    huge = _run(app, "m-huge")
    assert _run(app, "m-fits").get(timeout=60)["success"] is True  # the worker claims on
    assert get_job(huge.id, app=app)["status"] == "pending"
    start_worker("large-disk", **_worker_env(tmp_path, budget_models=10))
    assert huge.get(timeout=60)["success"] is True
    assert get_job(huge.id, app=app)["worker_id"] == "large-disk"
