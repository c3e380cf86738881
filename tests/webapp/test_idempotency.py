"""Idempotent submission against a real API server: a retry neither loses nor doubles a job.

``Idempotency-Key`` on ``POST /api/jobs`` and ``message_id`` on the client
socket's ``submit_job``. Before, the header was ignored (each retry made one
more job) and a retried socket submit got ``error`` 409 "already exists".
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from rest_helpers import TOKEN_A, TOKEN_B, TOKENS_ENV, Api, raw_answer, snapshot

from emp_tasks.websocket_client import WebSocketClient as Client

pytestmark = pytest.mark.timeout(120)

JOB = {"service_required": "echo", "priority": 60, "payload": {"n": 1}}


def jobs_of(api: Api) -> list[str]:
    reply = api.get("/api/jobs?limit=100")
    assert reply.status_code == 200, reply.text
    return [job["id"] if "id" in job else job["job_id"] for job in reply.json()["jobs"]]


def data_keys(client: redis.Redis) -> dict[str, bytes]:
    """Every key but the API's own list of open sockets (it changes as sockets open)."""
    return {k: v for k, v in snapshot(client).items() if not k.startswith("emp:ws:connections")}


def test_a_retried_post_gets_the_first_answer_and_makes_one_job(start_server, client) -> None:
    """Tried: the same body posted three times with one Idempotency-Key (spacing and key
    order changed on the way), then eight at once with another key. One job per key; every
    answer has the first one's status and body, retries say they were replayed."""
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    api = Api(server.base, TOKEN_A)
    first = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    reordered = json.dumps(dict(reversed(list(JOB.items()))), indent=2)
    for data in (json.dumps(JOB), reordered):
        again = api.post("/api/jobs", data=data, headers={
            "Idempotency-Key": "order-17", "Content-Type": "application/json"})
        assert (again.status_code, again.json()) == (201, first.json())
        assert again.headers["Idempotent-Replayed"] == "true"
    assert jobs_of(api) == [first.json()["job_id"]]

    def post(_: int) -> Any:
        return api.as_(TOKEN_A).post("/api/jobs", json=JOB, headers={
            "Idempotency-Key": "burst"})

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(post, range(8)))
    assert {r.status_code for r in replies} == {201}
    ids = {r.json()["job_id"] for r in replies}
    assert len(ids) == 1, ids
    assert sorted(jobs_of(api)) == sorted([first.json()["job_id"], *ids])


def test_a_reused_key_with_another_body_is_422_and_writes_nothing(start_server, client) -> None:
    """Tried: a key first used for one body, then sent with another priority, and keys
    that are no keys (empty, 256 characters, a space, a comma) and the header sent twice
    (it arrives as "k2,k3": taken as one key before, so a retry with "k2" alone made a
    second job). 422 / 400 naming the header; the database is byte for byte what it was."""
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    api = Api(server.base, TOKEN_A)
    assert api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k1"}).status_code == 201
    before = data_keys(client)
    reused = api.post("/api/jobs", json={**JOB, "priority": 61},
                      headers={"Idempotency-Key": "k1"})
    assert reused.status_code == 422, reused.text
    assert "Idempotency-Key" in reused.json()["error"]
    for bad in ("", "x" * 256, "has space", "k2,k3"):
        refused = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": bad})
        assert refused.status_code == 400, (bad, refused.text)
        assert "Idempotency-Key" in refused.json()["error"]
    body = json.dumps(JOB).encode()
    status, _, answer = raw_answer(server.port, "\r\n".join([
        "POST /api/jobs HTTP/1.1", "Host: x", "Connection: close", f"Authorization: Bearer "
        f"{TOKEN_A}", "Content-Type: application/json", f"Content-Length: {len(body)}",
        "Idempotency-Key: k2", "Idempotency-Key: k3", "", ""]).encode() + body)
    assert status == 400, answer  # requests sends a header name once: sent as it is here
    assert "Idempotency-Key must be given once" in json.loads(answer)["error"], answer
    assert data_keys(client) == before



