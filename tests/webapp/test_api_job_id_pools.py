"""A job id chosen over the API names at most one job across all pools, when two submits
of one id race to different pools. The API looked for the id in every pool, then filed:
a submit that looked while another's filing of the id was on its way saw nothing and
filed its own in another pool (each pool refuses a taken id only among its own jobs).
Here the first submit's filing is held back 3 s by a proxy (Redis running) while the
second comes. Real API server, real redis-server, no mock."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis
from rest_helpers import ADMIN, TOKEN_A, TOKEN_B, TOKENS_ENV, Api
from test_idempotency_hang import ENQUEUE, _receive, hang_at  # noqa: F401

from capability_router.keys import NAMESPACES_KEY, Keys
from conftest import wait_for
from emp_tasks.websocket_client import WebSocketClient as Client

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

POOLS = ("default", "p1", "p2")


def filed(client: redis.Redis) -> set[tuple[str, str]]:
    """Every job record of the pools, as (pool, stored id)."""
    found = set()
    for pool in POOLS:
        prefix = Keys(pool).job("")
        found |= {(pool, key[len(prefix):]) for key in client.scan_iter(match=prefix + "*")
                  if not key.endswith(":events")}
    return found


def held_first(server: Any, hang: Any, token: str, body: dict[str, Any],
               replies: dict[str, Any]) -> threading.Thread:
    """POST ``body`` in a thread, its filing held back 3 s; returns once it is held."""
    hang.delays = {ENQUEUE: 3.0}
    first = threading.Thread(target=lambda: replies.__setitem__(
        "first", Api(server.base, token).post("/api/jobs", json=body)))
    first.start()
    wait_for(lambda: ENQUEUE not in hang.delays, timeout=10, message="the first filing")
    return first


@pytest.fixture
def api_server(start_server, client, hang_at):  # noqa: ANN001, ANN201, F811
    client.sadd(NAMESPACES_KEY, "p1", "p2")  # pools customers may name
    return start_server("api", EMP_API_PROCESSES="1", EMP_REDIS_URL=hang_at.url, **TOKENS_ENV)


def test_one_id_sent_to_two_pools_at_once_is_one_job(api_server, client, hang_at) -> None:  # noqa: F811
    """Tried: POST /api/jobs {job_id: "order-1", pool: "p1"} whose filing is held back,
    and meanwhile the same customer's POST {job_id: "order-1", pool: "p2"}. Before the
    fix both were 201 and order-1 was two jobs, one per pool. Now the second gets 409
    "already exists" (as a second submit in p1 would) and one job exists, in p1."""
    replies: dict[str, Any] = {}
    body = {"service_required": "echo", "payload": {"n": 1}, "job_id": "order-1"}
    first = held_first(api_server, hang_at, TOKEN_A, {**body, "pool": "p1"}, replies)
    second = Api(api_server.base, TOKEN_A).post("/api/jobs", json={**body, "pool": "p2"})
    first.join()
    print(f"\nfirst {replies['first'].status_code} {replies['first'].text}"
          f"second {second.status_code} {second.text}filed {filed(client)}")
    assert replies["first"].status_code == 201
    assert second.status_code == 409 and "already exists" in second.json()["error"]
    assert filed(client) == {("p1", "order-1")}


def test_another_customers_id_in_flight_is_answered_as_a_free_id(
        api_server, client, hang_at) -> None:  # noqa: F811
    """Tried: customer A's POST {job_id: "order-2", pool: "p1"}, its filing held back,
    and meanwhile customer B's POST of the same id to pool p2. Before the fix B's job was
    filed as order-2 in p2: two jobs under one id, each customer's GET finding whichever
    pool came first. Now B gets 201 as for a free id (no hint that A has it), its job is
    stored as order-2~cust-b, and each customer reads its own job as order-2."""
    replies: dict[str, Any] = {}
    body = {"service_required": "echo", "payload": {"n": 1}, "job_id": "order-2"}
    first = held_first(api_server, hang_at, TOKEN_A, {**body, "pool": "p1"}, replies)
    other = Api(api_server.base, TOKEN_B).post("/api/jobs", json={**body, "pool": "p2"})
    first.join()
    assert replies["first"].status_code == 201 and other.status_code == 201, other.text
    assert other.json()["job_id"] == "order-2"
    assert filed(client) == {("p1", "order-2"), ("p2", "order-2~cust-b")}
    for token, pool in ((TOKEN_A, "p1"), (TOKEN_B, "p2")):
        assert Api(api_server.base, token).job("order-2")["pool"] == pool


def test_a_socket_submit_of_an_id_on_its_way_to_another_pool_is_refused(
        api_server, client, hang_at) -> None:  # noqa: F811
    """Tried: an admin's POST {job_id: "order-3", pool: "p1"} held back, and meanwhile
    customer A's client socket submit_job {message_id: "order-3", pool: "p2"}. Before
    the fix the socket's job was filed as order-3 in p2 beside the admin's in p1: two
    jobs under one id. Now the socket gets job_submitted order-3 as for a free id (the
    id is someone else's) and its job is stored as order-3~cust-a."""
    replies: dict[str, Any] = {}
    body = {"service_required": "echo", "payload": {"n": 1}, "job_id": "order-3"}
    first = held_first(api_server, hang_at, ADMIN, {**body, "pool": "p1"}, replies)
    ws = Client.connect(f"{api_server.ws_base}/ws/client/s1?token={TOKEN_A}")
    try:
        assert _receive(ws)["type"] == "connection_established"
        ws.send(json.dumps({"type": "submit_job", "message_id": "order-3", "pool": "p2",
                            "service_required": "echo", "payload": {"n": 2}}))
        answer = _receive(ws)
    finally:
        ws.close()
    first.join()
    assert replies["first"].status_code == 201
    assert answer["type"] == "job_submitted" and answer["job_id"] == "order-3", answer
    assert filed(client) == {("p1", "order-3"), ("p2", "order-3~cust-a")}
