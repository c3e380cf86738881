"""Per-customer job ids: choosing another customer's id tells nothing and takes nothing.

Before, a customer posting ``message_id`` = another customer's job id got 409
"already exists" while an unknown id got 201: an oracle for other tenants' ids.
Now each customer's chosen ids are its own: the second customer's job is
stored scoped (``<id>~<customer>``) and shown under the id it chose, over
REST, the client socket and webhooks, while the first customer's job is
untouched. Real gunicorn servers, Redis, workers and an HTTP receiver.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from rest_helpers import (
    ADMIN,
    TOKEN_A,
    TOKEN_B,
    TOKENS_ENV,
    Api,
    assert_nothing_submitted,
    submit_state,
)

from capability_router.keys import Keys
from conftest import wait_for
from emp_tasks import producer
from emp_tasks.websocket_client import WebSocketClient as Client
from webapp.api.submission import submit_body
from webapp.api.validation import Invalid
from webapp.auth import Principal
from webapp.backend import Backend

JOBS = Keys("default")


def _submit(api: Api, **body: Any) -> requests.Response:
    return api.post("/api/jobs", json={"service_required": "echo", **body})


@pytest.mark.timeout(120)
def test_another_customers_id_is_answered_as_an_unknown_one_and_kept_apart(
        client, start_server, start_worker) -> None:
    server = Api(start_server("api", **TOKENS_ENV).base)
    alice, bob, admin = server.as_(TOKEN_A), server.as_(TOKEN_B), server.as_(ADMIN)
    assert alice.submit(service_required="echo", message_id="order-7",
                        payload={"who": "alice"}) == "order-7"
    alice_record = client.hgetall(JOBS.job("order-7"))

    # Tried: Bob posts Alice's id, and an id no one has. Both answers are the same 201.
    taken = _submit(bob, message_id="order-7", payload={"who": "bob"})
    unknown = _submit(bob, message_id="order-8", payload={"who": "bob"})
    assert (taken.status_code, unknown.status_code) == (201, 201)
    assert taken.json()["job_id"] == "order-7" and unknown.json()["job_id"] == "order-8"
    assert set(taken.json()) == set(unknown.json())
    # Alice's job is untouched; Bob's is stored apart, under his customer.
    assert client.hgetall(JOBS.job("order-7")) == alice_record
    assert client.hget(JOBS.job("order-7~cust-b"), "customer_id") == "cust-b"

    # Each sees its own job under the id it chose, in the record and the listing.
    start_worker("w1")
    alice_job = alice.wait_status("order-7", "completed")
    bob_job = bob.wait_status("order-7", "completed")
    assert alice_job["job_id"] == bob_job["job_id"] == "order-7"
    assert alice_job["result"]["echo"] == {"who": "alice"}
    assert bob_job["result"]["echo"] == {"who": "bob"} and bob_job["customer_id"] == "cust-b"
    assert {j["job_id"] for j in bob.get("/api/jobs").json()["jobs"]} == {"order-7", "order-8"}
    assert [j["job_id"] for j in alice.get("/api/jobs").json()["jobs"]] == ["order-7"]
    # Operators see the stored ids.
    assert {j["job_id"] for j in admin.get("/api/jobs").json()["jobs"]} == {
        "order-7", "order-7~cust-b", "order-8"}
    assert admin.job("order-7~cust-b")["customer_id"] == "cust-b"

    # The id is Bob's own now: again is a 409, as for any id he already used; nothing
    # written. Alice's second use of her id is a 409 too.
    before = submit_state(client)
    for api in (alice, bob):
        again = _submit(api, message_id="order-7")
        assert again.status_code == 409 and "already exists" in again.json()["error"]
    assert_nothing_submitted(client, before)

    # Retry and cancel act on the caller's own job only.
    retried = bob.post("/api/jobs/order-7/retry")
    assert retried.status_code == 409 and "completed" in retried.json()["error"]
    # Tried: the scoped id with '~' as a chosen id (to take a scoped slot): refused.
    squat = _submit(alice, message_id="order-9~cust-b")
    assert squat.status_code == 400 and "message_id" in squat.json()["error"]
    assert_nothing_submitted(client, before)


@pytest.mark.timeout(120)
def test_socket_and_webhooks_show_the_id_the_customer_chose(
        client, start_server, start_worker, receiver) -> None:
    api = start_server("api", **TOKENS_ENV)
    hooks = start_server("webhooks", EMP_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
                         EMP_WEBHOOK_NAMESPACE_REFRESH_SECONDS="1")
    sink = receiver()
    registered = requests.post(hooks.base + "/webhooks", timeout=10, json={
        "url": sink.url + "/hook", "events": ["job_submitted", "complete_job"],
        "filters": {"customer_ids": ["cust-b"]}})
    assert registered.status_code == 201, registered.text
    alice = Api(api.base).as_(TOKEN_A)
    assert alice.submit(service_required="echo", message_id="shared-1",
                        payload={"who": "alice"}) == "shared-1"

    ws = Client.connect(f"{api.ws_base}/ws/client/bob-1?token={TOKEN_B}")
    try:
        assert json.loads(ws.receive(timeout=20))["type"] == "connection_established"
        ws.send(json.dumps({"type": "submit_job", "service_required": "echo",
                            "message_id": "shared-1", "payload": {"who": "bob"}}))
        start_worker("w1")
        messages = []
        while not messages or messages[-1]["type"] != "complete_job":
            text = ws.receive(timeout=30)
            assert text is not None, f"no completion; got {messages}"
            messages.append(json.loads(text))
        # A later subscribe by the chosen id finds Bob's job, not Alice's.
        ws.send(json.dumps({"type": "subscribe_progress", "job_id": "shared-1"}))
        subscribed = json.loads(ws.receive(timeout=20))
        while subscribed["type"] != "subscribed":
            subscribed = json.loads(ws.receive(timeout=20))
    finally:
        ws.close()
    assert messages[0]["type"] == "job_submitted" and messages[0]["message_id"] == "shared-1"
    assert {m["job_id"] for m in messages} == {"shared-1"}
    assert messages[-1]["result"]["data"]["echo"] == {"who": "bob"}
    assert subscribed["job_id"] == "shared-1" and subscribed["status"] == "completed"

    wait_for(lambda: len(sink.delivered()) >= 2, timeout=30, message="Bob's two events")
    delivered = sink.delivered()
    assert [(r.payload["event_type"], r.payload["data"]["job_id"],
             r.payload["data"]["customer_id"]) for r in delivered] == [
        ("job_submitted", "shared-1", "cust-b"), ("complete_job", "shared-1", "cust-b")]
    # Alice's job of the same id ran too, and is still hers.
    assert alice.wait_status("shared-1", "completed")["result"]["echo"] == {"who": "alice"}


def test_an_id_another_customer_takes_during_the_submit_is_scoped(app, client,
                                                                   monkeypatch) -> None:
    """Tried: Bob's submit finds ``race-1`` free, and Alice files ``race-1`` before his
    job is filed (staged between the check and the filing). Bob's job is scoped as if he
    had come a moment later; had Bob himself taken it meanwhile, he gets the 409."""
    backend = Backend(app, client)
    real_submit = producer.submit
    raced: list[str] = []

    def racing_submit(service: str, payload: Any, **fields: Any) -> Any:
        if fields.get("customer_id") == "cust-b" and not raced:
            raced.append(fields["task_id"])
            real_submit("echo", {"who": "alice"}, customer_id="cust-a", task_id="race-1",
                        app=app)
        return real_submit(service, payload, **fields)

    monkeypatch.setattr(producer, "submit", racing_submit)
    bob = Principal(customer_id="cust-b")
    body = {"service_required": "echo", "message_id": "race-1", "payload": {"who": "bob"}}
    assert submit_body(body, bob, backend, checked=True)[:2] == ("race-1~cust-b", "default")
    assert raced == ["race-1"], "the race was not staged"
    assert client.hget(JOBS.job("race-1"), "customer_id") == "cust-a"
    assert client.hget(JOBS.job("race-1~cust-b"), "customer_id") == "cust-b"
    with pytest.raises(Invalid) as again:  # the id is Bob's own now
        submit_body(body, bob, backend, checked=True)
    assert again.value.status == 409 and "already exists" in str(again.value)