def test_keys_are_per_customer_and_expire_after_the_retention(start_server, client) -> None:
    """Tried: two customers using the same key, and one key reused after the retention
    (EMP_IDEMPOTENCY_SECONDS=2) with another body. Each customer gets its own job; after
    the retention the key is free again."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_IDEMPOTENCY_SECONDS="2",
                          **TOKENS_ENV)
    a, b = Api(server.base, TOKEN_A), Api(server.base, TOKEN_B)
    of_a = a.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "shared"})
    of_b = b.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "shared"})
    assert of_a.status_code == of_b.status_code == 201
    assert of_a.json()["job_id"] != of_b.json()["job_id"]
    for api, own in ((a, of_a), (b, of_b)):  # each retry finds its own customer's answer
        again = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "shared"})
        assert again.json() == own.json()
    assert jobs_of(a) == [of_a.json()["job_id"]] and jobs_of(b) == [of_b.json()["job_id"]]
    time.sleep(3)
    later = a.post("/api/jobs", json={**JOB, "priority": 10}, headers={"Idempotency-Key": "shared"})
    assert later.status_code == 201 and later.json()["job_id"] != of_a.json()["job_id"]


def _receive(ws: Client) -> dict[str, Any]:
    text = ws.receive(timeout=20)
    assert text is not None, "no message within 20 s"
    return json.loads(text)


def test_a_retried_socket_submit_is_answered_again_not_refused(start_server, client) -> None:
    """Tried: submit_job with a message_id, the same again on the same socket, again on a
    new socket (a retry after a reset), then with another body. The retries get
    ``job_submitted`` for the one job (with their message_id), the other body an error
    422, and nothing more is written."""
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    submit = {"type": "submit_job", "message_id": "ws-retry-1", **JOB}
    ws = Client.connect(f"{server.ws_base}/ws/client/retrier?token={TOKEN_A}")
    try:
        assert _receive(ws)["type"] == "connection_established"
        ws.send(json.dumps(submit))
        first = _receive(ws)
        assert first["type"] == "job_submitted" and first["message_id"] == "ws-retry-1"
        ws.send(json.dumps(submit))
        assert _receive(ws) == first
    finally:
        ws.close()
    ws = Client.connect(f"{server.ws_base}/ws/client/retrier-2?token={TOKEN_A}")
    try:
        assert _receive(ws)["type"] == "connection_established"
        ws.send(json.dumps(submit))
        assert _receive(ws) == first
        before = data_keys(client)
        ws.send(json.dumps({**submit, "priority": 1}))
        refused = _receive(ws)
        assert refused["type"] == "error" and refused["status"] == 422, refused
        assert "message_id" in refused["error"]
        assert data_keys(client) == before
    finally:
        ws.close()
    assert jobs_of(Api(server.base, TOKEN_A)) == ["ws-retry-1"]


def test_a_key_refused_429_is_released_and_its_retry_is_answered_at_once(
        start_server, client) -> None:
    """Tried: customer a at EMP_LIMIT_PENDING=1 holds one unfinished job, posts another
    with an Idempotency-Key (429), retries it (429 again), then cancels the first job and
    retries once more. Before the fix the 429 left the key claimed without an answer:
    each retry waited 5 s for one, and the last was 201 marked ``Idempotent-Replayed``
    though it made the job. Now each 429 writes nothing (no key record left), every retry
    is answered at once, and the one that makes the job is not marked replayed."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_LIMIT_PENDING="1",
                          EMP_LIMIT_RATE="0", **TOKENS_ENV)
    api = Api(server.base, TOKEN_A)
    held = api.submit(**JOB)
    before = data_keys(client)
    for _ in range(2):
        started = time.monotonic()
        refused = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k429"})
        assert refused.status_code == 429 and refused.json()["limit"] == "pending", refused.text
        assert time.monotonic() - started < 2, "the retry waited for an answer"
        assert not client.keys("emp:idempotency:*"), "a refused key stayed claimed"
        assert data_keys(client) == before
    assert api.post(f"/api/jobs/{held}/cancel").status_code == 200
    started = time.monotonic()
    made = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k429"})
    assert made.status_code == 201 and time.monotonic() - started < 2, made.text
    assert "Idempotent-Replayed" not in made.headers
    again = api.post("/api/jobs", json=JOB, headers={"Idempotency-Key": "k429"})
    assert (again.status_code, again.json()) == (201, made.json())
    assert again.headers["Idempotent-Replayed"] == "true"


def test_a_lone_surrogate_gets_the_same_400_with_or_without_a_key(start_server, client) -> None:
    """Tried: a body holding a lone surrogate (``"\\ud800"``, no Unicode character) posted
    without an Idempotency-Key, then with one, then sent as a socket submit_job with a
    message_id. Before the fix: 201 without the key, 500 (UnicodeEncodeError while
    fingerprinting the body) with it, and the socket closed with 1002. Now each is a 400 /
    ``error`` naming the field, nothing is written (no key claimed), and the socket stays
    open for the next message."""
    server = start_server("api", EMP_API_PROCESSES="1", **TOKENS_ENV)
    api = Api(server.base, TOKEN_A)
    api.submit(**JOB)
    text = '{"service_required": "echo", "payload": {"prompt": "\\ud800"}}'
    json_type = {"Content-Type": "application/json"}
    before = data_keys(client)
    plain = api.post("/api/jobs", data=text, headers=json_type)
    keyed = api.post("/api/jobs", data=text, headers={**json_type, "Idempotency-Key": "sur"})
    for reply in (plain, keyed):
        assert reply.status_code == 400, reply.text
        assert "payload.prompt" in reply.json()["error"], reply.text
    assert keyed.json() == plain.json()
    assert data_keys(client) == before
    ws = Client.connect(f"{server.ws_base}/ws/client/surrogate?token={TOKEN_A}")
    try:
        assert _receive(ws)["type"] == "connection_established"
        before = data_keys(client)  # with the socket's place
        ws.send('{"type": "submit_job", "message_id": "sur-1", ' + text[1:])
        refused = _receive(ws)
        assert refused["type"] == "error" and "payload.prompt" in refused["error"], refused
        assert data_keys(client) == before
        ws.send(json.dumps({"type": "submit_job", "message_id": "sur-2", **JOB}))
        assert _receive(ws)["job_id"] == "sur-2"
    finally:
        ws.close()
