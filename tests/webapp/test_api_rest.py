"""The REST API of ``emp api``: a real gunicorn server, real Redis, real workers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from rest_helpers import Api, event_names, snapshot, wait_for

from capability_router.functions import library_version
from capability_router.keys import Keys
from emp_tasks.local_redis import LocalRedis


@pytest.fixture
def api(client, start_server) -> Api:
    """An open server (no tokens: every caller is an admin) on an empty database."""
    return Api(start_server("api").base)


@pytest.mark.timeout(90)
def test_submitted_job_runs_on_a_worker_and_completes(api, start_worker) -> None:
    start_worker("w1")
    response = api.post("/api/jobs", json={"service_required": "echo", "payload": {"x": 1},
                                           "priority": 70, "customer_id": "cust-a"})
    assert response.status_code == 201
    body = response.json()
    assert body["success"] is True and body["message"] and body["timestamp"].endswith("Z")
    record = api.wait_status(body["job_id"], "completed")
    assert record["result"]["echo"] == {"x": 1} and record["worker_id"] == "w1"
    assert record["priority"] == 70 and record["customer_id"] == "cust-a"
    assert "message" not in record  # the stored Celery message is internal


@pytest.mark.timeout(60)
def test_aliases_and_message_id_become_the_job(api, client) -> None:
    assert api.submit(job_type="echo", message_id="mine-1") == "mine-1"
    assert api.submit(type="simulation", job_id="mine-2", pool="gpu") == "mine-2"
    assert api.job("mine-1")["service_required"] == "echo"
    assert api.job("mine-2")["pool"] == "gpu"
    # The same id again, in the same pool or another: 409, and nothing changes.
    before = snapshot(client)
    for body in ({"service_required": "echo", "message_id": "mine-1"},
                 {"service_required": "echo", "job_id": "mine-2"},
                 {"service_required": "echo", "job_id": "mine-2", "pool": "default"}):
        response = api.post("/api/jobs", json=body)
        assert response.status_code == 409 and "already exists" in response.json()["error"]
    assert snapshot(client) == before
    assert api.get("/api/jobs/no-such-job").status_code == 404


#: (what was tried, body, status, text the error must contain)
BAD_SUBMISSIONS = [
    ("unknown service", {"service_required": "nope"}, 400, "service_required"),
    ("unknown service under an alias", {"job_type": "nope"}, 400, "job_type"),
    ("no service at all", {"payload": {}}, 400, "service_required"),
    ("service of the wrong type", {"service_required": 5}, 400, "service_required"),
    ("priority as text", {"service_required": "echo", "priority": "high"}, 400, "priority"),
    ("priority above 100", {"service_required": "echo", "priority": 101}, 400, "priority"),
    ("priority below 0", {"service_required": "echo", "priority": -1}, 400, "priority"),
    ("priority as a float", {"service_required": "echo", "priority": 5.5}, 400, "priority"),
    ("payload as a list", {"service_required": "echo", "payload": [1]}, 400, "payload"),
    ("requirements as text", {"service_required": "echo", "requirements": "gpu"}, 400,
     "requirements"),
    ("malformed hardware requirement",
     {"service_required": "echo", "requirements": {"hardware": {"gpu_memory_gb": "lots"}}},
     400, "requirements.hardware.gpu_memory_gb"),
    ("bad isolation level",
     {"service_required": "echo", "requirements": {"customer_isolation": "total"}}, 400,
     "customer_isolation"),
    ("customer id with spaces", {"service_required": "echo", "customer_id": "a b"}, 400,
     "customer_id"),
    ("unknown field", {"service_required": "echo", "colour": "red"}, 400, "colour"),
    ("bad pool name", {"service_required": "echo", "pool": "no/slash"}, 400, "pool"),
    ("bad pool name in requirements",
     {"service_required": "echo", "requirements": {"pool": "no/slash"}}, 400, "pool"),
    ("max_retries out of range", {"service_required": "echo", "max_retries": 1000}, 400,
     "max_retries"),
    ("unreadable workflow_datetime", {"service_required": "echo", "workflow_datetime": "soon"},
     400, "workflow_datetime"),
    ("ctx as a number", {"service_required": "echo", "ctx": 3}, 400, "ctx"),
    ("job id with spaces", {"service_required": "echo", "message_id": "my job"}, 400,
     "message_id"),
    ("two different ids", {"service_required": "echo", "message_id": "a", "job_id": "b"}, 400,
     "message_id"),
    ("a JSON array, not an object", [{"service_required": "echo"}], 400, "object"),
]


@pytest.mark.timeout(60)
def test_concurrent_submissions_are_all_accepted(api) -> None:
    # More submitting threads than kombu's per-connection Redis pool (10) holds.
    with ThreadPoolExecutor(24) as pool:
        ids = list(pool.map(lambda n: api.as_(None).submit(service_required="echo",
                                                           payload={"n": n}), range(240)))
    assert len(set(ids)) == 240
    assert api.get("/api/jobs", params={"limit": 1}).json()["total"] == 240


@pytest.mark.timeout(60)
def test_bad_submissions_are_refused_naming_the_field_and_write_nothing(api, client) -> None:
    api.submit(service_required="echo")  # the first write (bindings, namespaces) is behind us
    before = snapshot(client)
    for tried, body, status, text in BAD_SUBMISSIONS:
        response = api.post("/api/jobs", json=body)
        assert response.status_code == status, (tried, response.text)
        answer = response.json()
        assert answer["success"] is False and text in answer["error"], (tried, answer)
    # Bodies that are not JSON objects at all.
    raw = [("not JSON", b"{service_required: echo", "application/json", 400),
           ("NaN, which JSON lacks", b'{"service_required": "echo", "priority": NaN}',
            "application/json", 400),
           ("empty body", b"", "application/json", 400),
           ("form content type", b"service_required=echo", "application/x-www-form-urlencoded",
            415),
           ("no content type", b'{"service_required": "echo"}', None, 415)]
    for tried, data, content_type, status in raw:
        headers = {"Content-Type": content_type} if content_type else {}
        response = api.post("/api/jobs", data=data, headers=headers)
        assert response.status_code == status, (tried, response.text)
        assert response.json()["success"] is False, tried
    assert snapshot(client) == before


@pytest.mark.timeout(60)
def test_oversize_body_is_413_json_and_writes_nothing(client, start_server) -> None:
    api = Api(start_server("api", EMP_MAX_BODY_BYTES="20000").base)
    before = snapshot(client)
    response = api.post("/api/jobs", json={"service_required": "echo",
                                           "payload": {"blob": "x" * 50_000}})
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["success"] is False and "20000" in response.json()["error"]
    assert snapshot(client) == before
    assert api.submit(service_required="echo", payload={"blob": "x" * 1000})  # still serving


def _chunks(body: bytes, size: int = 4096) -> Iterator[bytes]:
    """``body`` as a generator: requests sends it chunked, with no Content-Length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


