"""Per-customer limits against a real API server (two processes) and Redis.

Before, one customer token could submit without bound, fill the queue with
unfinished jobs and open sockets until the API had no thread left for
anyone. Each limit here answers 429 with ``Retry-After`` and writes nothing.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from rest_helpers import ADMIN, TOKEN_A, TOKEN_B, TOKENS_ENV, Api, snapshot
from simple_websocket import ConnectionError as WebSocketRefused

from capability_router.keys import NAMESPACES_KEY
from conftest import wait_for
from emp_tasks.websocket_client import WebSocketClient as Client

pytestmark = pytest.mark.timeout(120)

JOB = {"service_required": "echo", "payload": {"n": 1}}


def data_keys(client: redis.Redis) -> dict[str, bytes]:
    """Every key but the API's own list of open sockets (it changes as sockets open)."""
    return {k: v for k, v in snapshot(client).items() if not k.startswith("emp:ws:connections")}


def job_count(client: redis.Redis) -> int:
    return len(client.keys("emp:{default}:job:*[^s]"))


def assert_limited(reply, limit: str) -> None:  # noqa: ANN001 - requests.Response
    assert reply.status_code == 429, reply.text
    assert reply.headers["Retry-After"].isdigit() and int(reply.headers["Retry-After"]) >= 1
    assert reply.json()["limit"] == limit and reply.json()["success"] is False


def test_the_submission_rate_is_a_shared_token_bucket_per_customer(
        start_server, client) -> None:
    """Tried: ten concurrent submits from customer a with a bucket of 3 (refilled once per
    100 s) over two API processes, then one more; customer b (rate=0: no limit by
    EMP_CUSTOMER_LIMITS) and an admin submitting meanwhile. Exactly three of a's are
    accepted; the rest get 429 with Retry-After and write nothing."""
    server = start_server("api", EMP_API_PROCESSES="2", EMP_LIMIT_RATE="0.01",
                          EMP_LIMIT_BURST="3", EMP_CUSTOMER_LIMITS="cust-b:rate=0",
                          **TOKENS_ENV)
    a = Api(server.base, TOKEN_A)
    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: a.as_(TOKEN_A).post("/api/jobs", json=JOB),
                                range(10)))
    assert sorted(r.status_code for r in replies) == [201] * 3 + [429] * 7
    for reply in replies:
        if reply.status_code == 429:
            assert_limited(reply, "rate")
    assert job_count(client) == 3
    before = data_keys(client)
    assert_limited(a.post("/api/jobs", json=JOB), "rate")
    assert data_keys(client) == before, "a refused submit wrote something"
    for token in (TOKEN_B, ADMIN):
        for _ in range(5):
            assert a.as_(token).post("/api/jobs", json=JOB).status_code == 201
    assert job_count(client) == 13


def test_unfinished_jobs_are_capped_per_customer_until_some_finish(
        start_server, client) -> None:
    """Tried: customer a at EMP_LIMIT_PENDING=2 submits two jobs no worker takes, then a
    third, then cancels one and submits again. The third is 429 (nothing written); once one
    job finished, a place is free."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_LIMIT_PENDING="2",
                          EMP_LIMIT_RATE="0", **TOKENS_ENV)
    a = Api(server.base, TOKEN_A)
    first, _ = a.submit(**JOB), a.submit(**JOB)
    before = data_keys(client)
    assert_limited(a.post("/api/jobs", json=JOB), "pending")
    assert data_keys(client) == before
    assert Api(server.base, TOKEN_B).post("/api/jobs", json=JOB).status_code == 201
    assert a.post(f"/api/jobs/{first}/cancel").status_code == 200
    assert a.post("/api/jobs", json=JOB).status_code == 201


def test_a_job_in_another_pool_still_counts_until_it_finishes(start_server, client) -> None:
    """Tried: customer a at EMP_LIMIT_PENDING=1 submits a job whose requirements name the
    pool ``gpu-a``, then another, then cancels the first and submits again. The second is
    429 (the first is found waiting in its own pool, not taken for gone); after the cancel
    the third is accepted."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_LIMIT_PENDING="1",
                          EMP_LIMIT_RATE="0", **TOKENS_ENV)
    a = Api(server.base, TOKEN_A)
    client.sadd(NAMESPACES_KEY, "gpu-a")  # the pool exists (a worker serving it made it)
    first = a.submit(**{**JOB, "requirements": {"pool": "gpu-a"}})
    assert a.job(first)["pool"] == "gpu-a"
    assert_limited(a.post("/api/jobs", json=JOB), "pending")
    assert a.post(f"/api/jobs/{first}/cancel").status_code == 200
    assert a.post("/api/jobs", json=JOB).status_code == 201