@pytest.mark.timeout(60)
def test_a_chunked_body_over_the_limit_is_413_as_with_content_length(client,
                                                                     start_server) -> None:
    """Tried (EMP_MAX_BODY_BYTES=20000, chunked, no Content-Length): a valid job of exactly
    the limit followed by more bytes, and a body of twice the limit. Before the fix the
    API read the limit and stopped: the first was 201 (the rest ignored), the second 400
    "Unterminated string". Both are 413 now, as with Content-Length, and write nothing; a
    chunked body of exactly the limit is still accepted."""
    api = Api(start_server("api", EMP_MAX_BODY_BYTES="20000").base)
    api.submit(service_required="echo")  # the first write (bindings, namespaces) is behind us
    head, tail = b'{"service_required": "echo", "payload": {"pad": "', b'"}}'
    exact = head + b"a" * (20000 - len(head) - len(tail)) + tail
    json_type = {"Content-Type": "application/json"}
    before = snapshot(client)
    for tried, body in (("the limit, then more", exact + b', "customer_id": "other"'),
                        ("twice the limit", head + b"a" * 40000 + tail)):
        reply = api.post("/api/jobs", data=_chunks(body), headers=json_type)
        assert reply.status_code == 413, (tried, reply.status_code, reply.text[:300])
        assert reply.json()["success"] is False and "20000" in reply.json()["error"], tried
        same = api.post("/api/jobs", data=body, headers=json_type)  # with Content-Length
        assert same.status_code == 413, tried
    assert snapshot(client) == before
    assert api.post("/api/jobs", data=_chunks(exact), headers=json_type).status_code == 201