def test_requirement_classes_are_capped_per_customer(start_server, client) -> None:
    """Tried: customer a at EMP_LIMIT_CLASSES=2 fills two classes (16 and 24 GB), adds a
    job to one of them, then asks for a third class (48 GB); then cancels the 16 GB jobs
    and asks again. The third class is 429 (nothing written) while two are open; jobs in an
    open class are not limited; once a class has no unfinished job, a new one is free."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_LIMIT_CLASSES="2",
                          EMP_LIMIT_RATE="0", EMP_LIMIT_PENDING="0", **TOKENS_ENV)
    a = Api(server.base, TOKEN_A)

    def needing(gb: int) -> dict:
        return {**JOB, "requirements": {"hardware": {"gpu_memory_gb": gb}}}

    small = [a.submit(**needing(16)), a.submit(**needing(24)), a.submit(**needing(16))]
    before = data_keys(client)
    assert_limited(a.post("/api/jobs", json=needing(48)), "classes")
    assert data_keys(client) == before
    assert Api(server.base, TOKEN_B).post("/api/jobs", json=needing(48)).status_code == 201
    for job_id in (small[0], small[2]):
        assert a.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    assert a.post("/api/jobs", json=needing(48)).status_code == 201
    assert_limited(a.post("/api/jobs", json=needing(80)), "classes")


def _connect(server, token: str, name: str) -> Client:  # noqa: ANN001 - ServerProcess
    ws = Client.connect(f"{server.ws_base}/ws/client/{name}?token={token}")
    assert json.loads(ws.receive(timeout=20))["type"] == "connection_established"
    return ws


def test_open_sockets_are_capped_per_customer_and_over_the_rate_a_socket_submit_is_429(
        start_server, client) -> None:
    """Tried: customer a at EMP_LIMIT_SOCKETS=2 opens a third client socket; b opens one;
    a closes one and opens again; a socket submit over the rate (burst 1). The third
    handshake is refused with 429 before any socket exists; a closed socket frees its
    place; the submit over the rate gets ``error`` 429 and no job."""
    server = start_server("api", EMP_API_PROCESSES="2", EMP_LIMIT_SOCKETS="2",
                          EMP_LIMIT_RATE="0.01", EMP_LIMIT_BURST="1", **TOKENS_ENV)
    held = [_connect(server, TOKEN_A, "a-1"), _connect(server, TOKEN_A, "a-2")]
    try:
        with pytest.raises(WebSocketRefused) as refused:
            Client.connect(f"{server.ws_base}/ws/client/a-3?token={TOKEN_A}")
        assert refused.value.status_code == 429
        _connect(server, TOKEN_B, "b-1").close()
        held.pop().close()

        def reconnects() -> bool:
            try:
                held.append(_connect(server, TOKEN_A, "a-3"))
            except WebSocketRefused:
                return False
            return True

        wait_for(reconnects, timeout=30, every=0.2, message="a's freed place to be taken")
        ws = held[0]
        ws.send(json.dumps({"type": "submit_job", "message_id": "first", **JOB}))
        assert json.loads(ws.receive(timeout=20))["type"] == "job_submitted"
        ws.send(json.dumps({"type": "submit_job", "message_id": "second", **JOB}))
        answer = json.loads(ws.receive(timeout=20))
        assert answer["type"] == "error" and answer["status"] == 429, answer
        assert answer["limit"] == "rate" and answer["message_id"] == "second"
        assert not client.exists("emp:{default}:job:second")
    finally:
        for ws in held:
            ws.close()


def test_a_handshake_that_opens_no_socket_holds_no_place(start_server, client) -> None:
    """Tried: customer a at EMP_LIMIT_SOCKETS=2 sends two plain GETs (no upgrade) to
    /ws/client/zz?token=..., each answered 400, and one to a socket path no route has
    (404); then opens two real sockets. Before the fix each refused handshake took one of
    a's places for the 60 s lease (taken before the upgrade, freed by nothing when no
    socket resulted): the real connect got 429 "sockets". Now no place is left behind
    (a's sockets key is empty) and both sockets open."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_LIMIT_SOCKETS="2", **TOKENS_ENV)
    api = Api(server.base)
    for path in ("/ws/client/zz", "/ws/client/zz", "/ws/client/zz/extra"):
        reply = api.get(f"{path}?token={TOKEN_A}")
        assert reply.status_code in (400, 404), (path, reply.status_code, reply.text)
    assert client.zcard("emp:limits:{cust-a}:sockets") == 0, "a refused handshake holds a place"
    held = []
    try:
        held = [_connect(server, TOKEN_A, "a-1"), _connect(server, TOKEN_A, "a-2")]
    finally:
        for ws in held:
            ws.close()


def test_a_customer_cannot_make_pools(start_server, client) -> None:
    """Tried: customer a names pools nobody made, as ``pool`` and as ``requirements.pool``,
    over REST and on its socket. Each pool was kept for good (2,000 made by one tenant in 3
    minutes slowed every other tenant's listing 20x). Now each is 400 naming the pool, and
    nothing is written; an admin token may make a pool, and once a pool exists (an admin,
    a worker or the pools file made it) the customer may use it."""
    server = start_server("api", EMP_API_PROCESSES="1", EMP_LIMIT_RATE="0", **TOKENS_ENV)
    a = Api(server.base, TOKEN_A)
    jobs = job_count(client)
    for body in ({**JOB, "pool": "junk-1"}, {**JOB, "requirements": {"pool": "junk-2"}}):
        reply = a.post("/api/jobs", json=body)
        assert reply.status_code == 400 and "does not exist" in reply.json()["error"], reply.text
    ws = _connect(server, TOKEN_A, "a-pools")
    try:
        ws.send(json.dumps({"type": "submit_job", "message_id": "m-1", **JOB, "pool": "junk-3"}))
        answer = json.loads(ws.receive(timeout=20))
        assert answer["type"] == "error" and "junk-3" in answer["error"], answer
    finally:
        ws.close()
    assert job_count(client) == jobs and not client.keys("emp:{junk-*")
    assert not {m.decode() for m in client.smembers(NAMESPACES_KEY)} & {"junk-1", "junk-2",
                                                                        "junk-3"}
    assert a.post("/api/jobs", json={**JOB, "pool": "default"}).status_code == 201

    made = Api(server.base, ADMIN).submit(**{**JOB, "pool": "made-by-ops"})
    assert Api(server.base, ADMIN).job(made)["pool"] == "made-by-ops"
    assert a.post("/api/jobs", json={**JOB, "pool": "made-by-ops"}).status_code == 201