@pytest.mark.timeout(60)
def test_listing_filters_orders_and_pages(api, client) -> None:
    specs = [  # (service, customer, workflow, pool)
        ("echo", "cust-a", "wf-1", None), ("simulation", "cust-a", None, None),
        ("echo", "cust-b", "wf-1", None), ("echo", "cust-b", None, "gpu"),
        ("simulation", "cust-a", "wf-2", "gpu"), ("echo", "cust-a", None, None),
        ("echo", "cust-c", None, "gpu"),
    ]
    ids = []
    for service, customer, workflow, pool in specs:
        body = {"service_required": service, "customer_id": customer}
        if workflow:
            body["workflow_id"] = workflow
        if pool:
            body["pool"] = pool
        ids.append(api.submit(**body))
        time.sleep(0.003)  # distinct submit ms: the expected order is exact
    newest_first = ids[::-1]
    for cancelled in (ids[0], ids[3], ids[5]):
        assert api.post(f"/api/jobs/{cancelled}/cancel").status_code == 200

    def listed(**params: object) -> tuple[list[str], int]:
        response = api.get("/api/jobs", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["limit"] == params.get("limit", 50)
        assert body["offset"] == params.get("offset", 0)
        return [job["job_id"] for job in body["jobs"]], body["total"]

    def expect(keep) -> list[str]:  # noqa: ANN001 - predicate on (index, spec)
        return [i for i in newest_first if keep(ids.index(i), specs[ids.index(i)])]

    assert listed() == (newest_first, 7)
    assert listed(service="echo") == (expect(lambda n, s: s[0] == "echo"), 5)
    assert listed(customer_id="cust-a") == (expect(lambda n, s: s[1] == "cust-a"), 4)
    assert listed(workflow_id="wf-1") == (expect(lambda n, s: s[2] == "wf-1"), 2)
    assert listed(pool="gpu") == (expect(lambda n, s: s[3] == "gpu"), 3)
    # A status alone orders by when the job entered it: cancelled 0, then 3, then 5.
    assert listed(status="cancelled") == ([ids[5], ids[3], ids[0]], 3)
    assert listed(status="pending") == (expect(lambda n, s: n in (1, 2, 4, 6)), 4)
    # Several filters intersect, newest submitted first, across pools.
    assert listed(status="pending", customer_id="cust-a") == ([ids[4], ids[1]], 2)
    assert listed(service="echo", customer_id="cust-b", status="cancelled") == ([ids[3]], 1)
    assert listed(service="echo", customer_id="cust-a", workflow_id="wf-1") == ([ids[0]], 1)
    assert listed(customer_id="nobody") == ([], 0)
    # Empty parameters mean "no filter" (the original's ?status=&limit=50).
    assert listed(status="", customer_id="") == (newest_first, 7)
    # Pages: offset/limit cut the merged order; total counts every match.
    assert listed(limit=3) == (newest_first[:3], 7)
    assert listed(limit=3, offset=3) == (newest_first[3:6], 7)
    assert listed(limit=3, offset=6) == (newest_first[6:], 7)
    assert listed(limit=2, offset=1, service="echo") == (
        expect(lambda n, s: s[0] == "echo")[1:3], 5)
    assert listed(limit=1, offset=1, pool="gpu") == ([ids[4]], 3)
    # A record that expired (its index entry not yet trimmed) is skipped.
    client.delete(Keys("default").job(ids[5]))
    jobs, _ = listed(customer_id="cust-a")
    assert ids[5] not in jobs and jobs == [ids[4], ids[1], ids[0]]


@pytest.mark.timeout(60)
def test_bad_listing_parameters_are_400_naming_the_parameter(api) -> None:
    for params, name in [({"status": "bogus"}, "status"), ({"limit": "0"}, "limit"),
                         ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
                         ({"limit": "1.5"}, "limit"), ({"offset": "-1"}, "offset"),
                         ({"customer_id": "a b"}, "customer_id"), ({"pool": "x/y"}, "pool")]:
        response = api.get("/api/jobs", params=params)
        assert response.status_code == 400, params
        assert response.json()["error"].startswith(name), (params, response.json())
    response = api.post("/api/jobs/any/cancel", params={"terminate": "maybe"})
    assert response.status_code == 400 and "terminate" in response.json()["error"]


@pytest.mark.timeout(60)
def test_cancel_pending_job_then_conflicts(api, client) -> None:
    job_id = api.submit(service_required="echo")
    response = api.post(f"/api/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json() == {"success": True, "job_id": job_id, "status": "cancelled"}
    assert api.status(job_id) == "cancelled"
    again = api.post(f"/api/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    assert api.post("/api/jobs/no-such-job/cancel").status_code == 404
    assert api.post("/api/jobs/no-such-job/retry").status_code == 404
    pending = api.submit(service_required="echo")
    refused = api.post(f"/api/jobs/{pending}/retry")
    assert refused.status_code == 409 and "pending" in refused.json()["error"]
    # A cancelled pending job is retried: pending again, in its pool's queue.
    assert api.post(f"/api/jobs/{job_id}/retry").json()["status"] == "pending"
    assert "job_resubmitted" in event_names(client, job_id)


@pytest.mark.timeout(90)
def test_running_job_cancelled_with_terminate_then_retried_runs_to_completion(
        api, client, start_worker) -> None:
    start_worker("w1")
    job_id = api.submit(service_required="echo", payload={"sleep": 3, "tag": "again"})
    api.wait_status(job_id, "in_progress")
    response = api.post(f"/api/jobs/{job_id}/cancel", params={"terminate": "true"})
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    # Celery revoked the id on every worker; the retry has them forget it first, and
    # the killed run's late ack cannot touch the new run (a new attempt number).
    answer = api.post(f"/api/jobs/{job_id}/retry")
    assert answer.status_code == 200, answer.text
    record = api.wait_status(job_id, "completed", timeout=30)
    assert record["result"]["echo"] == {"tag": "again"}
    events = event_names(client, job_id)
    assert events.count("job_started") == 2 and events[-1] == "complete_job"
    assert events.index("job_cancelled") < events.index("job_resubmitted")


@pytest.mark.timeout(90)
def test_running_job_cancelled_then_retried_runs_to_completion(
        api, client, start_worker) -> None:
    start_worker("w1")
    job_id = api.submit(service_required="echo", payload={"sleep": 2})
    api.wait_status(job_id, "in_progress")
    assert api.post(f"/api/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    # At once: the old run is still sleeping on the worker; whatever it says later is
    # refused, and the new run waits for the worker to be free.
    assert api.post(f"/api/jobs/{job_id}/retry").status_code == 200
    record = api.wait_status(job_id, "completed", timeout=30)
    assert event_names(client, job_id).count("job_started") == 2
    assert int(record["attempts"]) == 2


@pytest.mark.timeout(90)
def test_failed_job_retried_runs_again(api, client, start_worker) -> None:
    start_worker("w1")
    # echo fails its first run and may not retry: failed for good.
    job_id = api.submit(service_required="echo", payload={"fail_times": 1}, max_retries=0)
    failed = api.wait_status(job_id, "failed")
    assert "EchoFailure" in failed["last_error"]
    completed = api.post(f"/api/jobs/{job_id}/cancel")
    assert completed.status_code == 409 and "already failed" in completed.json()["error"]
    wait_for(lambda: api.post(f"/api/jobs/{job_id}/retry").status_code == 200, timeout=20,
             every=0.2, message="the retry to be accepted")
    # The same message runs again (echo fails it again: the run is what counts here).
    wait_for(lambda: event_names(client, job_id).count("job_started") == 2, timeout=30,
             message="a second run")
    api.wait_status(job_id, "failed")
    events = event_names(client, job_id)
    rerun = events[events.index("job_resubmitted"):]
    assert "job_started" in rerun and rerun[-1] == "job_failed"


@pytest.mark.timeout(90)
def test_forget_machine_returns_its_running_job_to_pending(api, start_worker) -> None:
    start_worker("w1", MACHINE_ID="m1")
    job_id = api.submit(service_required="echo", payload={"sleep": 30})
    api.wait_status(job_id, "in_progress")
    response = api.delete("/api/machines/m1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["machine_id"] == "m1" and body["workers"] == ["w1"]
    assert body["requeued_jobs"] == [job_id]
    record = api.job(job_id)
    assert record["status"] == "pending" and record["worker_id"] == ""
    missing = api.delete("/api/machines/no-such-machine")
    assert missing.status_code == 404 and "no-such-machine" in missing.json()["error"]


@pytest.mark.timeout(60)
def test_health_version_connections_and_document(api) -> None:
    health = api.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["redis"] == "ok"
    api.submit(service_required="echo")  # loads the function library
    version = api.get("/version").json()
    assert version["version"] == "0.1.0" and version["library_version"] == library_version()
    connections = api.get("/api/connections")
    assert connections.status_code == 200
    assert {"success", "clients", "monitors"} <= set(connections.json())
    document = api.get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.0")
    schema = document["components"]["schemas"]["JobSubmission"]
    assert {"echo", "simulation"} <= set(schema["properties"]["service_required"]["enum"])
    operations = {(path, method) for path, item in document["paths"].items() for method in item}
    assert operations == {
        ("/api/jobs", "post"), ("/api/jobs", "get"), ("/api/jobs/{job_id}", "get"),
        ("/api/jobs/{job_id}/cancel", "post"), ("/api/jobs/{job_id}/retry", "post"),
        ("/api/machines/{machine_id}", "delete"), ("/api/connections", "get"),
        ("/api/pools", "get"), ("/api/pools/{name}/metrics", "get"),
        ("/health", "get"), ("/version", "get"), ("/api/openapi.json", "get"),
        ("/api/models", "get"), ("/api/models/{name}", "get"), ("/api/models/{name}", "put"),
        ("/api/models/{name}", "delete"),
    }


@pytest.mark.timeout(60)
def test_health_is_503_while_redis_is_down(client, start_server, tmp_path) -> None:
    private = LocalRedis(tmp_path / "private", appendonly=False).start()
    try:
        api = Api(start_server("api", EMP_REDIS_URL=private.url).base)
    finally:
        private.stop(kill=True)
    response = api.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["success"] is False and body["redis"] == "unreachable" and body["error"]
    assert api.get("/version").json()["library_version"] is None


@pytest.mark.timeout(60)
def test_api_server_reaps_a_machine_that_stopped_reporting(start_server, client) -> None:
    """No machine is left to reap the dead one: the API server does it."""
    from capability_router.functions import Claimed, QueueFunctions
    from capability_router.jobspec import JobSpec
    from capability_router.profile import WorkerProfile
    from machine.status import now_ms, publish, read_machine

    queue = QueueFunctions(client, "default")
    profile = WorkerProfile(worker_id="dead-box-w", machine_id="dead-box",
                            services=["simulation"])
    queue.register_worker(profile)
    queue.enqueue("orphan", JobSpec.from_fields({"service_required": "simulation"}), "{}")
    claimed = queue.claim(profile.signature, profile.worker_id, 600_000)
    assert isinstance(claimed, Claimed)
    queue.start("orphan", claimed.attempt, "dead-box-w@host", "dead-box")
    publish(client, {"machine_id": "dead-box", "status": "online",
                     "last_report": now_ms() - 60_000, "gpus": [], "workers": [],
                     "services": []}, emit=False)
    start_server("api", EMP_MACHINE_REPORT_SECONDS="0.3", EMP_MACHINE_STALE_SECONDS="1")
    wait_for(lambda: client.hget(Keys().job("orphan"), "status") == "pending", timeout=20,
             message="the dead machine's job back to pending")
    assert read_machine(client, "dead-box")["status"] == "gone"

